"""Successive halving over compressed schedules (``bkdbench sweep --scheduler sh``, sweeps/halving.py):
the rungs' budgets and the promotion rule against values worked out by hand (in the comments), a rung
run as the same recipe with fewer epochs, ``--scheduler auto``'s choice, Spearman's rank agreement
against scipy and a hand computation, the driver's bookkeeping with the training faked (no Ray: what
Optuna is told, and a resumed bracket trains only the rung runs without a record), and one slow end-to-end
sweep through Ray and Optuna that is SIGKILLed mid-bracket and resumed; Hyperband brackets (`--brackets`)
against Li et al.'s table, faked and through Ray."""
from __future__ import annotations

import json

import optuna
import pytest

from bkdbench.methods.registry import resolve_cb_epoch
from bkdbench.orchestrate.sweeps import halving
from bkdbench.orchestrate.sweeps.driver import SweepConfig, choose_scheduler, space_hash
from bkdbench.orchestrate.sweeps.halving import (BRACKET, bracket_plan, keep_count, min_rung_epochs, promote,
                                                 rung_budgets, scaled_spec)
from bkdbench.orchestrate.sweeps.report import rank_agreement, spearman
from bkdbench.orchestrate.sweeps.study import DEFAULTS
from bkdbench.specs import make_spec
from bkdbench.specs.recipes import get_recipe
from bkdbench.specs.search_spaces import SearchSpace, load_space


# --- rungs and promotion ------------------------------------------------------------------------

@pytest.mark.parametrize("epochs,eta,rungs,floor,budgets", [
    (40, 3, 3, 8, [8, 13, 40]),  # 40/9 = 4.4 → 4, raised to 8; 40/3 = 13.3 → 13
    (200, 3, 3, 8, [22, 67, 200]),  # 22.2 → 22, 66.7 → 67
    (27, 3, 3, 3, [3, 9, 27]),
    (81, 3, 4, 1, [3, 9, 27, 81]),
    (40, 2, 3, 1, [10, 20, 40]),
    (10, 3, 3, 8, [8, 10]),  # 1.1 and 3.3 both raised to 8: one rung
    (5, 3, 3, 8, [5]),  # the floor is never above the budget: plain full-budget search
])
def test_rung_budgets(epochs, eta, rungs, floor, budgets):
    assert rung_budgets(epochs, eta, rungs, floor) == budgets


def test_the_floor_keeps_both_learning_rate_drops_apart():
    # small (0.8, 0.9 of the budget): 7 epochs → drops at round(5.6) = 6 and round(6.3) = 6, the same epoch;
    # 8 epochs → 6 and 7, both inside the run
    assert get_recipe("small").milestones(7)[1:] == (6, 6) and get_recipe("small").milestones(8)[1:] == (6, 7)
    assert min_rung_epochs("small") == min_rung_epochs("reference") == 8
    assert min_rung_epochs("imagenet-lt") == 3  # cosine: no drops, the plain floor
    assert min_rung_epochs("imagenet-lt", floor=5) == 5


@pytest.mark.parametrize("n,keep", [(16, 5), (5, 1), (9, 3), (2, 1), (1, 1), (27, 9)])
def test_keep_count(n, keep):
    assert keep_count(n, 3) == keep


def test_promotion_by_validation_ties_to_the_earlier_trial_failures_never():
    scores = {0: 50.0, 1: 70.0, 2: None, 3: 70.0, 4: 60.0, 5: 40.0, 6: 80.0}
    assert promote(scores, 3) == [1, 6]  # 7 // 3 = 2: 80 (#6), then 70 (#1 before #3)
    assert promote({0: None, 1: None, 2: 10.0}, 3) == [2]
    assert promote({0: None, 1: None}, 3) == []
    assert promote({n: float(n) for n in range(16)}, 3) == [11, 12, 13, 14, 15]


# --- a rung run is the same recipe with fewer epochs ---------------------------------------------

