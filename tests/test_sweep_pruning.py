"""ASHA-stopped search trials are told to Optuna as PRUNED (not COMPLETE with a truncated score),
directly and through real Ray Tune; a diverged trial is FAIL and the sweep goes on."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from bkdbench.orchestrate.sweeps import driver as sweep_mod
from bkdbench.orchestrate.trial import FINISHED
from bkdbench.orchestrate.sweeps.study import METRIC, PrunedAwareOptunaSearch, counted_trials, study_storage
from bkdbench.orchestrate.sweeps.driver import SweepConfig, grace_period, space_hash
from bkdbench.specs.search_spaces import load_space
from bkdbench.specs import make_spec

from helpers.processes import cleanup_ray_tmp
from helpers.ray_tmp import in_process_ray_env, ray_tmpdir


# --------------------------------------------------------------------------------------------
# 3. ASHA-stopped trials are PRUNED in the study
# --------------------------------------------------------------------------------------------

def _searcher(cls, storage, name="t"):
    return cls(space=load_space("bkd")[0].optuna_space(), metric=METRIC, mode="max",
               sampler=optuna.samplers.RandomSampler(seed=0), study_name=name, storage=storage)


def test_asha_stopped_trials_are_pruned_in_study(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    storage = study_storage(tmp_path / "pruned-aware")
    searcher = _searcher(PrunedAwareOptunaSearch, storage)
    for trial_id in ("trial_a", "trial_b", "trial_c"):
        config = searcher.suggest(trial_id)
        assert set(config) == {"alpha", "temperature"}
    # A recipe that validates every 5 epochs reports after epochs 5 and 10: Optuna records each value at
    # its epoch (Ray's OptunaSearch records it at Tune's report count, 1 and 2).
    searcher.on_trial_result("trial_b", {METRIC: 30.0, "epoch": 4, "training_iteration": 1})
    searcher.on_trial_result("trial_b", {METRIC: 60.0, "epoch": 9, "training_iteration": 2})
    searcher.on_trial_complete("trial_a", {METRIC: 50.0, "epoch": 2})  # stopped by the scheduler
    searcher.on_trial_complete("trial_b", {METRIC: 60.0, "epoch": 9, FINISHED: True})  # ran to the end
    searcher.on_trial_complete("trial_c", {"diverged": True})
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    # the stopped trial keeps the value it was stopped on, at its epoch (Tune gives that result to the
    # searcher only on completion); Optuna reads a PRUNED trial's last intermediate value as its value
    assert study.trials[0].intermediate_values == {3: 50.0} and study.trials[0].value == 50.0
    assert study.trials[2].value is None and study.trials[2].intermediate_values == {}
    assert study.trials[1].value == 60.0
    assert study.trials[1].intermediate_values == {5: 30.0, 10: 60.0}
    assert study.best_trial.number == 1
    searcher.on_trial_complete("trial_a", {METRIC: 99.0, "epoch": 9, FINISHED: True})  # a second call changes nothing
    assert optuna.load_study(study_name="t", storage=storage).trials[0].state == TrialState.PRUNED

    # An errored trial is FAIL too.
    searcher.suggest("trial_d")
    searcher.on_trial_complete("trial_d", {METRIC: 40.0, "epoch": 1}, error=True)
    assert optuna.load_study(study_name="t", storage=storage).trials[3].state == TrialState.FAIL

    # The trap this subclass exists for: Ray's own OptunaSearch tells the truncated score as COMPLETE.
    plain_storage = study_storage(tmp_path / "plain")
    plain = _searcher(OptunaSearch, plain_storage)
    plain.suggest("trial_a")
    plain.on_trial_complete("trial_a", {METRIC: 50.0, "epoch": 2})
    trial = optuna.load_study(study_name="t", storage=plain_storage).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == 50.0


ASHA_EPOCHS = 6


@pytest.fixture(scope="module")
def ray_searches(tmp_path_factory):
    """Two searches in one in-process Ray session: focal with ASHA on a copy of focal.yaml that sets
    ``asha_before_lr_drop`` (grace period 1, rungs at 1 and 3 of 6 epochs: ASHA stops trials here; the
    shipped file waits for the drop at epoch round(0.8·6) = 5, so its only rung is the last epoch), and
    an ldam-drw space whose every trial diverges."""
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.sweeps.driver import run_search

    results = tmp_path_factory.mktemp("ray-searches") / "results"
    results.mkdir(parents=True)
    diverge_file = results.parent / "diverge.yaml"
    diverge_file.write_text("method: ldam-drw\ndescription: a cosine scale so large that training diverges\n"
                            "params:\n  s: {type: float, low: 1.0e+29, high: 1.0e+30, log: true}\n")
    early_file = results.parent / "focal-early.yaml"
    early_file.write_text(load_space("focal")[1].read_text() + "asha_before_lr_drop: true\n")
    ray_tmp = ray_tmpdir()
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        in_process_ray_env(mp, ray_tmp)
        try:
            with ray_session(None, log_file=results / "ray.log"):
                for key, method, space_file, scheduler, epochs, trials in (
                        ("asha", "focal", str(early_file), "asha", ASHA_EPOCHS, 8),
                        ("diverge", "ldam-drw", str(diverge_file), "none", 2, 2)):
                    space, file = load_space(method, space_file)
                    base = make_spec("digits", 10, method, epochs=epochs, params=space.fixed)
                    cfg = SweepConfig(method=method, dataset="digits", imbalance=10.0, space_file=str(file),
                                      space_hash=space_hash(file), sampler="random", scheduler=scheduler,
                                      epochs=epochs)
                    events = []
                    error = None
                    try:
                        run_search(cfg, space, base, results, trials=trials, concurrency=2,
                                   on_event=lambda kind, key, metrics, ev=events: ev.append((kind, key, dict(metrics))))
                    except Exception as exc:  # noqa: BLE001 (the test decides what is acceptable)
                        error = exc
                    study = optuna.load_study(study_name=cfg.sweep_id,
                                              storage=study_storage(results / "sweeps" / cfg.sweep_id))
                    out[key] = SimpleNamespace(study=study, events=events, error=error, base=base, cfg=cfg, space=space)
        finally:
            sweep_mod.set_listener(None)
            cleanup_ray_tmp(ray_tmp)
    return out


def _ray_trials(events):
    """Ray trial id → (last epoch reported, sampled params) from the 'complete' events."""
    done = {}
    for kind, trial_id, metrics in events:
        if kind == "complete":
            config = {k: v for k, v in metrics.get("config", {}).items() if not k.startswith("_")}
            done[trial_id] = (metrics.get("epoch"), config)
    return done


def _optuna_trial_for(study, params):
    matches = [t for t in study.trials if t.params == params]
    assert len(matches) == 1, (params, [t.params for t in study.trials])
    return matches[0]


@pytest.mark.slow
def test_asha_stops_trials_in_this_setting(ray_searches):
    asha = ray_searches["asha"]
    assert asha.error is None, asha.error
    assert grace_period(asha.base, asha.space) == 1 and grace_period(asha.base) == ASHA_EPOCHS
    ray_trials = _ray_trials(asha.events)
    assert len(ray_trials) == 8
    stopped = [t for t, (epoch, _) in ray_trials.items() if epoch < ASHA_EPOCHS - 1]
    assert stopped, "ASHA stopped no trial: the PRUNED check below would prove nothing"
    assert len(asha.study.trials) == 8
    assert not any(t.state == TrialState.RUNNING for t in asha.study.trials)


@pytest.mark.slow
def test_asha_stopped_trials_are_pruned_in_study_through_ray(ray_searches):
    asha = ray_searches["asha"]
    ray_trials = _ray_trials(asha.events)
    if not any(epoch < ASHA_EPOCHS - 1 for epoch, _ in ray_trials.values()):
        pytest.skip("ASHA stopped nothing this time")
    for trial_id, (epoch, params) in ray_trials.items():
        trial = _optuna_trial_for(asha.study, params)
        if epoch < ASHA_EPOCHS - 1:
            assert trial.state == TrialState.PRUNED, (trial_id, epoch, trial.state, trial.value)
        else:
            assert trial.state == TrialState.COMPLETE, (trial_id, epoch, trial.state)
    assert counted_trials(asha.study) == 8


@pytest.mark.slow
def test_diverged_search_trial_is_fail_and_the_sweep_goes_on(ray_searches):
    diverge = ray_searches["diverge"]
    assert diverge.error is None, repr(diverge.error)[:500]
    assert [t.state for t in diverge.study.trials] == [TrialState.FAIL, TrialState.FAIL]


