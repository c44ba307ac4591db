"""``bkdbench run`` and ``bkdbench suites``: a suite's runs as Ray Tune trials, with a live view."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import console, fail, note
from bkdbench.cli.devices import DevicePlan, GpusOpt, PendingLines, WaitOpt
from bkdbench.cli.outcome import exit_if_failed, failed_runs, name_failures, trained_line
from bkdbench.cli.live import LiveView
from bkdbench.cli.options import (CheckpointEveryOpt, check_data, PluginOpt, PretrainedOpt, SplitOpt, SplitsOpt, TrackingOpt, ValPerClassOpt, note_reference_split,
                                  parse_imbalances, parse_split, parse_tracking, start_tracking, use_plugins, use_pretrained,
                                  use_splits)

AUTO_PACK = 4  # students per trial by default (docs/performance.md: what packing saves, on CPU and for the demo)
SuiteOpt = typer.Option("digits-lt", "--suite", "-s", help="Suite name (see `bkdbench suites`) or a YAML file.")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("suites")(suites)


def suites(plugin: list[str] = PluginOpt):
    """List the shipped suites with their size (runs) and where they are meant to run."""
    use_plugins(plugin)  # a plugin may bring datasets and recipes the suites name
    from rich.table import Table

    from bkdbench.specs.suites import load_suite, suite_names

    table = Table(title="suites")
    for col in ("name", "runs", "runs on", "description"):
        table.add_column(col)
    for name in suite_names():
        s = load_suite(name, check_names=False)  # the shipped suites' names are checked by the tests
        table.add_row(name, str(s.size()), s.runs_on, s.description)
    console.print(table)


def run(
    suite: str = SuiteOpt,
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="Only these datasets (repeatable)."),
    imbalance: Optional[str] = typer.Option(None, "--imbalance", help="Only these imbalance factors, e.g. 10,50."),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m", help="Only these methods (repeatable)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Only the first N seeds."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the epoch budget (smoke runs)."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.01, help="CPUs per trial (fractions allowed); per worker with --workers-per-trial N > 1."),
    gpus_per_trial: str = GpusOpt,
    wait_for_resources: bool = WaitOpt,
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray cluster (or set RAY_ADDRESS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of this suite."),
    force: bool = typer.Option(False, "--force", help="Retrain runs that are already in the leaderboard."),
    max_failures: int = typer.Option(2, "--max-failures", min=0, help="Restarts of a failing trial from its checkpoint."),
    checkpoint_every: Optional[int] = CheckpointEveryOpt,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding the dataset files."),
    splits: Optional[Path] = SplitsOpt,
    pretrained: Optional[Path] = PretrainedOpt,
    results: Optional[str] = typer.Option(None, "--results", "--storage", help="Results/storage: leaderboard, teachers, experiment state (default $BKDBENCH_RESULTS or ./results): a folder or a s3://, gs:// URI; on a cluster, a path every node mounts or a URI."),
    tracking: Optional[str] = TrackingOpt,
    pack: Optional[int] = typer.Option(None, "--pack", min=1, help=f"Runs per Ray trial, trained as one pack: runs of one seed (and teacher) that differ only in method or loss parameters share batches and the teacher's forward; each keeps the row it gets alone. Default: students of one teacher (KD, BKD, DKD), up to {AUTO_PACK} a trial; K: every packable run; 1: none."),
    split: Optional[str] = SplitOpt,
    val_per_class: Optional[int] = ValPerClassOpt,
    select: str = typer.Option("last", "--select", help="Which epoch's weights each run keeps and reports: last "
                               "(default) or best-val (the best validation epoch, as Kang et al.)."),
    with_method: list[str] = typer.Option([], "--with-method", help="Also run this method (yours, from --plugin) on every "
                                          "dataset, imbalance factor and seed of the suite, teachers as usual (repeatable)."),
    plugin: list[str] = PluginOpt,
    workers_per_trial: Optional[int] = typer.Option(None, "--workers-per-trial", min=1, help="Data-parallel workers per trial (Ray Train's TorchTrainer, DDP; NCCL on GPUs, gloo on CPU): each trains its shard of every global batch. With N > 1, --cpus-per-trial and --gpus-per-trial are per worker and every trial trains one run (no --pack). Default: the suite's workers_per_trial (1). See docs/cluster.md."),
):
    """Run every run of a suite on Ray Tune (teachers first) into the leaderboard, then show it."""
    phases = Phases()
    from bkdbench.data import DataError
    from bkdbench.leaderboard.store import LeaderboardError, check_writable
    from bkdbench.paths import experiments_dir, leaderboard_dir, results_dir, teachers_dir
    from bkdbench.orchestrate.devices import DeviceRefused, parse_gpus
    from bkdbench.specs import SpecError
    from bkdbench.storage import mirror
    from bkdbench.specs.suites import SuiteError, load_suite

    if epochs is not None and epochs <= 0:
        fail(f"epochs must be > 0 (got {epochs})")
    try:
        asked_gpus = parse_gpus(gpus_per_trial)
    except ValueError as exc:
        fail(str(exc))
    use_plugins(plugin)
    tracker = parse_tracking(tracking)
    use_splits(splits)
    from bkdbench.cli.decoding import show_decoding_progress

    show_decoding_progress()  # a large benchmark's first load decodes its store: a bar with images/s
    try:
        s = load_suite(suite).with_methods(with_method)
        methods = [*method, *with_method] if method else None  # --method filters the suite's, not the added ones
        specs = s.expand(datasets=dataset, imbalance=parse_imbalances(imbalance), methods=methods, seeds=seeds,
                         epochs=epochs, data_dir=data_dir, split=parse_split(split), select=select,
                         val_per_class=val_per_class)
        if not specs:
            fail(_no_runs(s, dataset, parse_imbalances(imbalance), method))
        specs = use_pretrained(pretrained, specs, data_dir)
        from bkdbench.cli.foundation import check_foundation_runs

        check_foundation_runs(specs, data_dir)  # hub weights cached or reachable, class names where needed
        root = results_dir(results)
        for folder in (leaderboard_dir(root), teachers_dir(root), experiments_dir(root)):
            check_writable(folder)
        check_data(specs, data_dir)
        note_reference_split(specs, data_dir)
    except (SuiteError, SpecError, DataError, LeaderboardError, ValueError) as exc:
        fail(str(exc))

    start_tracking(tracker)
    from bkdbench.orchestrate import prepare_ray_env

    address = prepare_ray_env(address)  # before Ray is imported: it reads RAY_AUTH_MODE then
    from bkdbench.leaderboard.manifest import record_suite_runs
    from bkdbench.orchestrate.runner import Interrupted, plan_runs, run_plan
    from bkdbench.orchestrate.ray_session import ClusterRefused, ray_session

    plan = plan_runs(specs, root, force=force)
    students_only = pack is None  # the default: docs/performance.md (packing runs without a teacher gained nothing)
    pack = pack or AUTO_PACK
    members = [sp.run_id for sp in plan.specs]  # recorded once Ray accepted the storage (nothing written before)
    console.print(f"suite [bold]{s.name}[/]: {len(plan.specs)} runs, {len(plan.skipped)} already in the leaderboard "
                  f"(skipped{'' if not plan.skipped else '; --force retrains them'}), {plan.todo} to train"
                  + (f" in {len(plan.stages)} stages (teachers first)" if len(plan.stages) > 1 else ""))
    phases.end("planning")
    if plan.todo:
        log = mirror(experiments_dir(root) / s.name) / "ray.log"  # a log stays on this machine
        workers = workers_per_trial or s.workers_per_trial
        devices = DevicePlan(plan.specs, asked_gpus, workers, wait_for_resources)
        try:
            devices.check_local(address)
            with ray_session(address, log_file=log, storage=root, check=devices), PendingLines(devices, note):
                console.print(devices.line(plan.todo))  # where the runs train: "12 runs, 4 per GPU on 3 GPUs"
                phases.end("Ray start")
                record_suite_runs(root, s.name, members)
                with LiveView(plan.todo) as view:
                    outcome = run_plan(plan, root, name=s.name, tags={"suite": s.name}, cpus_per_trial=cpus_per_trial,
                                       gpus_per_trial=devices.gpus_per_trial, resume=resume, force=force,
                                       max_failures=max_failures, checkpoint_every=checkpoint_every,
                                       data_dir=data_dir, on_event=view.event, pack=pack, pack_students_only=students_only,
                                       workers=workers)
                phases.took(plan.seconds)
            phases.end("Ray stop")
        except Interrupted as exc:
            fail(f"interrupted: {exc}. Finished runs are saved; continue with "
                 f"`bkdbench run --suite {suite} --resume` (same filters)", code=130)
        except KeyboardInterrupt:
            fail(f"interrupted. Finished runs are saved; continue with `bkdbench run --suite {suite} --resume`", code=130)
        except (ClusterRefused, DeviceRefused) as exc:
            fail(str(exc))
        except OSError as exc:  # disk full or storage gone mid-run: rows already written stay readable
            fail(f"storage error during the run ({exc}); finished runs are in the leaderboard; "
                 f"free space or fix {root}, then `--resume`", code=1)
        failed, crashed = failed_runs(outcome)
        console.print(f"{trained_line(outcome, sum(plan.seconds.values()))} ({plan.trials} Ray trials); Ray log: {log}")
        name_failures(failed)
    else:
        failed, crashed = {}, []
        record_suite_runs(root, s.name, members)
    _show_leaderboard(root, s.name, s.published)
    phases.end("leaderboard")
    console.print(phases.line())
    _next_commands(s, specs, results)
    exit_if_failed(failed, crashed, max_failures, f"`bkdbench run --suite {suite} --resume`")


def _no_runs(suite, datasets, imbalances, methods) -> str:
    """Which filter named nothing the suite has, and what it has."""
    names = [m.method for m in suite.method_entries()]
    for flag, asked, has in (("--dataset", datasets, suite.datasets), ("--imbalance", imbalances, suite.imbalance),
                             ("--method", methods, names)):
        missing = [a for a in asked or () if a not in has]
        if missing:
            show = lambda values: ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)  # noqa: E731
            return (f"{flag} {show(missing)}: not in suite {suite.name} (it has {show(has)}); "
                    "choose from those or another suite")
    return f"the filters leave no runs of suite {suite.name}"


class Phases:
    """Where a command's wall time went: ``end(name)`` closes a phase at now, ``took`` adds phases
    timed elsewhere (the stages); ``line()`` is the one line printed at the end."""

    def __init__(self):
        self.start = self.mark = time.perf_counter()
        self.parts: list[tuple[str, float]] = []

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, now - self.mark))
        self.mark = now

    def took(self, stages: dict[str, float]) -> None:
        """The stages' own times, and what was left of the time since the last mark (Tune's set-up)."""
        now = time.perf_counter()
        self.parts += [("students" if name == "runs" else name, sec) for name, sec in stages.items()]
        self.parts.append(("Tune set-up", max(0.0, now - self.mark - sum(stages.values()))))
        self.mark = now

    def line(self) -> str:
        parts = " · ".join(f"{name} {sec:.1f} s" for name, sec in self.parts)
        return f"[dim]time: {parts} · total {time.perf_counter() - self.start:.1f} s[/]"


def _next_commands(suite, specs, results: Optional[str]) -> None:
    """Three commands that work as printed on what this suite just wrote: a sweep, a comparison, a plot."""
    methods = {sp.method for sp in specs}
    first = specs[0]
    where = f" --results {results}" if results else ""
    tuned = "bkd" if "bkd" in methods else first.method
    factor = max(sp.imbalance_factor for sp in specs if sp.dataset == first.dataset)
    pair = ("bkd", "ce") if {"bkd", "ce"} <= methods else (sorted(methods) + sorted(methods))[:2]
    lines = [f"bkdbench sweep {tuned} --dataset {first.dataset} --imbalance {factor:g} --trials 8{where}",
             f"bkdbench compare {pair[0]} {pair[1]} --dataset {first.dataset}{where}",
             f"bkdbench plot summary --suite {suite.name}{where} --out {suite.name}-summary.png"]
    console.print("next:\n" + "\n".join(f"  [bold]{line}[/]" for line in lines))


def _show_leaderboard(root, suite: str, published: Optional[str] = None) -> None:
    from bkdbench.leaderboard.aggregate import summarise
    from bkdbench.leaderboard.render import leaderboard_tables
    from bkdbench.leaderboard.store import read_rows
    from bkdbench.paths import leaderboard_dir

    from bkdbench.leaderboard.manifest import suite_run_ids

    rows, bad = read_rows(leaderboard_dir(root))
    if bad:
        note(f"skipped unreadable files: {', '.join(bad)}")
    rows = rows[rows["run_id"].isin(suite_run_ids(root, suite) or set()) | (rows["suite"] == suite)]
    if rows.empty:
        return
    for _, table in leaderboard_tables(summarise(rows, "top1"), "top1"):
        console.print(table)
    if published:  # the suite names the published table it targets
        from bkdbench.leaderboard.published_results import published_rows
        from bkdbench.leaderboard.render import versus_tables
        from bkdbench.leaderboard.versus import versus_published

        result = versus_published(rows, published_rows([published]), "top1")
        for table in versus_tables(result) if not result.empty else []:
            console.print(table)