def test_a_short_rung_is_the_same_run_with_fewer_epochs():
    full = make_spec("digits", 50, "bkd", epochs=40, params={"alpha": 2.0, "temperature": 5.0})
    short = scaled_spec(full, 8)
    # built independently: the same student at 8 epochs, distilled from the same full-budget teacher
    expected = make_spec("digits", 50, "bkd", epochs=8, params={"alpha": 2.0, "temperature": 5.0}, teacher=full.teacher)
    assert short.canonical_json() == expected.canonical_json()
    assert short.run_id != full.run_id and short.teacher.epochs == 40 and scaled_spec(full, 40) is full
    # the schedule at 8 epochs: warm-up 5/200·8 = 0.2 epoch, drops at 6 and 7, weights from round(0.8·8) = 6
    recipe = get_recipe(short.recipe)
    assert recipe.milestones(8) == (0.2, 6, 7)
    assert resolve_cb_epoch(short.params["cb_start"], 8) == 6
    assert [recipe.lr_at(e, 8) for e in (5, 6, 7)] == pytest.approx([0.05, 0.0005, 0.000005])


def test_a_rung_below_the_floor_says_what_it_leaves_out():
    # cpu-short at 10 epochs (drops at 0.8 and 0.9 of the budget, cb_start 0.8), rungs of 2, 3 and 10:
    # 2 epochs → drops at round(1.6) = 2 and round(1.8) = 2, weights from round(1.6) = 2: none inside epochs 0-1;
    # 3 epochs → drops at round(2.4) = 2 and round(2.7) = 3 (past the end), weights from round(2.4) = 2
    spec = make_spec("digits", 50, "bkd", epochs=10, recipe="cpu-short")
    assert halving.rung_caveats(spec, [2, 3, 10]) == [
        "the 2-epoch rung: neither learning-rate drop falls inside it (epochs 2 and 2); "
        "class-balanced weighting never switches on (cb_start 0.8: epoch 2)",
        "the 3-epoch rung: its second learning-rate drop falls past its end (epoch 3)"]
    # 7 of small's 40 epochs: both drops on round(5.6) = round(6.3) = 6; the floor's 8: 6 and 7, weights from 6
    assert halving.rung_caveats(make_spec("digits", 50, "bkd", epochs=40), [7, 13, 40]) == [
        "the 7-epoch rung: its learning-rate drops fall on epochs 6 and 6"]
    assert halving.rung_caveats(make_spec("digits", 50, "bkd", epochs=40), [8, 13, 40]) == []
    # plain KD defers nothing: only the schedule's drops are named
    assert halving.rung_caveats(make_spec("digits", 50, "kd", epochs=10, recipe="cpu-short"), [2, 10]) == [
        "the 2-epoch rung: neither learning-rate drop falls inside it (epochs 2 and 2)"]


