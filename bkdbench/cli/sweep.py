"""``bkdbench sweep METHOD ...`` and ``bkdbench sweep report SWEEP_ID``."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import console, fail, note
from bkdbench.cli.devices import DevicePlan, GpusOpt, PendingLines, WaitOpt
from bkdbench.cli.live import LiveView
from bkdbench.cli.outcome import exit_if_failed, failed_runs, name_failures
from bkdbench.cli.options import (ModelOpt, check_data, PluginOpt, PretrainedOpt, RecipeOpt, SplitOpt, SplitsOpt, ValPerClassOpt, note_reference_split, parse_split, parse_tracking,
                                  start_tracking, use_plugins, use_pretrained, use_splits)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


def sweep(
    method: str = typer.Argument(..., help="Method to tune (bkd, kd, ldam-drw, ...), or `report` to re-show a sweep."),
    sweep_id: Optional[str] = typer.Argument(None, help="With `report`: the sweep id to re-print and re-plot."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Dataset name."),
    imbalance: float = typer.Option(10.0, "--imbalance", help="Imbalance factor."),
    trials: int = typer.Option(16, "--trials", min=1, help="Search trials in the study (more extends a finished sweep)."),
    concurrency: int = typer.Option(2, "--concurrency", min=1, help="Ray trials at once (with --pack, packs at once)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe | gp | cmaes | random."),
    scheduler: str = typer.Option("auto", "--scheduler", help="auto | asha | sh | none. sh: successive halving over "
                                  "compressed schedules (the recipe at E/9, E/3, E epochs; the best 1/eta move up); "
                                  "asha: early stopping; auto: sh when the method switches a part on late (cb_start, "
                                  "DRW), else asha (none with --pack above 1). The plan line says which and why."),
    eta: int = typer.Option(3, "--eta", min=2, help="Successive halving: budgets E·eta^-k, the best 1/eta of a rung move up."),
    rungs: int = typer.Option(3, "--rungs", min=1, help="Successive halving: number of budgets (3: E/9, E/3, E)."),
    brackets: int = typer.Option(1, "--brackets", min=1, help="Successive halving: Hyperband's first B brackets, "
                                 "each starting one rung higher with fewer configurations (--trials: the first's)."),
    min_epochs: Optional[int] = typer.Option(None, "--min-epochs", min=1, help="Successive halving: the shortest rung "
                                             "(default: 3, and enough for the recipe's two learning-rate drops to "
                                             "fall on different epochs: 8 for a step recipe)."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed and the search trials' training seed."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget (default: the recipe's)."),
    model: Optional[str] = ModelOpt,
    recipe: Optional[str] = RecipeOpt,
    final_seeds: int = typer.Option(3, "--final-seeds", min=1, help="Seeds of the final test runs of the best config."),
    space: Optional[Path] = typer.Option(None, "--space", help="Your own search-space YAML file."),
    optuna_storage: Optional[str] = typer.Option(None, "--optuna-storage", help="Optuna RDB URL (default: a journal file in the sweep folder)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted sweep (or extend a finished one)."),
    pack: int = typer.Option(1, "--pack", help="Configurations per Ray trial, trained as one pack (shared batches and teacher "
                             "forward), each its own Optuna trial. Packs run without early stopping: ASHA would stop "
                             "or keep all K on one number."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.01, help="CPUs per trial; per worker with --workers-per-trial N > 1."),
    gpus_per_trial: str = GpusOpt,
    wait_for_resources: bool = WaitOpt,
    workers_per_trial: int = typer.Option(1, "--workers-per-trial", min=1, help="Data-parallel workers per search trial and final run (Ray Train's TorchTrainer, DDP; NCCL on GPUs, gloo on CPU). ASHA and Optuna see rank 0's reports as a one-worker trial's. Not with --pack. See docs/cluster.md."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster (or set RAY_ADDRESS)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    splits: Optional[Path] = SplitsOpt,
    pretrained: Optional[Path] = PretrainedOpt,
    split: Optional[str] = SplitOpt,
    val_per_class: Optional[int] = ValPerClassOpt,
    results: Optional[str] = typer.Option(None, "--results", "--storage", help="Results/storage: leaderboard, teachers, experiment state (default $BKDBENCH_RESULTS or ./results): a folder or a s3://, gs:// URI; on a cluster, a path every node mounts or a URI."),
    tracking: Optional[str] = typer.Option(None, "--tracking", help="Mirror the teacher, the search trials (not packed "
                                           "ones) and the final test runs to mlflow[:URI] or wandb[:PROJECT]."),
    plugin: list[str] = PluginOpt,
):
    """Search a method's parameters with Optuna on Ray Tune (validation only), then test the best."""
    from bkdbench.orchestrate.devices import DeviceRefused, parse_gpus
    from bkdbench.paths import results_dir

    try:
        root = results_dir(results)
        asked_gpus = parse_gpus(gpus_per_trial)
    except ValueError as exc:
        fail(str(exc))
    if method == "report":
        if not sweep_id:
            fail("usage: bkdbench sweep report SWEEP_ID")
        return _report(root, sweep_id)
    if sweep_id:
        fail(f"unexpected argument {sweep_id!r}; only `bkdbench sweep report SWEEP_ID` takes one")

    from bkdbench.orchestrate import prepare_ray_env

    # before Ray is imported (it reads RAY_AUTH_MODE then): choosing the scheduler below imports Ray Tune
    address = prepare_ray_env(address)
    from bkdbench.data import DataError
    from bkdbench.leaderboard.store import LeaderboardError, check_writable
    from bkdbench.paths import leaderboard_dir, teachers_dir
    from bkdbench.specs.search_spaces import SpaceError, load_space
    from bkdbench.specs import SpecError, make_spec

    use_plugins(plugin)
    tracker = parse_tracking(tracking)
    use_splits(splits)
    if pack < 1:
        fail(f"--pack must be at least 1 (got {pack}); 1 trains one configuration per trial")
    if pack > 1 and workers_per_trial > 1:
        fail("--pack and --workers-per-trial exclude each other: a multi-worker trial trains one configuration")
    if pack > 1 and scheduler == "asha":
        fail("--scheduler asha cannot stop one configuration of a pack: use --pack 1 for early stopping, "
             "or --scheduler none or sh")
    if workers_per_trial > 1 and scheduler == "sh":
        fail("--scheduler sh trains one configuration per Ray trial: use --workers-per-trial 1, or --scheduler asha")
    try:
        if sampler not in ("tpe", "gp", "cmaes", "random"):
            raise ValueError(f"unknown sampler {sampler!r}; choose one of: tpe, gp, cmaes, random")
        if scheduler not in ("auto", "asha", "sh", "none"):
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of: auto, asha, sh, none")
        if space is None:  # a user's file may bring the method (its `plugins:`); the shipped ones cannot
            from bkdbench.methods import method_class

            method_class(method)  # an unknown name: its close matches and the methods there are
        space_def, space_file = load_space(method, str(space) if space else None)
        base = make_spec(dataset, imbalance, method, seed=seed, epochs=epochs, params=space_def.fixed, data_dir=data_dir,
                         split=parse_split(split) or "every-class", model=model, recipe=recipe,
                         val_per_class=val_per_class)
        # the dataset's own model and recipe stay out of the sweep id (as before the options existed)
        default = make_spec(dataset, imbalance, method, seed=seed, data_dir=data_dir) if model or recipe else base
        base = use_pretrained(pretrained, [base], data_dir)[0]
        for folder in (leaderboard_dir(root), teachers_dir(root), root / "sweeps"):
            check_writable(folder)
        check_data([base], data_dir)
        note_reference_split([base], data_dir)
        from bkdbench.data import dataset_info
        from bkdbench.data.splits import validation_count

        val_images = validation_count(dataset_info(base.dataset, data_dir, base.image_size), base.imbalance_factor,
                                      base.profile, base.data_seed, data_dir, base.split, base.val_per_class)
        from bkdbench.orchestrate.sweeps.halving import (bracket_plan, halving_epochs, min_rung_epochs, rung_budgets,
                                                          rung_caveats)
        from bkdbench.orchestrate.sweeps.driver import choose_scheduler

        asked = scheduler
        scheduler, why = choose_scheduler(scheduler, base, space_def, pack=pack, workers=workers_per_trial)
        budgets = rung_budgets(base.epochs, eta, rungs, min_epochs or min_rung_epochs(base.recipe))
        cost = halving_epochs(trials, budgets, eta)
        if asked == "auto" and scheduler == "sh" and brackets == 1 and cost >= trials * base.epochs:
            # a budget too short for the floor leaves rungs that cost more than they save (cpu-short: 8, 10)
            scheduler = "none" if pack > 1 else "asha"
            why += (f"; but halving over rungs of {', '.join(map(str, budgets))} epochs would train {cost} epochs, "
                    f"no fewer than {trials} full-budget trials ({trials * base.epochs}), so "
                    + ("every trial trains the full budget" if pack > 1 else "ASHA, whose first rung waits for the switch"))
        if brackets > 1:
            if scheduler != "sh":
                raise ValueError(f"--brackets is for successive halving; this sweep's scheduler is {scheduler}")
            bracket_plan(trials, budgets, eta, brackets)  # at most one bracket per rung
    except (SpaceError, SpecError, DataError, LeaderboardError, ValueError) as exc:
        fail(str(exc))

    start_tracking(tracker)
    from bkdbench.orchestrate.ray_session import ClusterRefused, ray_session
    from bkdbench.orchestrate.runner import Interrupted, plan_runs, run_plan
    from bkdbench.orchestrate.sweeps.driver import (SweepConfig, open_study, run_finals, run_search, save_sweep_record,
                                    space_hash, sweep_dir)
    from bkdbench.orchestrate.sweeps.report import best_trial
    from bkdbench.orchestrate.sweeps.study import journal_location
    from bkdbench.storage import mirror

    cfg = SweepConfig(method=method, dataset=dataset, imbalance=float(imbalance), space_file=str(space_file),
                      space_hash=space_hash(space_file), sampler=sampler, scheduler=scheduler, seed=seed,
                      epochs=base.epochs, data_seed=base.data_seed, split=base.split, data_key=base.data_key,
                      val_per_class=base.val_per_class,
                      pretrained=base.pretrained, plugins=",".join(base.plugins) if base.plugins else None,
                      model=base.model if base.model != default.model else None,
                      recipe=base.recipe if base.recipe != default.recipe else None,
                      **({"rungs": tuple(budgets), "eta": eta} if scheduler == "sh" else {}),
                      **({"brackets": brackets} if brackets > 1 else {}))
    folder = sweep_dir(root, cfg.sweep_id)
    devices = DevicePlan([base], asked_gpus, workers_per_trial, wait_for_resources)
    try:
        devices.check_local(address)  # before the study's journal is written
    except DeviceRefused as exc:
        fail(str(exc))
    # Only an existing study is opened here (opening a journal creates its folder): a new one is created
    # by run_search, once a joined cluster (--address) has been checked for the GPUs asked for.
    study = (open_study(cfg.sweep_id, folder, optuna_storage)
             if optuna_storage or journal_location(folder).exists() else None)
    if study is not None and study.get_trials(deepcopy=False) and not resume:
        fail(f"sweep {cfg.sweep_id} already exists ({len(study.trials)} trials in {folder}); "
             f"pass --resume to continue or extend it (--trials N sets the total)")
    console.print(f"sweep [bold]{cfg.sweep_id}[/]: {method} on {dataset}-LT IF{imbalance:g} ({base.model}, recipe "
                  f"{base.recipe}, {base.epochs} epochs), {trials} trials, "
                  f"{concurrency} at once, sampler {sampler}, scheduler {scheduler}, objective: balanced validation top-1 "
                  f"on {val_images} images (one score's standard error: up to {50 / math.sqrt(val_images):.1f} points)"
                  + (f"; packs of {pack} configurations per Ray trial" if pack > 1 else ""))
    console.print(f"scheduler {scheduler}: {why}"
                  + (f"; rungs of {', '.join(map(str, budgets))} epochs (the recipe compressed to each), the best "
                     f"1/{eta} of a rung by validation move up" if scheduler == "sh" else "")
                  + (f"; {brackets} brackets of " + ", ".join(f"{n} from {b[0]} epochs" for n, b in
                                                             bracket_plan(trials, budgets, eta, brackets))
                     if brackets > 1 else ""))
    if scheduler == "sh" and (caveats := rung_caveats(base, budgets)):
        console.print(f"note: a short rung trains another schedule than the full run and may rank configurations "
                      f"differently (this recipe's floor: {min_rung_epochs(base.recipe)} epochs): " + "; ".join(caveats))
    started = time.perf_counter()
    kwargs = dict(cpus_per_trial=cpus_per_trial, data_dir=data_dir, workers=workers_per_trial)
    try:
        with ray_session(address, log_file=mirror(folder) / "ray.log", storage=root, check=devices), \
                PendingLines(devices, note):
            console.print(devices.line(trials).replace(" run", " search trial", 1))
            kwargs["gpus_per_trial"] = devices.gpus_per_trial
            if base.all_teachers:
                plan = plan_runs(base.prerequisites, root)
                if plan.todo:
                    console.print(f"training the shared teacher(s) {', '.join(t.run_id for t in base.all_teachers)} once")
                    run_plan(plan, root, name=f"{cfg.sweep_id}-teacher", tags={}, **kwargs)

            with LiveView(_search_runs(trials, scheduler, budgets, eta, brackets)) as view:
                study = run_search(cfg, space_def, base, root, trials=trials, concurrency=concurrency,
                                   storage_url=optuna_storage, on_event=view.event, pack=pack, **kwargs)
            best = best_trial(study)
            if best is None:
                fail("no search trial completed; see the Ray log in " + str(mirror(folder)), code=1)
            best_params = {**space_def.fixed, **best.params}
            console.print(f"best trial #{best.number}: {', '.join(f'{k}={_fmt(v)}' for k, v in best_params.items())} "
                          f"(validation {best.value:.2f}%); "
                          f"re-running it and the defaults with {final_seeds} seeds on the test set")
            final_outcome: dict = {}
            finals = run_finals(base, best_params, root, cfg.sweep_id, final_seeds, outcome=final_outcome, **kwargs)
    except Interrupted as exc:
        fail(f"interrupted: {exc}. Continue with the same command plus --resume", code=130)
    except KeyboardInterrupt:
        fail("interrupted. Continue with the same command plus --resume", code=130)
    except (ClusterRefused, DeviceRefused) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"storage error during the sweep ({exc}); free space or fix {root}, then --resume", code=1)
    wall = time.perf_counter() - started
    save_sweep_record(root, cfg, {"trials": trials, "best_params": best_params, "best_trial": best.number,
                                  "best_val_top1": best.value, "final_runs": finals, "wall_seconds": wall,
                                  "optuna_storage": optuna_storage, "pack": pack, "val_images": val_images})
    console.print(f"sweep finished in {wall:.0f} s")
    _report(root, cfg.sweep_id, optuna_storage)
    failed, crashed = failed_runs(final_outcome)  # the search's own failures are trials (FAIL), not runs
    name_failures(failed)
    exit_if_failed(failed, crashed, 2, "the same command plus --resume")


