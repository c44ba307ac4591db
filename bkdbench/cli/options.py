"""Options and value parsers that several commands share (same names everywhere, as STYLE asks)."""
from __future__ import annotations

from typing import Optional

import typer

from bkdbench.cli.console import fail

ResultsOpt = typer.Option(None, "--results", "--storage", help="Results folder or s3://, gs:// URI (default $BKDBENCH_RESULTS or ./results).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the dataset files.")
SplitOpt = typer.Option(None, "--split", help="How validation is drawn: every-class (default: V images in every class; "
                        "a class short of unused images, CIFAR's head, gives the last of its kept ones) or reference "
                        "(the reference training set exactly; classes without unused images have no validation).")
ValPerClassOpt = typer.Option(None, "--val-per-class", help="Validation images per class, where they come from the "
                              "training images (default: the dataset's own, 20 on CIFAR, 10 on digits). More images "
                              "measure a configuration more finely (a sweep's report gives the noise); a class short of "
                              "unused images gives its kept ones, as --split says. Part of each run's identity.")
TrackingOpt = typer.Option(None, "--tracking", help="Mirror every run to mlflow[:URI] (default URI: $MLFLOW_TRACKING_URI, "
                           "else sqlite:///mlflow.db) or wandb[:PROJECT]. TensorBoard files are always written, under "
                           "<results>/experiments/tensorboard.")

SplitsOpt = typer.Option(None, "--splits", help="Folder with the split lists of imagenet-lt, places-lt, inat18 "
                         "(default: DATA_DIR/splits, then DATA_DIR); on a cluster, a path every node sees.")
PretrainedOpt = typer.Option(None, "--pretrained", help="Start every run (and its teachers) from this state dict, e.g. "
                             "ImageNet weights for Places-LT; its classifier is kept only if its shape fits. Its content "
                             "key joins the run id. On a cluster, a path every node sees.")
ModelOpt = typer.Option(None, "--model", help="Model name (default: the dataset's).")
RecipeOpt = typer.Option(None, "--recipe", help="Recipe name (default: the dataset's): epochs, batch, learning-rate "
                         "schedule; --epochs scales it.")
PluginOpt = typer.Option([], "--plugin", help="Your own method, model, dataset or recipe: a .py file, a package folder or "
                         "a module name (repeatable; also $BKDBENCH_PLUGINS and installed `bkdbench.plugins` entry "
                         "points). See docs/plugins.md.")


def use_plugins(specs=(), *, base=None) -> list:
    """Import the user's plugins (entry points, $BKDBENCH_PLUGINS, then ``specs``) before any name is
    looked up; a bad one is one line and exit 2. Ray trials get them through ``ray_session``."""
    from bkdbench.plugins import PluginError, load_all, load_everything

    try:
        return load_everything(specs) if base is None else load_all(specs, base=base)
    except PluginError as exc:
        fail(str(exc))


def use_splits(path) -> None:
    """``--splits DIR``: checked now, then read by this process and forwarded to every trial."""
    import os
    from pathlib import Path

    from bkdbench.paths import SPLITS_ENV

    if path is None:
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        fail(f"--splits {path} is not a folder")
    os.environ[SPLITS_ENV] = str(folder.resolve())


