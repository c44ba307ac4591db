"""Packed search trials (`bkdbench sweep ... --pack K`): K configurations per Ray trial, each its own
Optuna trial told its own score, never reading the test split; bad options exit 2 before work."""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from bkdbench.orchestrate.sweeps import driver as sweep_mod
from bkdbench.orchestrate.trial import FINISHED
from bkdbench.orchestrate.sweeps.study import METRIC, study_storage
from bkdbench.orchestrate.sweeps.driver import SweepConfig, space_hash
from bkdbench.specs.search_spaces import load_space
from bkdbench.specs import make_spec

from helpers.cli import cli_app
from helpers.files import nothing_written
from helpers.processes import cleanup_ray_tmp
from helpers.ray_tmp import in_process_ray_env, ray_tmpdir
from helpers.sweeps import assert_numbering, load_study, watched_search


# --------------------------------------------------------------------------------------------
# 5. Packed search trials (--pack K): K configurations per Ray trial, each its own Optuna trial
# --------------------------------------------------------------------------------------------

def test_packed_searcher_asks_k_configurations_and_tells_each_its_own_score(tmp_path):
    from bkdbench.orchestrate.sweeps.packed import EPOCHS, PACK, VALUES, PackedOptunaSearch
    from ray.tune.search import Searcher

    storage = study_storage(tmp_path)
    searcher = PackedOptunaSearch(space=load_space("bkd")[0].optuna_space(), metric=METRIC, mode="max",
                                  sampler=optuna.samplers.RandomSampler(seed=0), study_name="p", storage=storage,
                                  pack=2, budget=5)
    packs = [searcher.suggest(t) for t in ("a", "b", "c")]
    assert [len(p[PACK]) for p in packs] == [2, 2, 1]  # exactly the budget: the last pack is smaller
    assert searcher.suggest("d") == Searcher.FINISHED
    assert searcher.suggest("a") == packs[0]  # asked once per Ray trial
    assert all(set(c) == {"alpha", "temperature"} for p in packs for c in p[PACK])
    # recipes that validate every 5 epochs: the values are the study's at their epoch, not Tune's report count
    searcher.on_trial_result("a", {VALUES: [40.0, None], "epoch": 4, "training_iteration": 1})
    searcher.on_trial_result("a", {VALUES: [None, None], "epoch": 5, "training_iteration": 2})
    searcher.on_trial_complete("a", {VALUES: [61.0, None], EPOCHS: [4, 2], FINISHED: True, "epoch": 3})
    searcher.on_trial_complete("b", {VALUES: [50.0, 55.0], "epoch": 1}, error=True)  # the whole trial crashed
    searcher.on_trial_complete("c", {VALUES: [70.0], EPOCHS: [4], FINISHED: True})
    searcher.on_trial_complete("c", {VALUES: [1.0], FINISHED: True})  # a second call changes nothing
    study = optuna.load_study(study_name="p", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                               TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].value == 61.0 and study.trials[4].value == 70.0
    assert study.trials[0].intermediate_values == {5: 40.0} and study.trials[1].intermediate_values == {}
    assert [t.user_attrs["epochs_trained"] for t in study.trials] == [4, 2, 2, 2, 4]
    assert [t.params for t in study.trials] == [c for p in packs for c in p[PACK]]


@pytest.mark.usefixtures("one_thread")  # the trial sets its thread count from the config
def test_packed_objective_never_reads_test_split(monkeypatch, tmp_path):
    """A pack of search configurations: validation only, each configuration's score reported apart."""
    import bkdbench.training.packed as packed_mod
    from bkdbench.data import load_longtail
    from bkdbench.orchestrate.sweeps.packed import EPOCHS, PACK, VALUES, search_pack_trial

    epochs = 2
    w = watched_search(monkeypatch, packed_mod, epochs)
    base, touched, predicted, scored, reports = w.base, w.touched, w.predicted, w.scored, w.reports
    pack = [{"alpha": 0.5, "temperature": 2.0}, {"alpha": 4.0, "temperature": 6.0}, {"alpha": 0.5, "temperature": 2.0}]
    search_pack_trial({"_cpus": 1, PACK: pack}, base=base.canonical_json(), results=str(tmp_path))

    val_size = len(load_longtail("digits", 10).val_y)
    assert touched == [] and not any(k.startswith("test") for r in reports for k in r)
    assert predicted == [val_size] * epochs  # one forward of the pack per evaluation, on validation
    assert scored == [val_size] * 2 * epochs  # scored per distinct configuration (the repeat trains once)
    *per_epoch, final = reports
    assert [r["epoch"] for r in per_epoch] == list(range(epochs))
    for r in per_epoch + [final]:
        values = r[VALUES]
        assert len(values) == 3 and values[0] == values[2] and all(0 <= v <= 100 for v in values)
        assert r[METRIC] == max(values)
    assert final[FINISHED] and final[EPOCHS] == [epochs] * 3 and final[VALUES] == per_epoch[-1][VALUES]


@pytest.mark.slow
def test_packed_sweep_through_ray(tmp_path):
    """3 configurations in packs of 2: 2 Ray trials, 3 COMPLETE Optuna trials, one per configuration."""
    from bkdbench.orchestrate.ray_session import ray_session
    from bkdbench.orchestrate.sweeps.driver import run_search

    results = tmp_path / "results"
    results.mkdir()
    ray_tmp = ray_tmpdir()
    space, file = load_space("focal")
    base = make_spec("digits", 10, "focal", epochs=2, params=space.fixed)
    cfg = SweepConfig(method="focal", dataset="digits", imbalance=10.0, space_file=str(file),
                      space_hash=space_hash(file), sampler="random", scheduler="none", epochs=2)
    events = []
    with pytest.MonkeyPatch.context() as mp:
        in_process_ray_env(mp, ray_tmp)
        try:
            with ray_session(None, log_file=results / "ray.log"), nothing_written(results / "leaderboard"):
                study = run_search(cfg, space, base, results, trials=3, concurrency=2, pack=2,
                                   on_event=lambda kind, key, metrics: events.append((kind, key, metrics.get("status"))))
        finally:
            sweep_mod.set_listener(None)
            left = cleanup_ray_tmp(ray_tmp)
    study = load_study(results, cfg.sweep_id)
    assert_numbering(study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(0 <= t.value <= 100 and t.user_attrs["epochs_trained"] == 2 for t in study.trials)
    assert len({t.params["gamma"] for t in study.trials}) == 3
    assert len([e for e in events if e[0] == "start"]) == 2  # two Ray trials ...
    assert sorted(e[2] for e in events if e[0] == "complete") == ["finished"] * 3  # ... three configurations
    assert not left, f"Ray processes left behind: {left}"
    with pytest.raises(ValueError, match="early stopping"):  # ASHA cannot stop one student of a pack
        run_search(replace(cfg, scheduler="asha"), space, base, results, trials=4, concurrency=1, pack=2)


@pytest.mark.parametrize("args, message", [
    (["--pack", "0"], "--pack must be at least 1"),
    (["--pack", "2", "--scheduler", "asha"], "--scheduler asha"),
])
def test_bad_pack_options_exit_2_before_work(tmp_path, args, message):
    from typer.testing import CliRunner

    with nothing_written(tmp_path):
        result = CliRunner().invoke(cli_app("sweep"), ["sweep", "bkd", *args, "--results", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output