def test_the_plan_line_says_what_a_rung_below_the_floor_leaves_out(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bkdbench.cli import app
    from helpers.sweeps import stand_in_search

    stand_in_search(monkeypatch)
    args = ["sweep", "ldam-drw", "--dataset", "digits", "--imbalance", "10", "--trials", "1", "--scheduler", "sh",
            "--recipe", "cpu-short", "--epochs", "10"]
    short = CliRunner().invoke(app, [*args, "--min-epochs", "2", "--results", str(tmp_path / "a")])
    assert short.exit_code == 0, short.output
    text = " ".join(short.output.split())
    assert "rungs of 2, 3, 10 epochs" in text
    assert ("the 2-epoch rung: neither learning-rate drop falls inside it (epochs 2 and 2); class-balanced "
            "weighting never switches on (cb_start 0.8: epoch 2)") in text
    assert "this recipe's floor: 8 epochs" in text
    floor = CliRunner().invoke(app, [*args, "--results", str(tmp_path / "b")])  # rungs of 8 and 10: no note
    assert floor.exit_code == 0, floor.output
    assert "rungs of 8, 10 epochs" in " ".join(floor.output.split()) and "note:" not in floor.output


def test_halving_epochs():
    assert halving.halving_epochs(16, [8, 13, 40]) == 16 * 8 + 5 * 13 + 1 * 40 == 233
    assert halving.halving_epochs(16, [22, 67, 200]) == 16 * 22 + 5 * 67 + 1 * 200 == 887
    assert halving.halving_epochs(16, [8, 10]) == 16 * 8 + 5 * 10 == 178
    # Hyperband, 3 brackets (docs/protocol.md): 233 + 8 from 13 epochs (8·13 + 2·40) + 6 at 40
    assert halving.halving_epochs(16, [8, 13, 40], brackets=3) == 233 + 8 * 13 + 2 * 40 + 6 * 40 == 657


@pytest.mark.parametrize("extra,scheduler,says", [
    # cpu-short at 10 epochs: rungs of 8 and 10 would cost 16·8 + 5·10 = 178 epochs, more than 16·10 = 160
    (["--recipe", "cpu-short", "--epochs", "10"], "asha", "would train 178 epochs, no fewer than 16 full-budget "
                                                          "trials (160), so ASHA"),
    (["--recipe", "cpu-short", "--epochs", "10", "--pack", "2"], "none", "so every trial trains the full budget"),
    (["--epochs", "40"], "sh", "rungs of 8, 13, 40 epochs"),  # 233 of 640
    (["--recipe", "cpu-short", "--epochs", "10", "--scheduler", "sh"], "sh", "rungs of 8, 10 epochs"),  # as asked
])
def test_auto_halves_only_where_halving_trains_fewer_epochs(tmp_path, monkeypatch, extra, scheduler, says):
    from typer.testing import CliRunner

    from bkdbench.cli import app
    from helpers.sweeps import stand_in_search

    seen = stand_in_search(monkeypatch)
    result = CliRunner().invoke(app, ["sweep", "ldam-drw", "--dataset", "digits", "--imbalance", "10", "--trials", "16",
                                      *extra, "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].scheduler == scheduler
    assert says in " ".join(result.output.split())


@pytest.mark.parametrize("method,params,budget,name,epoch", [
    ("ldam-drw", {"cb_start": 32}, 8, "cb_start", 6),  # epoch 32 of 40 = 0.8 → round(6.4) = 6
    ("ldam-drw", {"cb_start": 32}, 13, "cb_start", 10),  # 0.8·13 = 10.4 → 10
    ("ldam-drw", {"cb_start": 0.5}, 13, "cb_start", 6),  # a fraction stays: round(6.5) = 6 (half to even)
    ("ldam-drw", {"cb_start": 40}, 8, "cb_start", 8),  # never on in the full run: never on in the short one
    ("dkd", {"warmup": 4}, 20, "warmup", 2),  # DKD's ramp: 4 of 40 = 0.1 → 2 of 20
])
def test_epoch_parameters_scale_with_the_budget(method, params, budget, name, epoch):
    short = scaled_spec(make_spec("digits", 50, method, epochs=40, params=params), budget)
    assert short.epochs == budget and resolve_cb_epoch(short.params[name], budget) == epoch


# --- --scheduler auto ----------------------------------------------------------------------------

@pytest.mark.parametrize("method,params,pack,workers,scheduler", [
    ("bkd", {}, 1, 1, "sh"), ("ldam-drw", {}, 1, 1, "sh"), ("drw", {}, 1, 1, "sh"),
    ("bkd", {"cb_start": 0}, 1, 1, "asha"),  # nothing deferred
    ("kd", {}, 1, 1, "asha"), ("kd", {"weighted_ce": True}, 1, 1, "sh"),  # cb_start counts only with weighted CE
    ("focal", {}, 1, 1, "asha"), ("dkd", {}, 1, 1, "asha"),
    ("bkd", {}, 2, 1, "sh"), ("focal", {}, 2, 1, "none"), ("bkd", {}, 1, 2, "asha"),
])
def test_auto_picks_halving_for_deferred_schedules(method, params, pack, workers, scheduler):
    base = make_spec("digits", 50, method, epochs=40, params=params)
    chosen, why = choose_scheduler("auto", base, pack=pack, workers=workers)
    assert chosen == scheduler and why
    if scheduler == "sh":
        assert "epoch 32 of 40" in why
    assert choose_scheduler("asha", base) == ("asha", "as asked")


def test_auto_reads_the_latest_cb_start_a_space_searches():
    space = SearchSpace(method="drw", params={"cb_start": {"type": "float", "low": 0.0, "high": 0.5}})
    assert choose_scheduler("auto", make_spec("digits", 50, "drw", epochs=40, params={"cb_start": 0}), space)[0] == "sh"


# --- Spearman's rank agreement -------------------------------------------------------------------

def test_spearman_against_a_hand_computation_and_scipy():
    from scipy.stats import spearmanr

    # no ties: 1 − 6·Σd²/(n(n²−1)), d = (0, 1, 1, 0) → 1 − 12/60 = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    x, y = [50.0, 61.5, 61.5, 70.0, 40.0, 55.0], [52.0, 60.0, 64.0, 64.0, 45.0, 50.0]  # ties on both sides
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_rank_agreement_per_rung_pair_over_the_configurations_that_ran_both():
    study = optuna.create_study(direction="maximize")
    rungs = {0: {3: 10.0, 9: 20.0, 27: 40.0}, 1: {3: 20.0, 9: 10.0}, 2: {3: 30.0, 9: 30.0, 27: 35.0},
             3: {3: 5.0}, 4: {3: 15.0}}
    for number, scores in rungs.items():
        trial = study.ask()
        trial.set_user_attr(BRACKET, 0)
        for budget, value in scores.items():
            trial.report(value, budget)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    untagged = study.ask()  # an ASHA trial's intermediate values are not rungs
    untagged.report(99.0, 3)
    study.tell(untagged, 1.0)
    pairs = rank_agreement(study)
    assert [(p["low"], p["high"], p["n"]) for p in pairs] == [(3, 9, 3), (9, 27, 2)]
    # 3 → 9: ranks (1, 2, 3) vs (2, 1, 3): d² = 1 + 1 + 0 → 1 − 6·2/24 = 0.5; 9 → 27: two pairs, no value
    assert pairs[0]["spearman"] == pytest.approx(0.5) and pairs[1]["spearman"] is None


# --- the driver's bookkeeping, training faked ----------------------------------------------------

def fake_score(params: dict, budget: int) -> float:
    """A made-up validation score: higher alpha is better, more epochs add a little."""
    return round(10 * params["alpha"] + budget / 10, 6)


class Killed(Exception):
    pass


def faked_halving(tmp_path, monkeypatch, rungs: tuple, brackets: int = 1, kill=lambda trained, budget: False):
    """A halving sweep of BKD's alpha on digits whose rung runs are faked: each run without a record
    writes ``fake_score``'s. ``kill(trained, budget)``, true before a run, raises Killed there (once):
    the driver dies mid-rung. Returns (cfg, run(trials) -> study, the (run id, budget) pairs trained)."""
    space = SearchSpace(method="bkd", params={"alpha": {"type": "float", "low": 0.1, "high": 10.0}})
    file = tmp_path / "space.yaml"
    file.write_text("x")
    base = make_spec("digits", 10, "bkd", epochs=rungs[-1])
    cfg = SweepConfig(method="bkd", dataset="digits", imbalance=10.0, space_file=str(file), space_hash=space_hash(file),
                      sampler="random", scheduler="sh", epochs=rungs[-1], rungs=rungs, eta=3, brackets=brackets)
    trained, killed = [], []

    def fake_rung(cfg, specs, results, folder, budget, **kwargs):
        for spec in {s.run_id: s for s in specs.values()}.values():
            if halving.read_record(folder, spec.run_id) is not None:
                continue
            if not killed and kill(trained, budget):
                killed.append(budget)
                raise Killed
            trained.append((spec.run_id, budget))
            halving.write_record(folder, spec, fake_score(spec.params, budget), "finished", 0.0)

    monkeypatch.setattr(halving, "_train_rung", fake_rung)
    run = lambda trials: halving.run_halving(cfg, space, base, tmp_path / "results", trials=trials,  # noqa: E731
                                             concurrency=2, budgets=list(rungs), eta=3, brackets=brackets)
    return cfg, run, trained


def test_halving_tells_optuna_each_rung_and_a_resume_trains_only_what_is_missing(tmp_path, monkeypatch):
    cfg, run, trained = faked_halving(tmp_path, monkeypatch, (3, 9, 27),  # dies before the second 9-epoch run
                                      kill=lambda trained, budget: budget == 9 and [b for _, b in trained].count(9) == 1)
    with pytest.raises(Killed):
        run(10)
    first = list(trained)
    assert [b for _, b in first] == [3] * 10 + [9]  # every bottom-rung run and one of the 3 promoted ones
    study = run(10)  # resumed: the same bracket, only the rung runs without a record
    again = trained[len(first):]
    assert [b for _, b in again] == [9, 9, 27] and not {r for r, _ in again} & {r for r, _ in first}

    trials = study.get_trials()
    assert len(trials) == 10 and all(t.user_attrs[BRACKET] == 0 for t in trials)
    assert trials[0].params == {"alpha": 1.0} and trials[0].user_attrs[DEFAULTS]  # BKD's default α first
    by_alpha = sorted(trials, key=lambda t: -t.params["alpha"])
    # 10 → 10 // 3 = 3 at 9 epochs → 1 at 27: the highest alpha wins every rung
    assert [t.state.name for t in by_alpha] == ["COMPLETE", "PRUNED", "PRUNED"] + ["PRUNED"] * 7
    assert sorted(by_alpha[0].intermediate_values) == [3, 9, 27]
    assert all(sorted(t.intermediate_values) == [3, 9] for t in by_alpha[1:3])
    assert all(sorted(t.intermediate_values) == [3] for t in by_alpha[3:])
    assert by_alpha[0].value == fake_score(by_alpha[0].params, 27)
    assert [t.user_attrs["epochs_trained"] for t in by_alpha] == [39, 12, 12] + [3] * 7  # 3 + 9 + 27, 3 + 9, 3
    assert run(10) and len(trained) == len(first) + 3  # done: nothing more
    records = list((tmp_path / "results" / "sweeps" / cfg.sweep_id / "rungs").glob("*.json"))
    assert len(records) == 14 and {json.loads(p.read_text())["epochs"] for p in records} == {3, 9, 27}


def test_a_later_driver_proposes_new_configurations(tmp_path, monkeypatch):
    """``--resume --trials 8`` after a finished 4-configuration bracket: the new driver's sampler must
    not replay the first driver's proposals (seeded alike, the random sampler proposed the same four
    alphas again, and they were trained twice)."""
    _, run, trained = faked_halving(tmp_path, monkeypatch, (3, 9))
    run(4)
    study = run(8)
    alphas = [[t.params["alpha"] for t in study.get_trials() if t.user_attrs[BRACKET] == b] for b in (0, 1)]
    assert len(alphas[0]) == len(alphas[1]) == 4 and not set(alphas[0]) & set(alphas[1])
    assert alphas[0][0] == 1.0 and [t.number for t in study.get_trials() if t.user_attrs.get(DEFAULTS)] == [0]
    runs = [r for r, _ in trained]
    assert len(runs) == len(set(runs)) == 2 * (4 + 1)  # 4 at 3 epochs, the best 1 at 9, twice


def test_bracket_sizes_are_hyperbands():
    # Li et al. 2018, Table 1 (R = 81, eta = 3): brackets of 81, 34, 15, 8 and 5 configurations starting
    # at 1, 3, 9, 27 and 81 units of budget.
    plan = bracket_plan(81, [1, 3, 9, 27, 81], 3, 5)
    assert plan == [(81, [1, 3, 9, 27, 81]), (34, [3, 9, 27, 81]), (15, [9, 27, 81]), (8, [27, 81]), (5, [81])]
    # 16 at [8, 13, 40]: 16·3/(2·3) = 8 from 13 epochs, 16·3/(1·9) = 5.3 -> 6 at 40
    assert bracket_plan(16, [8, 13, 40], 3, 3) == [(16, [8, 13, 40]), (8, [13, 40]), (6, [40])]
    assert bracket_plan(16, [8, 13, 40], 3, 1) == [(16, [8, 13, 40])]
    with pytest.raises(ValueError, match="between 1 and the number of rungs"):
        bracket_plan(16, [8, 40], 3, 3)


def test_brackets_run_in_order_and_a_resume_finishes_the_open_one(tmp_path, monkeypatch):
    """Three brackets over rungs of 3, 9 and 27 epochs with 9 configurations first: 9 → 3 → 1, then
    5 from 9 epochs → 1, then 3 at 27; the driver dies in the second bracket's first rung and resumes."""
    _, run, trained = faked_halving(tmp_path, monkeypatch, (3, 9, 27), brackets=3,  # bracket 0's 13 rung runs,
                                    kill=lambda trained, budget: len(trained) == 9 + 3 + 1 + 2)  # then 2 of 5
    with pytest.raises(Killed):
        run(9)
    assert [b for _, b in trained] == [3] * 9 + [9] * 3 + [27] + [9] * 2
    study = run(9)
    assert [b for _, b in trained] == [3] * 9 + [9] * 3 + [27] + [9] * 5 + [27] + [27] * 3  # none twice
    assert len({r for r, _ in trained}) == len(trained)
    trials = study.get_trials()
    assert [sum(t.user_attrs[BRACKET] == b for t in trials) for b in range(3)] == [9, 5, 3]
    assert sum(t.user_attrs["epochs_trained"] for t in trials) == 9 * 3 + 3 * 9 + 27 + 5 * 9 + 27 + 3 * 27  # 234
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs[BRACKET] for t in complete) == [0, 1, 2, 2, 2]  # one per halving, all of the last
    assert all(max(t.intermediate_values) == 27 for t in complete)
    assert all(min(t.intermediate_values) == 9 for t in trials if t.user_attrs[BRACKET] == 1)
    assert run(9) and len(trained) == 9 + 3 + 1 + 5 + 1 + 3  # every bracket done: nothing more


def test_the_sweep_id_holds_the_rungs_and_an_older_sweep_keeps_its_id():
    from dataclasses import replace

    cfg = SweepConfig(method="bkd", dataset="digits", imbalance=10.0, space_file="x.yaml", space_hash="abc")
    halved = replace(cfg, scheduler="sh", rungs=(8, 13, 40), eta=3)
    assert len({cfg.sweep_id, halved.sweep_id, replace(halved, rungs=(13, 40)).sweep_id,
                replace(halved, eta=2).sweep_id, replace(halved, brackets=2).sweep_id}) == 5
    assert cfg.sweep_id == replace(cfg, rungs=None, eta=None).sweep_id


def test_every_shipped_space_runs_under_auto():
    from bkdbench.orchestrate.sweeps.driver import SCHEDULERS

    for method in ("bkd", "ldam-drw", "kd", "dkd"):
        space, _ = load_space(method)
        chosen, _ = choose_scheduler("auto", make_spec("digits", 50, method, params=space.fixed), space)
        assert chosen in SCHEDULERS and chosen != "auto"


# --- end to end through Ray and Optuna, SIGKILLed mid-bracket and resumed -------------------------

@pytest.mark.slow
def test_sh_sweep_end_to_end_survives_a_sigkill(tmp_path):
    """`sweep bkd` (auto → sh) on digits, rungs of 1, 3 and 9 epochs, 6 configurations: SIGKILL the driver
    once a 3-epoch rung run has its record and the 9-epoch one has none, resume with an empty cache; no
    rung run that had finished is trained again (its record is untouched), the study holds 6 configurations
    (6 → 2 → 1), each rung's score at its budget, the best trained 1 + 3 + 9 epochs, the final runs are in
    the leaderboard once, and `sweep report` prints the rank agreement."""
    from bkdbench.leaderboard.store import read_rows
    from helpers.cli import cli_env, kill_group, run_cli, start_cli
    from helpers.processes import cleanup_ray_tmp, kill_pids, ray_processes, wait_for
    from helpers.ray_tmp import ray_tmpdir
    from helpers.sweeps import load_study, sweep_ids

    results = tmp_path / "results"
    args = ["sweep", "bkd", "--dataset", "digits", "--imbalance", "10", "--trials", "6", "--concurrency", "1",
            "--epochs", "9", "--min-epochs", "1", "--final-seeds", "1", "--seed", "0", "--results", str(results)]
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp, BKDBENCH_CACHE=tmp_path / "cache-killed")
    driver = start_cli(args, tmp_path / "killed.out", env=env)

    def records() -> dict[str, tuple[int, int]]:
        """run id → (epochs, modification time) of every rung record."""
        found = {}
        for path in results.glob("sweeps/*/rungs/*.json"):
            try:
                found[path.stem] = (json.loads(path.read_text())["epochs"], path.stat().st_mtime_ns)
            except (ValueError, OSError):
                pass  # being written
        return found

    try:
        wait_for(lambda: any(e == 3 for e, _ in records().values()), timeout=400, every=0.2,
                 what=lambda: f"a finished 3-epoch rung run:\n{(tmp_path / 'killed.out').read_text()}")
        kill_group(driver)
        driver.wait(timeout=30)
        kill_pids(ray_processes(ray_tmp, driver.pid))
        before = records()
        assert sorted(e for e, _ in before.values()).count(1) == 6 and 9 not in {e for e, _ in before.values()}
        log = (tmp_path / "killed.out").read_text()
        assert "scheduler sh: class-balanced weighting switches on at epoch 7 of 9" in " ".join(log.split())
        env["BKDBENCH_CACHE"] = str(tmp_path / "cache-resumed")
        resumed = run_cli([*args, "--resume"], env=env, timeout=600)
        assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:])
    finally:
        kill_group(driver)
        left = cleanup_ray_tmp(ray_tmp, driver.pid)
    assert not left, f"Ray processes left behind: {left}"

    after = records()
    assert all(after[run_id] == seen for run_id, seen in before.items())  # no finished rung run trained again
    assert sorted(e for e, _ in after.values()) == [1] * 6 + [3] * 2 + [9]
    [sweep_id] = sweep_ids(results)
    study = load_study(results, sweep_id)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] + ["PRUNED"] * 5, states
    best = next(t for t in study.trials if t.state.name == "COMPLETE")
    assert sorted(best.intermediate_values) == [1, 3, 9] and best.user_attrs["epochs_trained"] == 13
    assert best.value == best.intermediate_values[9]
    space, _ = load_space("bkd")
    for t in study.trials:  # the sampler's proposals, inside bkd.yaml
        assert 0.1 <= t.params["alpha"] <= 10.0 and 1.0 <= t.params["temperature"] <= 10.0
    record = json.loads((results / "sweeps" / sweep_id / "sweep.json").read_text())
    assert record["config"]["scheduler"] == "sh" and record["config"]["rungs"] == [1, 3, 9]
    rows, bad = read_rows(results / "leaderboard")
    finals = rows[rows.sweep_id == sweep_id]
    assert bad == [] and len(finals) == finals.run_id.nunique() == 1 and set(finals.status) == {"finished"}
    # search runs never reach the leaderboard (no test score): its rows are the teacher and the finals; the
    # full-budget rung run of the best configuration has the tuned seed-0 final's spec, so its id is there
    # as the final's tested row
    assert set(rows.run_id) == {*record["final_runs"]["tuned"], *record["final_runs"]["default"],
                                make_spec("digits", 10, "bkd", epochs=9).teacher.run_id}
    assert not set(rows.run_id) & {r for r, (e, _) in after.items() if e < 9}
    report = run_cli(["sweep", "report", sweep_id, "--results", str(results)], env=env, timeout=120)
    text = " ".join(report.stdout.split())
    assert report.returncode == 0 and "rank agreement, 1 → 3 epochs: Spearman" in text
    assert "successive halving saved" in text and (results / "sweeps" / sweep_id / "rungs.png").is_file()