def _report(root: Path, sweep_id: str, storage_url: Optional[str] = None) -> None:
    from rich.table import Table

    from bkdbench.leaderboard.store import read_rows
    from bkdbench.orchestrate.sweeps.driver import load_sweep_record, open_study, sweep_dir
    from bkdbench.orchestrate.sweeps.report import plot_sweep, trial_rows
    from bkdbench.paths import leaderboard_dir

    try:
        record = load_sweep_record(root, sweep_id)
    except ValueError as exc:
        fail(str(exc))
    study = open_study(sweep_id, sweep_dir(root, sweep_id), storage_url or record.get("optuna_storage"))
    rows = trial_rows(study)
    params = list(record["best_params"])
    table = Table(title=f"sweep {sweep_id}: top trials by balanced validation top-1")
    for col in ("#", *params, "val top1 %", "state"):
        table.add_column(col, justify="right")
    ranked = sorted(rows, key=lambda r: (r["val_top1"] is None, -(r["val_top1"] or 0)))
    for r in ranked[:10]:
        value = _fmt(r["val_top1"]) + (" *" if r["state"] == "PRUNED" and r["val_top1"] is not None else "")
        table.add_row(r["label"], *[_fmt(r.get(p)) for p in params], value, r["state"])
    table.caption = ("* a pruned trial's last validation value, " + ("at its last rung's budget" if
                     record["config"].get("scheduler") == "sh" else "at the epoch early stopping stopped it"))
    console.print(table)
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    console.print("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())))
    trained = [t.user_attrs.get("epochs_trained") for t in study.get_trials(deepcopy=False)]
    budget = record["config"].get("epochs")
    if budget and trained and all(e is not None for e in trained):
        full = budget * len(trained)
        saver = "successive halving" if record["config"].get("scheduler") == "sh" else "early stopping"
        console.print(f"epochs trained: {sum(trained)} of {full} for {len(trained)} full-length trials "
                      f"({saver} saved {full - sum(trained)}, {100 * (full - sum(trained)) / full:.0f}%)")
    from bkdbench.orchestrate.sweeps.report import noise_note, rank_agreement

    for pair in rank_agreement(study):
        rho = "–" if pair["spearman"] is None else f"{pair['spearman']:+.2f}"
        console.print(f"rank agreement, {pair['low']} → {pair['high']} epochs: Spearman {rho} over the "
                      f"{pair['n']} configurations that ran both (validation top-1)")

    if record.get("val_images"):  # sweeps from before it was recorded have none
        console.print(noise_note(study, record["val_images"]))

    board, _ = read_rows(leaderboard_dir(root))
    test = Table(title=f"test set (last epoch), best config vs defaults, {len(record['final_runs']['tuned'])} seeds")
    for col in ("configuration", "params", "test top1 %", "few %", "val top1 %", "seeds"):
        test.add_column(col)
    for label, key in (("tuned", "tuned"), ("default", "default")):
        sel = board[board.run_id.isin(record["final_runs"][key]) & (board.status == "finished")]
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in record["best_params"].items()) if key == "tuned" else "defaults"
        test.add_row(label, str(shown), _mean_std(sel.top1), _mean_std(sel.few), _mean_std(sel.val_top1), str(len(sel)))
    console.print(test)
    from bkdbench.storage import mirror

    for path in plot_sweep(study, mirror(sweep_dir(root, sweep_id))):  # PNGs stay on this machine
        console.print(f"wrote {path}")


def _search_runs(trials: int, scheduler: str, budgets: list[int], eta: int, brackets: int = 1) -> int:
    """Ray trials of the search: one per configuration, or with halving one per configuration and rung
    of each bracket."""
    if scheduler != "sh":
        return trials
    from bkdbench.orchestrate.sweeps.halving import rung_runs

    return sum(n for n, _ in rung_runs(trials, budgets, eta, brackets))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _mean_std(series) -> str:
    values = series.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
