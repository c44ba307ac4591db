"""`bkdbench ablate`: grid parsing, presets, the factorial expansion, marginal effects against hand
values, bad input, tiny real ablations through Ray, and a SIGKILLed one resumed."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.leaderboard.ablation import marginal_effects
from bkdbench.leaderboard.store import read_rows
from bkdbench.orchestrate.ablate import AblationError, ablation_id, ablation_specs, parse_grid, variants
from helpers.cli import cli_env, kill_group, run_cli, start_cli
from helpers.files import assert_nothing_written, nothing_written, row_files, snapshot
from helpers.processes import cleanup_ray_tmp, kill_pids, ray_processes, wait_for
from helpers.ray_tmp import ray_tmpdir
from helpers.tune_state import history_of, named_checkpoints, resumed_at


def test_parse_grid_values_and_errors():
    assert parse_grid(["alpha=0,0.5,1", "renormalize=true,false", "ce_weighting=instance"]) == {
        "alpha": [0.0, 0.5, 1.0], "renormalize": [True, False], "ce_weighting": ["instance"]}
    for bad in (["alpha"], ["=1,2"], ["alpha="], ["alpha=1", "alpha=2"]):
        with pytest.raises(AblationError):
            parse_grid(bad)


def test_factorial_grid_and_presets():
    settings = variants("bkd", {"alpha": [0.5, 1.0, 2.0], "temperature": [1.0, 4.0]}, None)
    assert len(settings) == 6 and {"alpha": 2.0, "temperature": 4.0} in settings
    components = variants("bkd", {}, "components")
    assert components[0] == {} and {"kd_weighting": "none"} in components and {"renormalize": False} in components
    with pytest.raises(AblationError, match="bkd:components"):
        variants("bkd", {}, "nope")
    with pytest.raises(AblationError):
        variants("bkd", {}, None)


def test_components_preset_switches_the_schedule_each_dataset_does_not_use():
    """BKD's cb_start default is 0 on CIFAR-100 and 0.8 on CIFAR-10/digits (protocol.md): the preset's
    schedule variant is 0.8 (deferred, epoch 160 of 200) on CIFAR-100 and 0 (from the start) elsewhere,
    so on no dataset does it repeat the default variant."""
    settings = variants("bkd", {}, "components")
    specs = ablation_specs("bkd", settings, ["cifar100", "cifar10", "digits"], [100.0], seeds=1, epochs=2)
    assert len(specs) == 3 * len(settings)
    by_dataset = {d: [s for s in specs if s.dataset == d] for d in ("cifar100", "cifar10", "digits")}
    expected = {"cifar100": (0.0, 0.8), "cifar10": (0.8, 0.0), "digits": (0.8, 0.0)}
    for dataset, (default, switched) in expected.items():
        runs = by_dataset[dataset]
        assert runs[0].params["cb_start"] == default and runs[-1].params["cb_start"] == switched, dataset
        assert len({s.run_id for s in runs}) == len(settings), f"{dataset}: a variant repeats another"
    # an explicit value is kept as given
    fixed = ablation_specs("bkd", [{"cb_start": 0.0}], ["cifar100"], [100.0], seeds=1, epochs=2)
    assert fixed[0].params["cb_start"] == 0.0


def test_expansion_counts_and_stable_id():
    settings = variants("bkd", {"alpha": [0.5, 1.0]}, None)
    specs = ablation_specs("bkd", settings, ["digits"], [10.0, 50.0], seeds=3, epochs=2)
    assert len(specs) == 2 * 2 * 3 and len({s.run_id for s in specs}) == 12
    assert {s.params["alpha"] for s in specs} == {0.5, 1.0}
    again = ablation_specs("bkd", settings, ["digits"], [10.0, 50.0], seeds=3, epochs=2)
    assert ablation_id("bkd", specs) == ablation_id("bkd", list(reversed(again)))


def test_marginal_effects_by_hand():
    rows = pd.DataFrame({
        "status": ["finished"] * 4 + ["failed"],
        "imbalance_factor": [10.0, 10.0, 50.0, 50.0, 50.0],
        "params": [json.dumps({"alpha": a, "temperature": t}) for a, t in ((1, 2), (2, 2), (1, 4), (2, 4), (2, 4))],
        "top1": [90.0, 80.0, 70.0, 60.0, 0.0],
    })
    effects = marginal_effects(rows, ["alpha", "temperature"]).set_index(["factor", "level"])
    # alpha=1: runs 90 and 70 → mean 80, sample std sqrt(((10)^2 + (10)^2) / 1) = 14.142; the failed run is ignored
    assert effects.loc[("alpha", 1), "mean"] == pytest.approx(80.0)
    assert effects.loc[("alpha", 1), "std"] == pytest.approx(math.sqrt(200.0))
    assert effects.loc[("alpha", 2), "mean"] == pytest.approx(70.0)
    assert effects.loc[("temperature", 4), "n"] == 2
    assert effects.loc[("temperature", 4), "mean"] == pytest.approx(65.0)


@pytest.mark.parametrize("args, message", [
    (["bkd"], "--grid"),
    (["bkd", "--grid", "alpha"], "PARAM=v1"),
    (["bkd", "--grid", "alpha=-1,1"], "alpha"),
    (["bkd", "--grid", "gamma=1,2"], "gamma"),
    (["bkd", "--preset", "nope"], "preset"),
    (["nosuch", "--grid", "alpha=1"], "unknown method"),
    (["bkd", "--grid", "alpha=1", "--imbalance", "ten"], "--imbalance"),
    (["bkd", "--grid", "alpha=1", "--pack", "0"], "--pack"),
    (["bkd", "--grid", "alpha=1", "--pack", "-2"], "--pack"),
])
def test_bad_input_exits_2_before_work(tmp_path, args, message):
    with nothing_written(tmp_path):
        result = CliRunner().invoke(app, ["ablate", *args, "--results", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_tiny_ablation_through_ray(tmp_path):
    results = tmp_path / "results"
    ray_tmp = ray_tmpdir()  # a private Ray temp folder: other Ray users on the machine stay apart
    try:
        out = run_cli(["ablate", "bkd", "--grid", "alpha=0.5,2", "--imbalance", "10", "--seeds", "1", "--epochs", "2",
                       "--results", results], env=cli_env(ray_tmp), timeout=300)
    finally:
        left = cleanup_ray_tmp(ray_tmp)
    assert not left, f"Ray processes left behind: {left}"
    assert out.returncode == 0, out.stdout + out.stderr
    frame, bad = read_rows(results / "leaderboard")
    assert bad == []
    tagged = frame[frame.ablation_id.notna()]
    assert len(tagged) == 2 and tagged.ablation_id.nunique() == 1
    assert sorted(json.loads(p)["alpha"] for p in tagged.params) == [0.5, 2.0]
    assert len(frame[frame.method == "ce"]) == 1  # the shared teacher, trained once
    assert "marginal effects" in out.stdout and "alpha" in out.stdout


@pytest.mark.slow
def test_packed_ablation_through_ray_then_resume_trains_nothing(tmp_path):
    """--pack 2: the two settings share one trial (one augmented batch stream, one teacher forward);
    each still gets its own finished, tagged row. Row values against separate runs:
    tests/test_packed_trials.py."""
    results = tmp_path / "results"
    args = ["ablate", "bkd", "--grid", "alpha=0.5,2", "--imbalance", "10", "--seeds", "1", "--epochs", "2",
            "--pack", "2", "--results", results]
    ray_tmp = ray_tmpdir()  # a private Ray temp folder: other Ray users on the machine stay apart
    try:
        out = run_cli(args, env=cli_env(ray_tmp))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "3 run(s) in 2 trial(s)" in " ".join(out.stdout.split())  # the teacher alone, the students packed
        frame, bad = read_rows(results / "leaderboard")
        assert bad == []
        tagged = frame[frame.ablation_id.notna()]
        assert len(tagged) == 2 and tagged.run_id.nunique() == 2 and tagged.ablation_id.nunique() == 1
        assert set(tagged.status) == {"finished"} and tagged.top1.notna().all() and tagged.val_top1.notna().all()
        assert sorted(json.loads(p)["alpha"] for p in tagged.params) == [0.5, 2.0]
        teacher = frame[frame.method == "ce"]
        assert len(teacher) == 1 and teacher.ablation_id.isna().all()
        rows_before = snapshot(results / "leaderboard")

        again = run_cli([*args, "--resume"], env=cli_env(ray_tmp))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "2 already done, 0 to train" in " ".join(again.stdout.split())
        assert_nothing_written(rows_before, results / "leaderboard")
    finally:
        left = cleanup_ray_tmp(ray_tmp)
    assert not left, f"Ray processes left behind: {left}"


@pytest.mark.slow
def test_sigkilled_ablation_resumes_each_run_once_from_its_checkpoint(tmp_path):
    """SIGKILL the driver (and its Ray processes) while the two students train, once the saved Tune
    state names a student checkpoint; then --resume: the teacher is not retrained, each student has
    one finished row, and each restarts at the epoch of the checkpoint the state named (0: none)."""
    epochs = 30
    results = tmp_path / "results"
    args = ["ablate", "bkd", "--grid", "alpha=0.5,2", "--imbalance", "10", "--seeds", "1", "--epochs", epochs,
            "--checkpoint-every", "3", "--results", results]
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    driver = start_cli(args, tmp_path / "killed.log", env=env)
    try:
        def student_checkpointed() -> bool:
            done = {p.stem for p in row_files(results)}
            return len(done) == 1 and any(e for run, e in named_checkpoints(results).items() if run not in done)

        wait_for(student_checkpointed, timeout=300, every=0.1,
                 what=lambda: f"the teacher's row and a student checkpoint:\n{(tmp_path / 'killed.log').read_text()}")
        kill_group(driver)  # SIGKILL: the driver and what it started in its session
        driver.wait(timeout=30)
        kill_pids(ray_processes(ray_tmp, driver.pid))  # its orphaned Ray daemons, by PID
        before, bad = read_rows(results / "leaderboard")
        assert bad == [] and list(before.method) == ["ce"], before[["method", "status"]]
        named = {run: e for run, e in named_checkpoints(results).items() if run not in set(before.run_id)}

        resumed = run_cli([*args, "--resume"], env=env, timeout=400)
        assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
        assert "2 runs, 0 already done, 2 to train" in " ".join(resumed.stdout.split())  # the teacher is not counted
        after, bad = read_rows(results / "leaderboard")
        assert bad == [] and len(after) == after.run_id.nunique() == 3 and set(after.status) == {"finished"}
        rows = after.set_index("run_id")
        teacher = before.run_id[0]
        assert rows.loc[teacher, "finished_at"] == before.finished_at[0], "the finished teacher was retrained"
        students = [r for r in rows.index if r != teacher]
        assert sorted(named) == sorted(students) and any(named.values()), named
        histories = {r: history_of(rows.loc[r, "history"]) for r in students}
        assert {r: resumed_at(h) for r, h in histories.items()} == named
        assert all([h["epoch"] for h in histories[r]] == list(range(epochs)) for r in students), "every epoch once"
        print(f"\nablate SIGKILL: students resumed at epochs {sorted(e or 0 for e in named.values())}, teacher kept")
    finally:
        kill_group(driver)
        left = cleanup_ray_tmp(ray_tmp, driver.pid)
    assert not left, f"Ray processes left behind: {left}"
