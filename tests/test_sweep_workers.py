"""``sweep --workers-per-trial 2`` through real Ray Tune and Ray Train (gloo, CPU): every search trial
is a TorchTrainer of two workers, ASHA stops some of them on rank 0's reports, and the Optuna study
records them as PRUNED (with their intermediate values at their epochs) and the others as COMPLETE,
exactly as for one-worker trials (test_sweep_pruning.py)."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from bkdbench.orchestrate.sweeps import driver as sweep_mod
from bkdbench.orchestrate.sweeps.study import counted_trials, study_storage
from bkdbench.orchestrate.sweeps.driver import SweepConfig, grace_period, space_hash
from bkdbench.specs import make_spec
from bkdbench.specs.search_spaces import load_space
from helpers.processes import cleanup_ray_tmp
from helpers.ray_tmp import in_process_ray_env, ray_tmpdir

EPOCHS, TRIALS = 6, 6


@pytest.mark.slow
def test_two_worker_search_trials_are_pruned_and_recorded_as_one_worker_ones(tmp_path):
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.sweeps.driver import run_search

    results = tmp_path / "results"
    results.mkdir()
    early = tmp_path / "focal-early.yaml"  # rungs at epochs 1 and 3 of 6 (test_sweep_pruning.py)
    early.write_text(load_space("focal")[1].read_text() + "asha_before_lr_drop: true\n")
    space, file = load_space("focal", str(early))
    base = make_spec("digits", 10, "focal", epochs=EPOCHS, params=space.fixed)
    cfg = SweepConfig(method="focal", dataset="digits", imbalance=10.0, space_file=str(file),
                      space_hash=space_hash(file), sampler="random", scheduler="asha", epochs=EPOCHS)
    events, ray_tmp = [], ray_tmpdir()
    with pytest.MonkeyPatch.context() as mp:
        in_process_ray_env(mp, ray_tmp)
        try:
            with ray_session(None, log_file=results / "ray.log"):
                run_search(cfg, space, base, results, trials=TRIALS, concurrency=2, cpus_per_trial=0.5, workers=2,
                           on_event=lambda kind, key, metrics: events.append((kind, key, dict(metrics))))
        finally:
            sweep_mod.set_listener(None)
            cleanup_ray_tmp(ray_tmp)
    assert grace_period(base, space) == 1
    study = optuna.load_study(study_name=cfg.sweep_id, storage=study_storage(results / "sweeps" / cfg.sweep_id))
    done = {}
    for kind, trial_id, metrics in events:
        if kind == "complete":
            done[trial_id] = (metrics.get("epoch"), {k: v for k, v in metrics.get("config", {}).items()
                                                     if not k.startswith("_")})
    assert len(done) == TRIALS and counted_trials(study) == TRIALS
    stopped = [t for t, (epoch, _) in done.items() if epoch < EPOCHS - 1]
    assert stopped, "ASHA stopped no two-worker trial: the PRUNED check below would prove nothing"
    for trial_id, (epoch, params) in done.items():
        [trial] = [t for t in study.trials if t.params == params]
        if epoch < EPOCHS - 1:
            assert trial.state == TrialState.PRUNED, (trial_id, epoch, trial.state)  # its value: the last reported
        else:
            assert trial.state == TrialState.COMPLETE and trial.value is not None, (trial_id, epoch, trial.state)
        # Optuna's steps are epochs (1-based), one per evaluation epoch reached (every epoch here); the
        # last report of a trial may reach Optuna only as its final value
        steps = set(trial.intermediate_values)
        assert set(range(1, epoch + 1)) <= steps <= set(range(1, epoch + 2)), (trial_id, epoch, sorted(steps))
    # every trial trained on two Ray Train workers: one Train run folder per trial under the sweep
    runs = [p for p in (results / "sweeps" / cfg.sweep_id / "workers").iterdir() if p.is_dir()]
    assert len(runs) == TRIALS
