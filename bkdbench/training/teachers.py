"""Teachers are runs too: a KD/BKD student names its teacher's RunSpec (by default a plain CE run of
the same model, long-tailed set, recipe and seed). Finished teachers are cached by run id as
``<cache>/<run_id>.pt`` (weights + metadata) and loaded with ``torch.load(weights_only=True)``.
The cache is a local folder or an object-store URI (``storage.Location``): files go as bytes."""
from __future__ import annotations

import io
import json
from typing import Callable, Optional

import torch

from bkdbench.specs import RunSpec
from bkdbench.storage import Location

Cache = "str | os.PathLike | Location"


class TeacherError(ValueError):
    """A teacher that does not fit its student, or a cached file that cannot be used."""


def check_teacher_fits(student: RunSpec, teacher: RunSpec) -> None:
    """The teacher must predict the student's classes and must have been trained on the student's own
    long-tailed set: another subsample (or another image folder) could contain the student's
    validation images."""
    for key in ("dataset", "data_key", "imbalance_factor", "profile", "data_seed", "split"):
        if getattr(student, key) != getattr(teacher, key):
            raise TeacherError(
                f"teacher {teacher.run_id} does not fit the student: {key} is {getattr(teacher, key)!r}, "
                f"the student's is {getattr(student, key)!r}"
            )


def teacher_path(cache: Cache, spec: RunSpec) -> Location:
    return Location(cache) / f"{spec.run_id}.pt"


def load_teacher(cache: Cache, spec: RunSpec, num_classes: Optional[int] = None) -> Optional[dict]:
    """The cached weights of ``spec``, or None when it has not been trained yet."""
    path = teacher_path(cache, spec)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        state, meta = blob["state_dict"], json.loads(blob["meta"])
    except Exception as exc:
        raise TeacherError(f"cached teacher {path} is unreadable ({type(exc).__name__}); delete it to retrain") from None
    if meta.get("run_id") != spec.run_id:
        raise TeacherError(f"cached teacher {path} belongs to run {meta.get('run_id')}, not {spec.run_id}")
    out = predicted_classes(state, spec.method)
    if num_classes is not None and out is not None and out != num_classes:
        raise TeacherError(f"cached teacher {path} predicts {out} classes; the student has {num_classes}")
    return state


def predicted_classes(state: dict, method: str) -> Optional[int]:
    """How many classes saved weights predict, from the classifier's shape: a linear layer's weight is
    (classes, features), plain (``fc.weight``) or scaled (LWS: ``fc.linear.weight``); a cosine one's
    is (features, classes), plain (LDAM: ``fc.weight``) or with a fixed scale (ce-cosine20:
    ``fc.cosine.weight``). None when the weights hold none of these."""
    from bkdbench.methods import method_class

    if "fc.cosine.weight" in state:
        return int(state["fc.cosine.weight"].shape[1])
    if "fc.linear.weight" in state:
        return int(state["fc.linear.weight"].shape[0])
    if "fc.weight" in state:
        cosine = method_class(method).head == "cosine"
        return int(state["fc.weight"].shape[1 if cosine else 0])
    return None


def save_teacher(cache: Cache, spec: RunSpec, state_dict: dict, metrics: dict) -> Location:
    path = teacher_path(cache, spec)
    meta = {"run_id": spec.run_id, "spec": json.loads(spec.canonical_json()),
            "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)}}
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, "meta": json.dumps(meta)}, buffer)
    path.write_bytes(buffer.getvalue())  # atomic: concurrent trials that need the same teacher never see half a file
    return path


def ensure_teacher(cache: Cache, spec: RunSpec, train_fn: Callable[[RunSpec], "object"]) -> tuple[dict, bool]:
    """(weights, trained_now): load the cached teacher, or train it with ``train_fn`` and cache it."""
    state = load_teacher(cache, spec)
    if state is not None:
        return state, False
    result = train_fn(spec)
    save_teacher(cache, spec, result.state_dict, result.metrics)
    return result.state_dict, True
