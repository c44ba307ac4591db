"""Successive halving over compressed schedules (``bkdbench sweep --scheduler sh``).

Why. BKD, LDAM-DRW and DRW switch their class-balanced part on at 80 % of the budget, beside the
learning-rate drops at 80 and 90 %, so early stopping (ASHA) cannot judge them before then and saves
almost nothing (REFERENCE.md §5, trap 8). The fidelity that fits them is a compressed schedule: the
whole recipe at fewer epochs (warm-up, learning-rate steps and ``cb_start`` are fractions of the
budget, ``recipes.Recipe``; a method's parameters placed in epochs, ``Method.epoch_params``, are
rescaled by ``scaled_spec``), so a short run is a small version of the real one.

Rungs. A bracket of n configurations, proposed by the sampler, trains at the smallest budget; the best
``n // eta`` (at least one) by validation top-1 train afresh at the next budget, and so on up to the full
one (``rung_budgets``, ``promote``). Every rung's run is a fresh run of its own spec (own run id); its
teacher is the full-budget one the sweep trained once. Search runs never evaluate the test split.

Optuna. One study, one Optuna trial per configuration: each rung's validation score is reported as the
trial's intermediate value at step = the rung's budget in epochs; a configuration that reaches the full
budget is COMPLETE with its full-budget score, one that is not promoted is PRUNED at its last rung. So
``best_trial`` only ever compares full-budget scores, and TPE ranks pruned trials below complete ones by
their last step and value (``optuna.samplers.TPESampler`` treats pruned trials so), which is what a rung
means. The cost: the sampler proposes a whole bracket before any score exists (a first bracket is
random search), and learns only from finished brackets (``--resume --trials N`` adds one).

Brackets (``--brackets B``, Hyperband, Li et al. 2018). Bracket b of B starts at the b-th rung with
``ceil(n · K/(K−b) · eta^−b)`` configurations (K rungs; n = ``--trials``, bracket 0's size) and halves
up to the full budget, so later brackets try fewer configurations at longer first budgets: a hedge for
methods the shortest rung ranks badly. One bracket (the default) is plain successive halving.

Resume. A rung run's result is written by the trial itself to ``<sweep>/rungs/<run id>.json`` (REFERENCE.md
§5, trap 5); the driver reads these records, not Tune's results, and trains only the rung runs without
one, so a resumed sweep never trains a configuration twice at one budget. A bracket's Optuna trials stay
RUNNING until their last rung (tagged with ``BRACKET``), and a resumed driver continues that bracket.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import optuna
from ray import tune

from ...methods import method_class, validate_params
from ...specs import RunSpec
from ...specs.recipes import get_recipe
from ...storage import Location, push
from .study import METRIC, counted_trials, enqueue_defaults, journal_location, make_sampler, study_storage
from .trial import search_spec
from ..trial import FINISHED

DEFAULT_ETA = 3
DEFAULT_RUNGS = 3
MIN_EPOCHS = 3  # no rung shorter than this, and never shorter than the recipe's shape allows (min_rung_epochs)
BRACKET = "sh_bracket"  # user attribute of each configuration's Optuna trial: its bracket's number
RECORDS = "rungs"  # the sweep folder's rung records, one JSON per rung run


def min_rung_epochs(recipe_name: str, floor: int = MIN_EPOCHS) -> int:
    """The shortest budget a rung may have: ``floor`` epochs, and for a step schedule enough that both
    learning-rate drops fall on different epochs inside the run (0 < m1 < m2 < b), so the compressed run
    has each phase of the real one (the reference recipe and ``small``: 8 epochs)."""
    recipe, budget = get_recipe(recipe_name), max(1, floor)
    while recipe.schedule == "step":
        _, m1, m2 = recipe.milestones(budget)
        if 0 < m1 < m2 < budget:
            break
        budget += 1
    return budget


def rung_budgets(epochs: int, eta: int = DEFAULT_ETA, rungs: int = DEFAULT_RUNGS, min_epochs: int = 1) -> list[int]:
    """The rungs' budgets in epochs, smallest first: round(E·eta^-k) for k = rungs-1 .. 0, raised to
    ``min_epochs`` (not above E); budgets that coincide after that are one rung. The last is E."""
    raw = [round(epochs / eta ** (rungs - 1 - k)) for k in range(rungs)]
    return sorted({min(epochs, max(min_epochs, b, 1)) for b in raw})


def keep_count(n: int, eta: int = DEFAULT_ETA) -> int:
    """How many of a rung's n configurations move up: the best n // eta, at least one."""
    return max(1, n // eta)


def promote(scores: dict[int, Optional[float]], eta: int = DEFAULT_ETA) -> list[int]:
    """The configurations (by Optuna trial number) that move up from a rung where they scored ``scores``
    (None: failed, never promoted): the best ``keep_count(len(scores))`` by validation top-1, ties to
    the earlier trial."""
    scored = sorted((n for n, v in scores.items() if v is not None), key=lambda n: (-scores[n], n))
    return sorted(scored[:keep_count(len(scores), eta)])


def bracket_plan(trials: int, budgets: list[int], eta: int = DEFAULT_ETA, brackets: int = 1) -> list[tuple[int, list[int]]]:
    """Hyperband's first ``brackets`` brackets as (configurations, budgets): bracket b starts at
    ``budgets[b]`` with ``ceil(trials · K/(K−b) · eta^−b)`` configurations (K = len(budgets); Li et al.
    2018, n_s = ceil((s_max+1)/(s+1) · eta^s) with s = K−1−b, scaled so that bracket 0 has ``trials``)."""
    k = len(budgets)
    if not 1 <= brackets <= k:
        raise ValueError(f"--brackets must be between 1 and the number of rungs ({k}), got {brackets}")
    return [(max(1, -(-trials * k // ((k - b) * eta ** b))), budgets[b:]) for b in range(brackets)]  # exact ceil


def rung_runs(trials: int, budgets: list[int], eta: int = DEFAULT_ETA, brackets: int = 1) -> list[tuple[int, int]]:
    """(configurations, budget) of every rung a halving search trains: each bracket's configurations at
    its first budget, the best ``1/eta`` of them at the next, and so on."""
    runs = []
    for n, rungs in bracket_plan(trials, budgets, eta, brackets):
        for budget in rungs:
            runs.append((n, budget))
            n = keep_count(n, eta)
    return runs


def halving_epochs(trials: int, budgets: list[int], eta: int = DEFAULT_ETA, brackets: int = 1) -> int:
    """Epochs a halving search trains (16 trials at 8, 13, 40: 16·8 + 5·13 + 1·40 = 233)."""
    return sum(n * budget for n, budget in rung_runs(trials, budgets, eta, brackets))


def scaled_spec(spec: RunSpec, budget: int) -> RunSpec:
    """``spec`` as the same recipe with ``budget`` epochs: the recipe's warm-up and learning-rate steps
    are fractions of the budget already; a method's epoch parameters (``Method.epoch_params``) given
    as absolute epochs (>= 1) become the same fraction of the full budget (one at or past its end stays
    past the compressed one). The teacher is unchanged: the full-budget one."""
    if budget == spec.epochs:
        return spec
    params = dict(spec.params)
    for name in method_class(spec.method).epoch_params:
        value = params.get(name)
        if value is not None and value >= 1:
            params[name] = value / spec.epochs if value < spec.epochs else float(budget)
    return spec.model_copy(update={"epochs": budget, "params": validate_params(spec.method, **params)})


def rung_caveats(spec: RunSpec, budgets: list[int]) -> list[str]:
    """What a rung shorter than the recipe's floor (``--min-epochs`` below ``min_rung_epochs``) leaves
    out of the full run's schedule: a learning-rate drop that shares an epoch with the other or falls
    past the end, and a class-balanced part (``cb_start``) that never switches on. Such a rung ranks
    configurations by a different run, which the plan line says before any work."""
    from ...methods.registry import resolve_cb_epoch

    recipe, notes = get_recipe(spec.recipe), []
    for budget in (b for b in budgets if b < spec.epochs):
        short, lost = scaled_spec(spec, budget), []
        if recipe.schedule == "step":
            _, m1, m2 = recipe.milestones(budget)
            if m1 >= budget:
                lost.append(f"neither learning-rate drop falls inside it (epochs {m1} and {m2})")
            elif m2 >= budget:
                lost.append(f"its second learning-rate drop falls past its end (epoch {m2})")
            elif not 0 < m1 < m2:
                lost.append(f"its learning-rate drops fall on epochs {m1} and {m2}")
        cb = short.params.get("cb_start")
        if method_class(spec.method).deferred_part(dict(spec.params), spec.epochs) and cb is not None \
                and resolve_cb_epoch(cb, budget) >= budget:
            lost.append(f"class-balanced weighting never switches on (cb_start {cb:g}: epoch "
                        f"{resolve_cb_epoch(cb, budget)})")
        if lost:
            notes.append(f"the {budget}-epoch rung: " + "; ".join(lost))
    return notes


# --- rung records -------------------------------------------------------------------------------

def record_location(folder: "Location | str", run_id: str) -> Location:
    return Location(folder) / RECORDS / f"{run_id}.json"


def read_record(folder: "Location | str", run_id: str) -> Optional[dict]:
    try:
        return json.loads(record_location(folder, run_id).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_record(folder: "Location | str", spec: RunSpec, value: Optional[float], status: str, seconds: float) -> None:
    record_location(folder, spec.run_id).write_text(json.dumps(
        {"run_id": spec.run_id, "epochs": spec.epochs, "params": spec.params, METRIC: value, "status": status,
         "train_seconds": seconds}, sort_keys=True))


def rung_trial(config: dict, *, specs: dict, results: str, folder: str, data_dir: Optional[str] = None,
               sweep_id: Optional[str] = None) -> None:
    """One Ray trial of a rung: its configurations (one, or a pack with ``--pack``) at the rung's
    budget, validation only; each result is written as a rung record before the trial reports."""
    import time

    import torch

    from ...training.packed import PackedTrainingDiverged, train_packed
    from ...training.train import TrainingDiverged, train
    from ..execute import teacher_state_for
    from ..tracking import RunTracker, Tracking, tensorboard_dir

    torch.set_num_threads(max(1, int(config.get("_cpus", 1))))
    todo = [RunSpec.model_validate_json(specs[r]) for r in config["group"] if read_record(folder, r) is None]
    values: dict[str, Optional[float]] = {}
    data = Path(data_dir) if data_dir else None
    try:
        teacher_state = teacher_state_for(todo[0], results) if todo else None
    except Exception as exc:  # its teacher failed or is missing: every configuration of the trial fails
        for spec in todo:
            write_record(folder, spec, None, f"error: {type(exc).__name__}: {exc}", 0.0)
        raise
    while len(todo) == 1:  # one configuration: a plain run, mirrored to the trackers with its budget
        spec, started = todo[0], time.perf_counter()
        tags = {"sweep_id": sweep_id, "sweep_role": "search", "sweep_budget": spec.epochs}
        tracker = RunTracker(spec, tags, Tracking.from_env(), tensorboard_dir(results, tags))
        try:
            result = train(spec, report=tracker.wrap(None), evaluate_test=False, teacher_state=teacher_state,
                           data_dir=data)
        except TrainingDiverged:
            tracker.finish(None, status="failed")
            write_record(folder, spec, None, "diverged", time.perf_counter() - started)
            values[spec.run_id] = None
            break
        except Exception as exc:  # e.g. its teacher failed: FAIL in the study, as an errored search trial is
            tracker.finish(None, status="failed")
            write_record(folder, spec, None, f"error: {type(exc).__name__}: {exc}", time.perf_counter() - started)
            raise
        tracker.finish({METRIC: result.metrics.get(METRIC), "train_seconds": result.train_seconds})
        values[spec.run_id] = result.metrics.get(METRIC)
        write_record(folder, spec, values[spec.run_id], "finished", result.train_seconds)
        todo = []
    while todo:  # a pack: shared batches and teacher forward; diverged students fail, the rest train again
        started = time.perf_counter()
        try:
            trained = train_packed(todo, teacher_state=teacher_state, evaluate_test=False, data_dir=data)
        except PackedTrainingDiverged as exc:
            for i in exc.students:
                write_record(folder, todo[i], None, "diverged", time.perf_counter() - started)
                values[todo[i].run_id] = None
            todo = [s for i, s in enumerate(todo) if i not in exc.students]
            continue
        except Exception as exc:
            for spec in todo:
                write_record(folder, spec, None, f"error: {type(exc).__name__}: {exc}", time.perf_counter() - started)
            raise
        for result in trained:
            values[result.spec.run_id] = result.metrics.get(METRIC)
            write_record(folder, result.spec, values[result.spec.run_id], "finished", result.train_seconds)
        todo = []
    scored = [v for v in values.values() if v is not None]
    tune.report({METRIC: max(scored) if scored else None, FINISHED: True, "status": "finished" if scored else "failed"})


# --- the driver's side --------------------------------------------------------------------------

def _open_bracket(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The configurations of the bracket still running (its trials RUNNING, tagged ``BRACKET``); other
    RUNNING trials (a driver killed before it tagged them) become FAIL, as ``mark_interrupted_trials`` does."""
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in running:
        if BRACKET not in t.user_attrs:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    open_brackets = {t.user_attrs[BRACKET] for t in running if BRACKET in t.user_attrs}
    if not open_brackets:
        return []
    bracket = min(open_brackets)
    return [t for t in trials if t.user_attrs.get(BRACKET) == bracket]


def run_halving(cfg, space, base: RunSpec, results, *, trials: int, concurrency: int, cpus_per_trial: float = 1.0,
                gpus_per_trial: float = 0.0, storage_url: Optional[str] = None, data_dir: Optional[Path] = None,
                on_event=None, pack: int = 1, budgets: list[int], eta: int = DEFAULT_ETA,
                brackets: int = 1) -> optuna.Study:
    """Run (or continue) successive halving over ``budgets``. One bracket (``brackets`` 1): the open
    bracket of an interrupted sweep, else a new one of the ``trials`` the study still lacks. Several:
    the brackets of ``bracket_plan`` not yet finished, in order. Returns the study."""
    from ..runner import set_listener

    folder = Location(results) / "sweeps" / cfg.sweep_id  # driver.sweep_dir (imported from there it is a circle)
    study = optuna.create_study(study_name=cfg.sweep_id, storage=study_storage(folder, storage_url),
                                direction="maximize", load_if_exists=True)
    study.sampler = make_sampler(cfg.sampler, cfg.seed, resumed=len(study.trials))  # new configurations
    enqueue_defaults(study, space.optuna_space(), base.params)  # a new study's first configuration
    plan = bracket_plan(trials, budgets, eta, brackets) if brackets > 1 else None
    set_listener(on_event)
    while True:
        members = _open_bracket(study)
        if not members:
            bracket = 1 + max((t.user_attrs.get(BRACKET, -1) for t in study.get_trials(deepcopy=False)), default=-1)
            size = (trials - counted_trials(study)) if plan is None else (plan[bracket][0] if bracket < len(plan) else 0)
            if size <= 0:
                return study
            distributions = space.optuna_space()
            for _ in range(size):  # the sampler proposes the bracket's first rung's configurations
                trial = study.ask(fixed_distributions=distributions)
                trial.set_user_attr(BRACKET, bracket)
            if not storage_url:
                push(journal_location(folder))
            members = _open_bracket(study)
        bracket = members[0].user_attrs[BRACKET]
        _run_bracket(cfg, study, members, base, results, folder, budgets if plan is None else plan[bracket][1], eta,
                     concurrency=concurrency, pack=pack, data_dir=data_dir, storage_url=storage_url,
                     resources={"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if plan is None:
            return study  # one bracket a call (`--resume --trials N` adds the next)


def _run_bracket(cfg, study: optuna.Study, members, base: RunSpec, results, folder: Location, budgets: list[int],
                 eta: int, *, concurrency: int, pack: int, data_dir, storage_url, resources: dict) -> None:
    """Halve one bracket's configurations over ``budgets``, telling the study after each rung."""
    from ..runner import Interrupted

    base_json = base.canonical_json()
    alive = sorted(t.number for t in members)
    params = {t.number: dict(t.params) for t in members}
    trained: dict[int, int] = {n: 0 for n in alive}
    for k, budget in enumerate(budgets):
        specs = {n: scaled_spec(search_spec(base_json, params[n]), budget) for n in alive}
        _train_rung(cfg, specs, results, folder, budget, concurrency=concurrency, pack=pack, data_dir=data_dir,
                    resources=resources)
        records = {n: read_record(folder, s.run_id) for n, s in specs.items()}
        if any(r is None for r in records.values()):
            raise Interrupted(f"{sum(r is None for r in records.values())} run(s) of the {budget}-epoch rung of "
                              f"{cfg.sweep_id} did not finish")
        scores = {n: r[METRIC] for n, r in records.items()}
        last = k == len(budgets) - 1
        keep = alive if last else promote(scores, eta)
        for n in alive:
            trained[n] += budget
            _tell(study, n, budget, scores[n], trained[n], done=last or n not in keep, complete=last)
        alive = keep
        if not storage_url:
            push(journal_location(folder))


def _tell(study: optuna.Study, number: int, budget: int, value: Optional[float], epochs: int, *, done: bool,
          complete: bool) -> None:
    """Report a configuration's score at ``budget`` (once), and end its trial when it moves no further
    (``done``): COMPLETE at the full budget (``complete``), PRUNED below it, FAIL without a score."""
    frozen = study.get_trials(deepcopy=False)[number]
    if frozen.state != optuna.trial.TrialState.RUNNING:
        return  # told by an earlier driver
    trial = optuna.trial.Trial(study, frozen._trial_id)
    if value is not None and budget not in frozen.intermediate_values:
        trial.report(value, budget)
    trial.set_user_attr("epochs_trained", epochs)
    trial.set_user_attr("budget", budget)
    if not done:
        return
    if value is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    elif complete:
        study.tell(number, value)
    else:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)


def _train_rung(cfg, specs: dict[int, RunSpec], results, folder: Location, budget: int, *, concurrency: int,
                pack: int, data_dir, resources: dict) -> None:
    """Train the rung runs that have no record yet, ``pack`` configurations per Ray trial."""
    from ..runner import _Events

    todo = list({s.run_id: s for s in specs.values() if read_record(folder, s.run_id) is None}.values())
    if not todo:
        return
    groups = [[s.run_id for s in todo[i:i + pack]] for i in range(0, len(todo), max(1, pack))]
    callbacks = [_Events()]  # the study is told by the driver after the rung (run_halving), not during it
    trainable = tune.with_resources(
        tune.with_parameters(rung_trial, specs={s.run_id: s.canonical_json() for s in todo}, results=str(Location(results)),
                             folder=str(folder), data_dir=str(data_dir) if data_dir else None, sweep_id=cfg.sweep_id),
        resources)
    attempt = sum(name.startswith(f"rung-{budget}-") for name in folder.list()) + 1
    tune_path, tune_fs = folder.tune_storage()
    tuner = tune.Tuner(
        trainable,
        param_space={"group": tune.grid_search(groups), "_cpus": resources["cpu"], "_gpus": resources["gpu"]},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=f"rung-{budget}-{attempt}", storage_path=tune_path, storage_filesystem=tune_fs,
                                  verbose=0, callbacks=callbacks),
    )
    tuner.fit()