@pytest.mark.slow
def test_hyperband_brackets_through_ray(tmp_path):
    """`sweep bkd --brackets 2` on digits, rungs of 1, 3 and 9 epochs, 3 configurations first: bracket 0
    3 → 1 → 1, bracket 1 (3·3/(2·3) = 1.5 → 2 from 3 epochs) 2 → 1; 8 rung runs, each trained once,
    30 epochs in all, the plan line naming both brackets."""
    from helpers.cli import run_cli
    from helpers.sweeps import load_study, sweep_ids

    results = tmp_path / "results"
    out = run_cli(["sweep", "bkd", "--dataset", "digits", "--imbalance", "10", "--trials", "3", "--epochs", "9",
                   "--scheduler", "sh", "--min-epochs", "1", "--brackets", "2", "--final-seeds", "1",
                   "--concurrency", "2", "--results", results], folder=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 brackets of 3 from 1 epochs, 2 from 3 epochs" in " ".join(out.stdout.split())
    (sweep_id,) = sweep_ids(results)
    epochs = sorted(json.loads(p.read_text())["epochs"] for p in (results / "sweeps" / sweep_id / "rungs").glob("*.json"))
    assert epochs == [1, 1, 1, 3, 3, 3, 9, 9]  # 3 + 1 + 1 rung runs, then 2 + 1
    trials = load_study(results, sweep_id).trials
    assert [t.user_attrs[BRACKET] for t in trials] == [0, 0, 0, 1, 1]
    assert sum(t.user_attrs["epochs_trained"] for t in trials) == 3 * 1 + 3 + 9 + 2 * 3 + 9
    assert [min(t.intermediate_values) for t in trials if t.user_attrs[BRACKET] == 1] == [3, 3]
    assert sorted(t.state.name for t in trials).count("COMPLETE") == 2  # one full-budget run per bracket


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "sh", "--workers-per-trial", "2"], "--scheduler sh trains one configuration per Ray trial"),
    (["--scheduler", "nope"], "unknown scheduler 'nope'; choose one of: auto, asha, sh, none"),
    (["--eta", "1"], "--eta"),
    (["--min-epochs", "0"], "--min-epochs"),
    (["--scheduler", "sh", "--brackets", "4"], "--brackets must be between 1 and the number of rungs (3), got 4"),
    (["--scheduler", "asha", "--brackets", "2"], "--brackets is for successive halving; this sweep's scheduler is asha"),
])
def test_bad_halving_options_exit_2_before_work(tmp_path, args, message):
    from typer.testing import CliRunner

    from helpers.cli import cli_app
    from helpers.files import nothing_written

    with nothing_written(tmp_path):
        result = CliRunner().invoke(cli_app("sweep"), ["sweep", "bkd", *args, "--results", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.usefixtures("one_thread")
def test_a_rung_trial_trains_validation_only_and_records_its_score(monkeypatch, tmp_path):
    """``rung_trial`` trains its rung run with the test split poisoned (never read), writes the run's
    record (its budget and validation score), and a restored trial whose runs have records trains
    nothing; a pack of two configurations writes one record each."""
    import bkdbench.training.train as train_mod
    from bkdbench.data import load_longtail
    from bkdbench.orchestrate.sweeps.study import METRIC
    from helpers.sweeps import watched_search

    w = watched_search(monkeypatch, train_mod, epochs=6)
    folder = tmp_path / "sweep"
    short = scaled_spec(w.base.model_copy(update={"params": {**w.base.params, "alpha": 2.5}}), 2)
    specs = {short.run_id: short.canonical_json()}
    halving.rung_trial({"group": [short.run_id], "_cpus": 1}, specs=specs, results=str(tmp_path), folder=str(folder))
    val_size = len(load_longtail("digits", 10).val_y)
    assert w.touched == [] and w.predicted == [val_size] * 2  # 2 epochs, validation only
    record = halving.read_record(folder, short.run_id)
    assert record["epochs"] == 2 and record["status"] == "finished" and 0 <= record[METRIC] <= 100
    assert w.reports[-1][METRIC] == record[METRIC]
    halving.rung_trial({"group": [short.run_id], "_cpus": 1}, specs=specs, results=str(tmp_path), folder=str(folder))
    assert w.predicted == [val_size] * 2 and halving.read_record(folder, short.run_id) == record  # not again

    pack = [scaled_spec(w.base.model_copy(update={"params": {**w.base.params, "alpha": a}}), 2) for a in (0.5, 4.0)]
    halving.rung_trial({"group": [s.run_id for s in pack], "_cpus": 1}, specs={s.run_id: s.canonical_json() for s in pack},
                       results=str(tmp_path), folder=str(folder))
    assert all(halving.read_record(folder, s.run_id)["epochs"] == 2 for s in pack)
