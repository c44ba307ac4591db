"""Options of the foundation models (docs/foundation.md): ``--weights``, ``--classnames``, ``--teacher``,
and the checks they need before any work (one line, exit 2)."""
from __future__ import annotations

from typing import Optional

import typer

WeightsOpt = typer.Option(None, "--weights", help="Foundation models' starting weights: pretrained (the model's named "
                          "tag, from the library's cache; the default), none (random) or FILE (a state dict of the "
                          "open_clip / timm model). The tag or the file's content key joins the run id.")
ClassNamesOpt = typer.Option(None, "--classnames", help="Class names for prompts and text-initialised heads: one per "
                             "line in label order, or iNat's categories.json (default: the dataset's own).")
TeacherOpt = typer.Option(None, "--teacher", help="A distillation student's teacher as MODEL:METHOD, e.g. "
                          "clip-vit-b16:lift (trained first, or reused by run id).")


class FoundationInputError(ValueError):
    """Bad --weights / --classnames / --teacher input."""


def parse_teacher(text: str) -> tuple[str, str]:
    """``MODEL:METHOD`` → (model, method); the method must train a classifier of its own."""
    from bkdbench.methods import MethodError, method_class, teacher_methods
    from bkdbench.models import model_names

    model, sep, method = (text or "").partition(":")
    if not sep or not model or not method or ":" in method:
        raise FoundationInputError(f"--teacher must be MODEL:METHOD, e.g. clip-vit-b16:lift (got {text!r})")
    if model not in model_names():
        raise FoundationInputError(f"--teacher {text}: unknown model {model!r}")
    try:
        cls = method_class(method)
    except MethodError as exc:
        raise FoundationInputError(f"--teacher {text}: {exc}") from None
    if not cls.trains or cls.needs_teacher or method not in teacher_methods():
        raise FoundationInputError(f"--teacher {text}: {method} trains no classifier of its own; "
                                   f"name one whose runs keep their weights: {', '.join(sorted(teacher_methods()))}")
    return model, method


def classnames_param(path) -> dict:
    """``--classnames FILE`` → the method parameter ``classnames: file:<key>``; the path goes to trials."""
    import os

    from bkdbench.data.classnames import read_names
    from bkdbench.paths import CLASSNAMES_ENV
    from bkdbench.storage import file_digest

    if path is None:
        return {}
    read_names(path)  # DataError on an unreadable or empty file
    os.environ[CLASSNAMES_ENV] = str(path.expanduser().resolve())
    return {"classnames": f"file:{file_digest(path.expanduser())[:16]}"}


def use_weights(weights: Optional[str]) -> None:
    """``--weights FILE``: its path is read by this process and forwarded to every trial."""
    import os
    from pathlib import Path

    from bkdbench.paths import WEIGHTS_ENV

    if weights not in (None, "pretrained", "none") and Path(weights).expanduser().is_file():
        os.environ[WEIGHTS_ENV] = str(Path(weights).expanduser().resolve())


def check_foundation_runs(specs, data_dir=None) -> None:
    """Before any work: named weights reachable (cache or hub), a weights file that fits its model,
    class names where a method needs them and of the right count. Raises ValueError (one line)."""
    from pathlib import Path

    from bkdbench.data import dataset_info
    from bkdbench.data.classnames import class_names
    from bkdbench.methods import method_class
    from bkdbench.models.foundation import check_available

    runs = {r.run_id: r for s in specs for r in (*s.prerequisites, s)}.values()
    for run in runs:
        if run.weights is None:
            continue
        check_available(run.model, run.weights)
        cls = method_class(run.method)
        if not getattr(cls, "foundation", False):
            continue
        info = dataset_info(run.dataset, data_dir, run.image_size)
        source = str(run.params.get("classnames", "dataset"))
        classes = [str(c) for c in range(info.num_classes)]  # the fixed datasets' own names are always there
        names = class_names(run.dataset, classes, info.num_classes, Path(data_dir) if data_dir else None, source)
        if names is None and cls.needs_names:
            raise FoundationInputError(f"{run.method} needs class names and {run.dataset} has none here: pass "
                                       "--classnames FILE (one name per line, in label order)")
        if run.weights.startswith("file:"):
            _check_file_fits(run, info)


def _check_file_fits(run, info) -> None:
    from bkdbench.models import create_model

    create_model(run.model, info.num_classes, info.channels, weights=run.weights)  # loads strictly, or WeightsError
