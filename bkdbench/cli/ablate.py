"""``bkdbench ablate``: factorial grids and component presets of one method, as one experiment."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import console, fail, note
from bkdbench.cli.devices import DevicePlan, GpusOpt, PendingLines, WaitOpt
from bkdbench.cli.foundation import TeacherOpt, WeightsOpt
from bkdbench.cli.live import LiveView
from bkdbench.cli.outcome import exit_if_failed, failed_runs, name_failures, trained_line
from bkdbench.cli.options import (CheckpointEveryOpt, check_data, ModelOpt, PluginOpt, PretrainedOpt, RecipeOpt, SplitOpt, SplitsOpt, ValPerClassOpt,
                                  TrackingOpt, note_reference_split, parse_imbalances, parse_split, parse_tracking,
                                  start_tracking, use_plugins, use_pretrained, use_splits)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)


def ablate(
    method: str = typer.Argument(..., help="Method to ablate (e.g. bkd)."),
    grid: Optional[list[str]] = typer.Option(None, "--grid", help="PARAM=v1,v2,... (repeatable): full factorial grid."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named set of variants, e.g. `components` for bkd."),
    dataset: list[str] = typer.Option(["digits"], "--dataset", "-d", help="Datasets (repeatable)."),
    imbalance: str = typer.Option("10,50", "--imbalance", help="Imbalance factors, e.g. 10,50,100."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds 0..N-1 per cell."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget (default: the recipe's)."),
    model: Optional[str] = ModelOpt,
    recipe: Optional[str] = RecipeOpt,
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.01, help="CPUs per trial; per worker with --workers-per-trial N > 1."),
    gpus_per_trial: str = GpusOpt,
    wait_for_resources: bool = WaitOpt,
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster (or set RAY_ADDRESS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted ablation."),
    max_failures: int = typer.Option(2, "--max-failures", min=0),
    checkpoint_every: Optional[int] = CheckpointEveryOpt,
    pack: int = typer.Option(1, "--pack", help="Train up to K runs that differ only in method parameters in one trial "
                             "(one batch stream and teacher forward for all); each keeps its own row. A packed trial "
                             "checkpoints the whole pack."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    splits: Optional[Path] = SplitsOpt,
    pretrained: Optional[Path] = PretrainedOpt,
    split: Optional[str] = SplitOpt,
    val_per_class: Optional[int] = ValPerClassOpt,
    results: Optional[str] = typer.Option(None, "--results", "--storage", help="Results/storage: leaderboard, teachers, experiment state (default $BKDBENCH_RESULTS or ./results): a folder or a s3://, gs:// URI; on a cluster, a path every node mounts or a URI."),
    tracking: Optional[str] = TrackingOpt,
    teacher: Optional[str] = TeacherOpt,
    weights: Optional[str] = WeightsOpt,
    plugin: list[str] = PluginOpt,
    workers_per_trial: int = typer.Option(1, "--workers-per-trial", min=1, help="Data-parallel workers per trial (Ray Train's TorchTrainer, DDP): each trains its shard of every global batch. With N > 1, --cpus-per-trial and --gpus-per-trial are per worker and every trial trains one run (no --pack). See docs/cluster.md."),
):
    """Run every combination of the grid (× imbalance factors × seeds) and show marginal effects."""
    from bkdbench.data import DataError
    from bkdbench.leaderboard.store import LeaderboardError, check_writable
    from bkdbench.orchestrate.ablate import AblationError, ablation_id, ablation_specs, parse_grid, variants
    from bkdbench.paths import experiments_dir, leaderboard_dir, plots_dir, results_dir, teachers_dir
    from bkdbench.orchestrate.devices import DeviceRefused, parse_gpus
    from bkdbench.storage import mirror
    from bkdbench.specs import SpecError

    if pack < 1:
        fail(f"--pack must be at least 1 (got {pack}); 1 trains every run in its own trial")
    use_plugins(plugin)
    tracker = parse_tracking(tracking)
    use_splits(splits)
    try:
        asked_gpus = parse_gpus(gpus_per_trial)
        settings = variants(method, parse_grid(grid or []), preset)
        from bkdbench.cli.foundation import check_foundation_runs, parse_teacher, use_weights

        use_weights(weights)
        specs = ablation_specs(method, settings, dataset, parse_imbalances(imbalance) or [], seeds, epochs, model, recipe,
                               data_dir=data_dir, split=parse_split(split) or "every-class", val_per_class=val_per_class,
                               teacher=parse_teacher(teacher) if teacher else None, weights=weights)
        if teacher and not any(s.teacher for s in specs):
            raise ValueError(f"--teacher is for distillation students (kd, bkd, dive, dkd, ...), not {method}")
        specs = use_pretrained(pretrained, specs, data_dir)
        check_foundation_runs(specs, data_dir)
        root = results_dir(results)
        for folder in (leaderboard_dir(root), teachers_dir(root), experiments_dir(root)):
            check_writable(folder)
        check_data(specs, data_dir)  # imagefolder: decoded already
        note_reference_split(specs, data_dir)
    except (AblationError, SpecError, DataError, LeaderboardError, ValueError) as exc:
        fail(str(exc))
    if not specs:
        fail("the ablation has no runs (no imbalance factors?)")
    start_tracking(tracker)

    from bkdbench.orchestrate import prepare_ray_env

    address = prepare_ray_env(address)  # before Ray is imported: it reads RAY_AUTH_MODE then
    from bkdbench.orchestrate.ray_session import ClusterRefused, ray_session
    from bkdbench.orchestrate.runner import Interrupted, plan_runs, run_plan

    aid = ablation_id(method, specs)
    plan = plan_runs(specs, root)
    console.print(f"ablation [bold]{aid}[/]: {len(settings)} settings × {len(specs) // len(settings)} "
                  f"(datasets × IF × seeds) = {len(plan.specs)} runs, {len(plan.skipped)} already done, {plan.todo} to train"
                  + (" (teachers included)" if len(plan.stages) > 1 else ""))
    if pack > 1 and plan.todo:
        from bkdbench.orchestrate.packs import pack_units

        trials = sum(len(pack_units(stage, pack)) for stage in plan.stages)
        console.print(f"--pack {pack}: {plan.todo} run(s) in {trials} trial(s)")
    started, failed, crashed = time.perf_counter(), {}, []
    if plan.todo:
        try:
            devices = DevicePlan(plan.specs, asked_gpus, workers_per_trial, wait_for_resources)
            devices.check_local(address)
            with ray_session(address, log_file=mirror(experiments_dir(root) / aid) / "ray.log", storage=root,
                             check=devices), PendingLines(devices, note):
                console.print(devices.line(plan.todo))
                with LiveView(plan.todo) as view:
                    outcome = run_plan(plan, root, name=aid, tags={"ablation_id": aid}, cpus_per_trial=cpus_per_trial,
                                       gpus_per_trial=devices.gpus_per_trial, resume=resume, max_failures=max_failures,
                                       checkpoint_every=checkpoint_every, data_dir=data_dir, on_event=view.event,
                                       pack=pack, workers=workers_per_trial)
        except (Interrupted, KeyboardInterrupt):
            fail("interrupted; continue with the same command plus --resume", code=130)
        except (ClusterRefused, DeviceRefused) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"storage error during the ablation ({exc}); free space or fix {root}, then --resume", code=1)
        failed, crashed = failed_runs(outcome)
        console.print(trained_line(outcome, time.perf_counter() - started))
        name_failures(failed)
    _show(root, method, specs, settings, plots_dir(root) / f"{aid}-heatmap.png")
    exit_if_failed(failed, crashed, max_failures, "the same command plus --resume")


def _show(root: Path, method: str, specs, settings: list[dict], heatmap: Path) -> None:
    from rich.table import Table

    from bkdbench.leaderboard.ablation import marginal_effects, plot_heatmaps
    from bkdbench.leaderboard.aggregate import summarise
    from bkdbench.leaderboard.render import leaderboard_tables
    from bkdbench.leaderboard.store import read_rows
    from bkdbench.paths import leaderboard_dir

    rows, bad = read_rows(leaderboard_dir(root))
    if bad:
        note(f"skipped unreadable files: {', '.join(bad)}")
    ids = {s.run_id for s in specs}
    rows = rows[rows.run_id.isin(ids)]
    if rows.empty:
        return
    # Setup columns are identical across an ablation; show the variants by their parameters.
    for _, table in leaderboard_tables(summarise(rows.assign(ablation_id="ablation"), "top1"), "top1"):
        console.print(table)
    factors = sorted({k for s in settings for k in s})
    if len(settings) > 1 and factors:
        effects = marginal_effects(rows, factors + ["imbalance_factor"] if "imbalance_factor" not in factors else factors)
        table = Table(title="marginal effects: balanced test top-1 % per level (all other factors and seeds pooled)")
        for col in ("factor", "level", "mean ± std", "runs"):
            table.add_column(col)
        for _, r in effects.iterrows():
            std = "–" if math.isnan(r["std"]) else f"{r['std']:.2f}"
            level = f"{r['level']:g}" if isinstance(r["level"], float) else str(r["level"])
            table.add_row(r["factor"], level, f"{r['mean']:.2f} ± {std}", str(r["n"]))
        console.print(table)
    numeric = [k for k in factors if all(isinstance(s.get(k), float) for s in settings)]
    if len(numeric) >= 2:
        console.print(f"wrote {plot_heatmaps(rows, numeric[0], numeric[1], heatmap)}")
