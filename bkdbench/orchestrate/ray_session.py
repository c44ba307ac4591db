"""Starting and stopping Ray for a bkdbench command: dashboard off, token authentication on, Ray's
own log output kept out of the terminal (in ``ray.log`` of the experiment's driver-local folder),
always shut down."""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import ray

from ..storage import Location
from . import prepare_ray_env


@contextlib.contextmanager
def ray_session(address: Optional[str] = None, log_file: Optional[Path] = None,
                num_cpus: Optional[int] = None, storage: "Location | str | None" = None,
                check: Optional[Callable[[list[float]], None]] = None, num_gpus: Optional[int] = None) -> Iterator[dict]:
    """A Ray connection for the duration of a command. ``address`` (or ``RAY_ADDRESS``) joins an
    existing cluster; otherwise a local one is started. On a multi-node cluster ``storage`` (a path or
    a URI) must be reachable from every node (StorageError otherwise). ``check`` gets each live node's
    GPUs before anything is written (devices.allocate: it raises to refuse). ``num_gpus``: GPUs a local
    cluster declares (tests). Yields the cluster's resources."""
    # A local ray.init turns token authentication on and generates ~/.ray/auth_token itself; for a
    # joined cluster the CLI has already called prepare_ray_env (before Ray was imported).
    address = prepare_ray_env(address)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TensorBoard per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 this silences Tune's console tables
    buffered = _quiet_ray_logging(log_file)
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True, ignore_reinit_error=True)
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if address is None and num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    # Ray Train waits 60 s for a worker group to start by default: on a loaded machine or a cluster
    # that is adding nodes that is too short (the trial then fails); a request that can never be met
    # still fails, after this long
    os.environ.setdefault(TRAIN_START_TIMEOUT, "600")
    forwarded = {name: os.environ[name] for name in trial_env_names() if os.environ.get(name)}
    from ..plugins import forward

    plugin_env, py_modules = forward()  # a user's plugins: imported by every trial, path ones shipped with the job
    forwarded.update(plugin_env)
    if forwarded:  # --tracking, --splits, --pretrained reach trials on every node
        kwargs["runtime_env"] = {"env_vars": forwarded}
    if py_modules:
        kwargs["runtime_env"] = {**kwargs.get("runtime_env", {}), "py_modules": py_modules}
    # "local": always a private instance. Plain None would join any cluster `ray start` left
    # recorded in /tmp/ray (even a dead one, and then hang); joining is what --address is for.
    try:
        ray.init(address=address or "local", **kwargs)
    except ray.exceptions.AuthenticationError:
        raise ClusterRefused(f"the Ray cluster at {address} uses token authentication and this machine has no "
                             "token: copy the head's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN_PATH or "
                             "RAY_AUTH_TOKEN (docs/cluster.md)") from None
    except ConnectionError as exc:
        if address is None:
            raise
        raise ClusterRefused(f"could not join the Ray cluster at {address} ({str(exc).splitlines()[0]}): is its head "
                             "running, and is this machine's token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                             "RAY_AUTH_TOKEN) the head's?") from None
    try:
        if check is not None:
            from .devices import node_gpus

            check(node_gpus(ray.nodes()))
        if storage is not None:
            check_shared_storage(storage)
        if log_file is not None:  # only now: storage that is refused gets no log folder either
            _open_log(buffered, log_file)
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air")


TRAIN_START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def trial_env_names() -> tuple[str, ...]:
    """The environment variables a command's trials need wherever they run."""
    from ..paths import CLASSNAMES_ENV, HASH_CONTENTS_ENV, PRETRAINED_ENV, SPLITS_ENV, WEIGHTS_ENV
    from .tracking import ENV

    return (ENV, SPLITS_ENV, PRETRAINED_ENV, HASH_CONTENTS_ENV, TRAIN_START_TIMEOUT, WEIGHTS_ENV, CLASSNAMES_ENV)


def _quiet_ray_logging(log_file: Optional[Path]) -> Optional[logging.handlers.MemoryHandler]:
    """Ray's loggers off the console. With a ``log_file`` their records are held in memory until the
    storage is accepted (``_open_log``), so a refused command writes no log and no folder for it."""
    buffered = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1,
                                              flushOnClose=False) if log_file is not None else None
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(buffered or logging.NullHandler())
    return buffered


def _open_log(buffered: logging.handlers.MemoryHandler, log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.handleError = lambda record: None  # a full disk must not flood the terminal
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(buffered)
        logger.addHandler(handler)
    for record in buffered.buffer:  # what Ray logged while it started
        handler.handle(record)
    buffered.buffer.clear()


def node_count() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


class ClusterRefused(ValueError):
    """The cluster cannot be used for this command (no token, wrong token, head unreachable, storage
    a node cannot see): nothing was trained or written; the message says what to do."""


class StorageError(ClusterRefused):
    """Storage that some node of the cluster cannot reach."""


def check_shared_storage(root: "Location | str") -> None:
    """On a multi-node cluster, prove every node reaches ``root``: write a probe file here and read it
    from a task pinned to each node. A node-local path fails this (other nodes see another disk); so
    does a bucket that some node has no credentials or no route for."""
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    root = Location(root)
    probe = root / f".bkdbench-shared-check-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    probe.write_text(token)
    try:
        @ray.remote(num_cpus=0)
        def sees(where: str, expected: str) -> str:
            try:
                return "" if Location(where).read_text() == expected else "sees other content"
            except FileNotFoundError:
                return "sees no such file"
            except (OSError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"

        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(probe), token)
            for n in nodes}
        blind = {name: why for name, why in zip(refs, ray.get(list(refs.values()), timeout=60)) if why}
    finally:
        probe.delete()
    if blind:
        where = ", ".join(blind) if root.is_local else "; ".join(f"{n} ({why})" for n, why in blind.items())
        raise StorageError(
            f"the storage {root} is not shared: node(s) {where} cannot see it. On a cluster, --storage must be "
            "a path every node mounts (e.g. NFS) or an object-store URI every node can reach (s3://, gs://), "
            "so trials, teachers and the leaderboard meet"
        )
