"""Orchestration: running specs and recording them; Ray Tune suites, Optuna sweeps, ablations.

Only the modules that schedule trials import Ray; ``execute`` is the Ray-free glue that the
single-run CLI and every Ray trial share.
"""


def prepare_ray_env(address: "str | None") -> "str | None":
    """Call before Ray is imported (Ray reads RAY_AUTH_MODE at import). Returns the address to join,
    or None for a private local instance (``--address local`` means the same)."""
    import os

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        return None
    if address is not None:
        # Token authentication stays on: a driver joining a head started by hand must ask for it
        # and find the token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # the driver's C++ core retries a refused token once a second with a warning line each;
        # the CLI says once what went wrong (ray_session.ClusterRefused)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    return address
