"""Packed trials (``--pack K`` for ablations): which runs share a trial, and a packed trial's rows.

The reference for a packed trial is the unpacked path: ``run_and_record`` on each spec alone. A pack
(loop strategy on CPU, which does each student's exact floating-point work) must write the same rows,
skip members already finished, and resume only from a checkpoint of the very same pack. The trainable
runs in this process with ``tune.report``/``tune.get_checkpoint`` replaced; the real-Ray ablation is
in tests/test_ablate.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ray import tune

from bkdbench.leaderboard.store import read_rows
from bkdbench.orchestrate import packed_trial
from bkdbench.orchestrate.ablate import ablation_specs, variants
from bkdbench.orchestrate.execute import run_and_record
from bkdbench.orchestrate.packs import RUN_ERRORS, RUNS, pack_groups, pack_units, per_run_events, per_run_outcome
from bkdbench.orchestrate.trial import CHECKPOINT_FILE, FINISHED
from bkdbench.specs import make_spec
from helpers.files import nothing_written

EPOCHS = 2
ROW_COLUMNS = ("run_id", "status", "method", "params", "seed", "epochs", "top1", "val_top1", "many", "medium", "few",
               "top1_best_epoch", "best_epoch", "ablation_id")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny CPU models, one thread


# ---------------------------------------------------------------- grouping


def test_runs_differing_only_in_method_params_share_a_pack_of_at_most_k():
    settings = variants("bkd", {"alpha": [0.5, 1.0, 2.0], "temperature": [1.0, 4.0]}, None)
    specs = ablation_specs("bkd", settings, ["digits"], [10.0, 50.0], seeds=2, epochs=EPOCHS)  # 24 runs
    groups = pack_groups(specs, 4)
    assert sorted(s.run_id for g in groups for s in g) == sorted(s.run_id for s in specs)  # each run once
    assert [len(g) for g in groups] == [3, 3] * 4  # 6 settings per (IF, seed) cell: 3 + 3, not 4 + 2
    for group in groups:
        assert len({(s.imbalance_factor, s.seed) for s in group}) == 1
        assert len({json.dumps(s.params, sort_keys=True) for s in group}) == len(group)
    units = pack_units(specs, 4)
    assert all(key.startswith("pack-") for key in units)
    assert pack_units(list(reversed(specs)), 4).keys() == units.keys()  # keys from the members, not the order
    singles = pack_units(specs, 1)
    assert list(singles) == [s.run_id for s in specs] and all(v == [k] for k, v in singles.items())


def test_runs_that_cannot_be_packed_stay_single_and_k_below_one_is_refused():
    teachers = [make_spec("digits", 10, "ce", seed=s, epochs=EPOCHS) for s in range(3)]  # differ in seed
    assert [len(g) for g in pack_groups(teachers, 4)] == [1, 1, 1]
    crt = [make_spec("digits", 10, "crt", epochs=EPOCHS, params={"stage2_fraction": f}) for f in (0.1, 0.2)]
    assert [len(g) for g in pack_groups(crt, 4)] == [1, 1]  # a stage-2 method: train_packed cannot train it
    with pytest.raises(ValueError, match="at least 1"):
        pack_groups(teachers, 0)


def test_the_demo_suite_packs_methods_of_one_seed_and_teacher_and_plans_plain_runs_beside_the_teachers(tmp_path):
    """digits-lt (2 IFs × 6 methods × 3 seeds): per (IF, seed), CE, CB re-weighting and Balanced Softmax
    share a trial beside the CE teachers, LDAM-DRW (cosine head) trains alone, and KD and BKD (one CE
    teacher) share a trial after them: 6 × 3 = 18 trials for 36 runs, each run once."""
    from bkdbench.orchestrate.runner import plan_runs
    from bkdbench.specs.suites import load_suite

    specs = load_suite("digits-lt").expand()
    plan = plan_runs(specs, tmp_path / "results")
    assert plan.stage_names == ["teachers", "runs"]
    assert sorted({s.method for s in plan.stages[0]}) == ["balanced-softmax", "ce", "ldam-drw", "reweight-cb"]
    assert sorted({s.method for s in plan.stages[1]}) == ["bkd", "kd"]
    groups = [pack_groups(stage, 4) for stage in plan.stages]
    methods = [sorted(sorted(s.method for s in g) for g in stage) for stage in groups]
    assert methods[0] == [["balanced-softmax", "ce", "reweight-cb"]] * 6 + [["ldam-drw"]] * 6
    assert methods[1] == [["bkd", "kd"]] * 6
    for group in (g for stage in groups for g in stage):
        assert len({(s.imbalance_factor, s.seed) for s in group}) == 1
    assert sorted(s.run_id for stage in groups for g in stage for s in g) == sorted(s.run_id for s in specs)
    # `bkdbench run`'s default packs only students (their teacher's forward is shared): 24 + 6 trials
    default = [pack_groups(stage, 4, students_only=True) for stage in plan.stages]
    assert [len(g) for g in default[0]] == [1] * 24
    assert sorted(sorted(s.method for s in g) for g in default[1]) == [["bkd", "kd"]] * 6


def test_pack_events_and_outcomes_are_per_run():
    units = {"pack-x": ["a", "b"], "c": ["c"]}
    seen = []
    event = per_run_events(lambda kind, key, metrics: seen.append((kind, key, metrics.get("status"))), units)
    event("start", "pack-x", {})
    event("complete", "pack-x", {RUNS: {"a": "finished", "b": "failed"}, "status": "failed"})
    event("complete", "c", {"status": "finished"})
    assert seen == [("start", "a", None), ("start", "b", None), ("complete", "a", "finished"),
                    ("complete", "b", "failed"), ("complete", "c", "finished")]
    out = per_run_outcome("pack-x", {RUNS: {"a": "finished", "b": "skipped"}, "error": None}, units)
    assert {k: v["status"] for k, v in out.items()} == {"a": "finished", "b": "skipped"}
    # a member that diverged carries its own reason, its sibling none; a crashed trial's error goes to both
    out = per_run_outcome("pack-x", {RUNS: {"a": "finished", "b": "failed"}, RUN_ERRORS: {"b": "loss became nan"},
                                     "status": "failed", "error": "loss became nan"}, units)
    assert {k: (v["status"], v["error"]) for k, v in out.items()} == {"a": ("finished", None),
                                                                     "b": ("failed", "loss became nan")}
    out = per_run_outcome("pack-x", {"error": "RayActorError: the actor died"}, units)
    assert {k: v["error"] for k, v in out.items()} == {"a": "RayActorError: the actor died",
                                                       "b": "RayActorError: the actor died"}


# ---------------------------------------------------------------- the trainable, in this process


def focal_specs():
    return [make_spec("digits", 10, "focal", epochs=EPOCHS, params={"gamma": g}) for g in (0.5, 2.0)]


class FakeTune:
    """``tune.report`` and ``tune.get_checkpoint`` for a trainable called in this process: keeps the
    reports, copies every checkpoint folder out (Tune would persist it) and serves one back."""

    def __init__(self, monkeypatch, folder: Path, restore: Path | None = None):
        self.reports, self.checkpoints, self.folder = [], [], folder
        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint",
                            lambda: tune.Checkpoint.from_directory(str(restore)) if restore else None)

    def report(self, metrics, checkpoint=None):
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            with checkpoint.as_directory() as src:
                dst = self.folder / f"ckpt-{len(self.checkpoints)}"
                shutil.copytree(src, dst)
            self.checkpoints.append(dst)


def run_unit(specs, results: Path, **kwargs):
    units = pack_units(specs, len(specs))
    (key,) = units
    packed_trial.train_unit({"run_id": key, "resources": {"cpu": 1}}, units=units,
                            specs={s.run_id: s.canonical_json() for s in specs}, results=str(results),
                            tags={"ablation_id": "abl"}, **kwargs)


def rows(results: Path):
    frame, bad = read_rows(results / "leaderboard")
    assert bad == []
    return frame.set_index("run_id", drop=False).sort_index()


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory, one_thread_for_module):
    """The reference: each spec through run_and_record alone, tagged as an ablation tags it."""
    results = tmp_path_factory.mktemp("unpacked")
    for spec in focal_specs():
        run_and_record(spec, results, tags={"ablation_id": "abl"}, device="cpu")
    return rows(results)


def test_a_packed_trial_writes_the_rows_separate_runs_write(monkeypatch, tmp_path, unpacked):
    fake = FakeTune(monkeypatch, tmp_path)
    run_unit(focal_specs(), tmp_path / "results")
    got = rows(tmp_path / "results")
    assert list(got.run_id) == list(unpacked.run_id) and len(got) == 2
    for col in ROW_COLUMNS:
        assert got[col].tolist() == unpacked[col].tolist(), col
    for a, b in zip(got.per_class_acc, unpacked.per_class_acc):
        assert list(a) == pytest.approx(list(b), abs=1e-9)
    assert [r["epoch"] for r in fake.reports[:-1]] == list(range(EPOCHS))  # one result per epoch for the pack
    final = fake.reports[-1]
    assert final[FINISHED] and final["status"] == "finished"
    assert final[RUNS] == {s.run_id: "finished" for s in focal_specs()}


def test_finished_members_are_skipped_and_a_pack_resumes_only_its_own_checkpoint(monkeypatch, tmp_path, unpacked):
    specs = focal_specs()
    results = tmp_path / "results"
    fake = FakeTune(monkeypatch, tmp_path)
    run_unit(specs, results, checkpoint_every=1)  # a checkpoint after epoch 1 of 2
    assert len(fake.checkpoints) == EPOCHS - 1
    checkpoint = fake.checkpoints[0]
    assert (checkpoint / CHECKPOINT_FILE).is_file()
    # Everything finished: nothing is trained or written again.
    again = FakeTune(monkeypatch, tmp_path, restore=checkpoint)
    with nothing_written(results):
        run_unit(specs, results)
    assert again.reports == [{"status": "skipped", RUNS: {s.run_id: "skipped" for s in specs}, FINISHED: True}]

    # Restarted from the checkpoint (Tune's retry after a crash): only the last epoch is trained, and the
    # rows are those of an uninterrupted run.
    fresh = tmp_path / "fresh"
    restarted = FakeTune(monkeypatch, tmp_path, restore=checkpoint)
    run_unit(specs, fresh)
    assert [r["epoch"] for r in restarted.reports[:-1]] == [EPOCHS - 1]
    assert rows(fresh).top1.tolist() == unpacked.top1.tolist()

    # One member already finished: the other trains alone, from epoch 0 (the pack's checkpoint is not its own).
    partial = tmp_path / "partial"
    (partial / "leaderboard").mkdir(parents=True)
    done = next(p for p in (results / "leaderboard").glob("*.parquet") if specs[0].run_id in p.name)
    shutil.copy(done, partial / "leaderboard" / done.name)
    alone = FakeTune(monkeypatch, tmp_path, restore=checkpoint)
    run_unit(specs, partial)
    assert [r["epoch"] for r in alone.reports[:-1]] == list(range(EPOCHS))
    assert all(r["students"] == 1 for r in alone.reports[:-1])
    assert alone.reports[-1][RUNS] == {specs[0].run_id: "skipped", specs[1].run_id: "finished"}
    assert rows(partial).loc[specs[1].run_id, "top1"] == unpacked.loc[specs[1].run_id, "top1"]
