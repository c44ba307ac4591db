"""Every shipped search space (``search_spaces/*.yaml``) through a real 2-trial search with ASHA on:
digits, the ``cpu-short`` recipe (validation every 5 epochs and at the end), 6 epochs. Its trials report
to Tune after 5 and 6 epochs only, always with a validation score: ASHA (and Optuna) never see a
missing one (a ``None`` score made ASHA's ``on_trial_result`` multiply None and fail the search).

The search runs the functions ``bkdbench sweep`` runs (teachers through ``run_plan``, then
``run_search`` with ASHA), in one in-process Ray session shared by all spaces: through the console
script each sweep took ~50 s here (Ray start-up, the final test runs), 11 of them far past the ~4
minutes this test may take on 2 cores. ``test_sweep.py`` covers the console script itself."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bkdbench.orchestrate.sweeps import driver as sweep_mod
from bkdbench.orchestrate.sweeps.study import METRIC, counted_trials
from bkdbench.specs import make_spec
from bkdbench.specs.search_spaces import load_space, space_names

from helpers.processes import cleanup_ray_tmp
from helpers.ray_tmp import in_process_ray_env, ray_tmpdir
from helpers.sweeps import load_study

EPOCHS = 6  # cpu-short on 6 epochs: evaluations after epochs 5 and 6


@pytest.fixture(scope="module")
def ray_results(tmp_path_factory):
    from bkdbench.orchestrate.ray_session import ray_session

    results = tmp_path_factory.mktemp("every-space") / "results"
    results.mkdir(parents=True)
    ray_tmp = ray_tmpdir()
    with pytest.MonkeyPatch.context() as mp:
        in_process_ray_env(mp, ray_tmp)
        try:
            with ray_session(None, log_file=results / "ray.log", storage=results):
                _train_teachers(results)
                yield results
        finally:
            sweep_mod.set_listener(None)
            cleanup_ray_tmp(ray_tmp)


def _base(method: str):
    space, file = load_space(method)
    return space, file, make_spec("digits", 10, method, recipe="cpu-short", epochs=EPOCHS, params=space.fixed)


def _train_teachers(results) -> None:
    """As the CLI trains a sweep's teachers before its search, here every space's at once (one Tune run)."""
    from bkdbench.orchestrate.runner import plan_runs, run_plan

    needed = {t.run_id: t for m in space_names() for t in _base(m)[2].prerequisites}
    plan = plan_runs(list(needed.values()), results)
    if plan.todo:
        run_plan(plan, results, name="teachers", tags={})


def _search(method: str, results):
    space, file, base = _base(method)
    cfg = sweep_mod.SweepConfig(method=method, dataset="digits", imbalance=10.0, space_file=str(file),
                                space_hash=sweep_mod.space_hash(file), sampler="random", scheduler="asha",
                                epochs=EPOCHS)
    events = []
    study = sweep_mod.run_search(cfg, space, base, results, trials=2, concurrency=1,  # one actor, reused
                                 on_event=lambda kind, key, metrics: events.append((kind, dict(metrics))))
    return SimpleNamespace(study=study, events=events, cfg=cfg, base=base, space=space)


@pytest.mark.slow
@pytest.mark.parametrize("method", space_names())
def test_every_shipped_space_runs_a_real_asha_search(method, ray_results):
    from optuna.trial import TrialState

    got = _search(method, ray_results)
    assert counted_trials(got.study) == 2
    stored = load_study(ray_results, got.cfg.sweep_id)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in stored.trials), \
        [t.state for t in stored.trials]
    for t in stored.trials:  # intermediate values at the epochs they were measured after
        assert set(t.intermediate_values) <= {5, EPOCHS} and t.intermediate_values, t.intermediate_values
    results = [m for kind, m in got.events if kind == "result"]
    assert results, "no trial reported"
    for m in results:  # what ASHA and Optuna were shown
        assert isinstance(m[METRIC], float) and 0 <= m[METRIC] <= 100, m
        assert m[sweep_mod.EPOCHS_DONE] in (5, EPOCHS), m
    assert 1 <= sweep_mod.grace_period(got.base, got.space) <= EPOCHS