def use_pretrained(path, specs, data_dir=None) -> list:
    """``--pretrained FILE``: every spec (and its teachers) starts from the file's weights. Checked
    against each spec's model before any work (one line and exit 2 when it does not fit); the path
    is then forwarded to every trial."""
    import os
    from pathlib import Path

    from bkdbench.cli.console import note
    from bkdbench.data import dataset_info
    from bkdbench.methods import method_class
    from bkdbench.models.pretrained import PretrainedError, check_fits, file_key
    from bkdbench.paths import PRETRAINED_ENV
    from bkdbench.specs import with_pretrained

    if path is None:
        return list(specs)
    try:
        key = file_key(path)
        fresh = set()
        runs = {r.run_id: r for s in specs for r in (*s.prerequisites, s)}.values()
        for shape in sorted({(r.dataset, r.image_size, r.model, method_class(r.method).head,
                              len(r.train_classes) if r.train_classes else None) for r in runs}, key=str):
            dataset, image_size, model, head, subset = shape
            info = dataset_info(dataset, data_dir, image_size)
            fresh.update(check_fits(path, model, subset or info.num_classes, info.channels, head))
    except PretrainedError as exc:
        fail(str(exc))
    os.environ[PRETRAINED_ENV] = str(Path(path).expanduser().resolve())
    if fresh:
        note(f"--pretrained {path} (key {key}): {', '.join(sorted(fresh))} keep their initialisation "
             "(the file's classifier has another shape)")
    return [with_pretrained(s, key) for s in specs]


def parse_split(text: Optional[str]) -> Optional[str]:
    """The validated ``--split`` value (None when not given: the default, or a suite's own)."""
    from bkdbench.data.splits import SPLITS

    if text is not None and text not in SPLITS:
        fail(f"--split takes one of: {', '.join(SPLITS)} (got {text!r})")
    return text


def check_data(specs, data_dir=None) -> None:
    """Load each (dataset, image size) the runs use, so missing or corrupt data fails now (DataError),
    not inside a trial; at the runs' size, since a large benchmark's store is decoded per size."""
    from bkdbench.data import dataset_info

    for name, size in sorted({(sp.dataset, sp.image_size) for sp in specs}, key=str):
        dataset_info(name, data_dir, size).load(data_dir)


def note_reference_split(specs, data_dir=None) -> None:
    """Once: which classes a ``reference`` split leaves without validation images (CIFAR's head)."""
    from bkdbench.cli.console import note
    from bkdbench.data import dataset_info
    from bkdbench.data.splits import REFERENCE, classes_without_validation

    cells = sorted({(s.dataset, s.imbalance_factor, s.profile, s.image_size) for s in specs if s.split == REFERENCE},
                   key=str)
    missing = []
    for dataset, factor, profile, image_size in cells:
        info = dataset_info(dataset, data_dir, image_size)
        classes = classes_without_validation(info, factor, profile, data_dir)
        if classes:
            missing.append(f"{dataset}-LT IF{factor:g} ({len(classes)} of {info.num_classes or '?'} classes: "
                           f"{','.join(map(str, classes[:10]))}{',...' if len(classes) > 10 else ''})")
    if missing:
        note("--split reference: validation covers only the classes with unused training images; no validation "
             "images for " + "; ".join(missing))


def method_params(**values) -> dict:
    """The method parameters the user set on the command line (unset ones keep their defaults)."""
    return {k: v for k, v in values.items() if v is not None}


def parse_imbalances(text: Optional[str]) -> Optional[list]:
    if not text:
        return None
    try:
        return [x.strip().lower() if x.strip().lower() == "natural" else float(x) for x in text.split(",")]
    except ValueError:
        fail(f"--imbalance takes numbers (or natural) separated by commas (got {text!r})")


def parse_tracking(text: Optional[str]):
    """The validated ``--tracking`` choice (None without one); a bad value or a missing extra fails here."""
    from bkdbench.orchestrate.tracking import TrackingError, parse_tracking as parse

    try:
        return parse(text)
    except TrackingError as exc:
        fail(str(exc))


def start_tracking(tracking) -> None:
    """Once every other check has passed: reach the tracker and hand the choice to Ray trials."""
    import os

    from bkdbench.cli.console import note
    from bkdbench.orchestrate.tracking import ENV, TrackingError, prepare

    if tracking is None:
        return
    try:
        prepare(tracking)
    except TrackingError as exc:
        fail(str(exc))
    os.environ[ENV] = tracking.encode()
    note(f"mirroring every run to {tracking.describe()}")


CheckpointEveryOpt = typer.Option(None, "--checkpoint-every", min=1,
                                  help="Checkpoint every N epochs (default: every ~30 s of training).")
