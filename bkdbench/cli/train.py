"""``bkdbench train``: one run in this process (no Ray), its teacher or stage-1 model first."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bkdbench.cli.console import check_device as _check_device, console, fail, note
from bkdbench.cli.foundation import ClassNamesOpt, TeacherOpt, WeightsOpt
from bkdbench.cli.options import (DataDirOpt, ModelOpt, PluginOpt, PretrainedOpt, RecipeOpt, ResultsOpt, SplitOpt, SplitsOpt, ValPerClassOpt, TrackingOpt, method_params,
                                  note_reference_split, parse_split, parse_tracking, start_tracking, use_pretrained,
                                  use_plugins, use_splits)


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Dataset name (see `bkdbench data list`)."),
    imbalance: str = typer.Option("10", "--imbalance", help="Imbalance factor n_max / n_min (>= 1), or `natural` to keep an already long-tailed imagefolder as it is."),
    method: str = typer.Option("ce", "--method", "-m", help="Method name (ce, bkd, kd, ldam-drw, ...)."),
    seed: int = typer.Option(0, "--seed", help="Training seed (initialisation, batch order, augmentation)."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the long-tailed subsample."),
    profile: str = typer.Option("exp", "--profile", help="Long-tail profile: exp, step or natural (= --imbalance natural)."),
    model: Optional[str] = ModelOpt,
    recipe: Optional[str] = RecipeOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget (default: the recipe's)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Distillation weight α (kd, bkd)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Distillation temperature T."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Class-balanced β in [0, 1)."),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="Focal γ."),
    max_m: Optional[float] = typer.Option(None, "--max-m", help="LDAM's largest margin."),
    s: Optional[float] = typer.Option(None, "--s", help="LDAM's logit scale."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Logit-adjustment τ."),
    cb_start: Optional[float] = typer.Option(None, "--cb-start", help="When class weights switch on (<1: fraction of the budget, else epoch)."),
    param: list[str] = typer.Option([], "--param", "-p", help="Any method parameter as NAME=VALUE (repeatable), e.g. teachers=3, groups=0,1|2,3,4, queue=200."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when there is one, else the CPU, said once), cpu, cuda, cuda:1 ..."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast on CPU (always on with CUDA)."),
    compile: bool = typer.Option(False, "--compile", help="Train through torch.compile (pays off on long runs)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)."),
    force: bool = typer.Option(False, "--force", help="Train even if this run is already in the leaderboard."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=1, help="imagefolder: resize every image to N×N (needed when sizes differ)."),
    data_dir: Optional[Path] = DataDirOpt,
    splits: Optional[Path] = SplitsOpt,
    pretrained: Optional[Path] = PretrainedOpt,
    split: Optional[str] = SplitOpt,
    val_per_class: Optional[int] = ValPerClassOpt,
    select: str = typer.Option("last", "--select", help="Which epoch's weights the run keeps and reports: last "
                               "(default) or best-val (the best validation epoch, as Kang et al.; teachers too)."),
    results: Optional[str] = ResultsOpt,  # a str: Path would mangle a URI
    tracking: Optional[str] = TrackingOpt,
    weights: Optional[str] = WeightsOpt,
    classnames: Optional[Path] = ClassNamesOpt,
    teacher: Optional[str] = TeacherOpt,
    plugin: list[str] = PluginOpt,
):
    """Train one run (no Ray): its teacher first if it needs one, then the run; record both."""
    use_plugins(plugin)
    from bkdbench.data import DataError, dataset_info
    from bkdbench.leaderboard.store import LeaderboardError, check_writable, finished_run_ids, read_rows
    from bkdbench.paths import leaderboard_dir, results_dir, teachers_dir
    from bkdbench.specs import SpecError, make_spec

    from bkdbench.methods.params import parse_assignments

    tracker = parse_tracking(tracking)
    use_splits(splits)
    from bkdbench.cli.decoding import show_decoding_progress

    show_decoding_progress()  # a large benchmark's first load decodes its store: a bar with images/s
    params = method_params(alpha=alpha, temperature=temperature, beta=beta, gamma=gamma, max_m=max_m, s=s,
                           tau=tau, cb_start=cb_start)
    try:
        extra = parse_assignments(param)
    except ValueError as exc:
        fail(str(exc))
    if set(extra) & set(params):
        fail(f"--param sets {', '.join(sorted(set(extra) & set(params)))}, which has its own option too: use one")
    params.update(extra)
    if profile == "natural":  # the data's own imbalance, whatever --imbalance says (its default is 10)
        imbalance = "natural"
    try:
        spec = _make_train_spec(dataset, imbalance, method, dict(
            seed=seed, data_seed=data_seed, profile=profile, data_dir=data_dir, image_size=image_size,
            split=parse_split(split) or "every-class", select=select, val_per_class=val_per_class), model, recipe, epochs, params, weights, classnames,
            teacher)
        if pretrained is not None and any(r.weights for r in (*spec.prerequisites, spec)):
            raise ValueError("--pretrained is for the other models; a foundation model starts from --weights FILE")
        spec = use_pretrained(pretrained, [spec], data_dir)[0]
        from bkdbench.cli.foundation import check_foundation_runs

        check_foundation_runs([spec], data_dir)
        root = results_dir(results)
        for folder in (leaderboard_dir(root), teachers_dir(root)):
            check_writable(folder)
        # Missing or corrupt files fail here, before any training (an image folder is decoded and cached now).
        dataset_info(dataset, data_dir, image_size).load(data_dir)
        _check_device(device)
        device = None if device == "auto" else device
        note_reference_split([spec], data_dir)
    except (SpecError, DataError, LeaderboardError, ValueError) as exc:
        fail(str(exc))

    start_tracking(tracker)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from bkdbench.training.teachers import TeacherError, load_teacher
    from bkdbench.training.train import TrainingDiverged

    board = leaderboard_dir(root)
    if spec.run_id in finished_run_ids(board) and not force:
        rows, _ = read_rows(board)
        note(f"{spec.label()} is already in the leaderboard ({spec.run_id}); --force retrains it")
        _print_metrics(spec, rows[rows.run_id == spec.run_id].iloc[0].to_dict())
        return
    if device is None:  # auto: say once where it trains
        from bkdbench.training.train import default_device, device_name

        where = default_device()
        note(f"training on {device_name(where)}" + ("" if where.type == "cuda" else " (no CUDA GPU here)"))
    try:
        from bkdbench.methods import method_class

        role = "stage-1 model" if method_class(spec.method).stage1 else "teacher"
        for teacher in spec.prerequisites:  # a teacher's own teacher first (SSD-LT: stage I, then stage II)
            if load_teacher(teachers_dir(root), teacher) is None:
                console.print(f"training the {role} first: [bold]{teacher.label()}[/] ({teacher.run_id})")
                result = _run_with_progress(teacher, root, data_dir, device, bf16, compile, tracker)
                _print_metrics(teacher, result.to_row())
            else:
                console.print(f"reusing the cached {role} {teacher.run_id} ({teacher.label()})")
        result = _run_with_progress(spec, root, data_dir, device, bf16, compile, tracker)
    except (TeacherError, DataError) as exc:
        fail(str(exc))
    except TrainingDiverged as exc:
        fail(f"{exc}; recorded as failed", code=1)
    _print_metrics(spec, result.to_row())


def _make_train_spec(dataset, imbalance, method, common: dict, model, recipe, epochs, params, weights, classnames, teacher):
    """The run's spec; with ``--teacher MODEL:METHOD`` its teacher is that run (on its own recipe), and
    ``--weights`` / ``--classnames`` go to whichever of the two is a foundation run."""
    from bkdbench.cli.foundation import FoundationInputError, classnames_param, parse_teacher, use_weights
    from bkdbench.methods import method_class
    from bkdbench.models.foundation import is_foundation
    from bkdbench.specs import make_spec

    names = classnames_param(classnames)
    use_weights(weights)
    foundation_method = lambda m: getattr(method_class(m), "foundation", False)  # noqa: E731
    given = None
    if teacher is not None:
        t_model, t_method = parse_teacher(teacher)
        cls = method_class(method)
        if not cls.needs_teacher or cls.stage1:
            raise FoundationInputError(f"--teacher is for distillation students (kd, bkd, dive, dkd, ...), not {method}")
        # --epochs shortens the teacher too (a smoke run), as it does a default CE teacher; its recipe is its own
        given = make_spec(dataset, imbalance, t_method, model=t_model, epochs=epochs,
                          params=names if foundation_method(t_method) else {},
                          weights=weights if is_foundation(t_model) else None, **common)
    student_model = model or None
    if names and not foundation_method(method) and given is None:
        raise FoundationInputError(f"--classnames is for the foundation methods (zero-shot, linear-probe, full-ft, lift), not {method}")
    own_weights = weights if (student_model and is_foundation(student_model)) or given is None else None
    return make_spec(dataset, imbalance, method, model=model, recipe=recipe, epochs=epochs,
                     params={**params, **(names if foundation_method(method) else {})}, teacher=given,
                     weights=own_weights, **common)


def _run_with_progress(spec, root, data_dir, device, bf16, compile=False, tracking=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bkdbench.orchestrate.execute import run_and_record

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{spec.method} {spec.run_id[:8]}", total=spec.epochs, info="")

        def report(metrics: dict, _make_checkpoint) -> None:
            info = f"loss {metrics['train_loss']:.3f}"
            if "val_top1" in metrics:
                info += f"  val {metrics['val_top1']:.1f}%"
            progress.update(task, advance=1, info=info)

        return run_and_record(spec, root, report=report, data_dir=data_dir, device=device, bf16=bf16, compile=compile,
                              tracking=tracking)


def _print_metrics(spec, row: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{spec.label()}  [dim]{spec.run_id}[/]", caption="balanced test accuracy at the last epoch; %")
    table.add_column("metric")
    table.add_column("value", justify="right")
    shown = [("top1 (balanced)", "top1"), ("many-shot", "many"), ("medium-shot", "medium"), ("few-shot", "few"),
             ("val top1", "val_top1"), ("ECE", "ece"), ("NLL", "nll"),
             ("best-epoch top1 (paper protocol)", "top1_best_epoch")]
    for name, key in shown:
        value = row.get(key)
        table.add_row(name, "–" if value is None or value != value else f"{value:.2f}")
    if row.get("train_seconds"):
        table.add_row("train time", f"{row['train_seconds']:.1f} s ({row['images_per_second']:.0f} img/s)")
    console.print(table)
