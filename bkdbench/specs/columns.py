"""The leaderboard columns that describe a run, computed from its ``RunSpec`` (the rest of a row is
its results and provenance: bkdbench/leaderboard/store.py has the schema)."""
from __future__ import annotations

import hashlib
import json

from bkdbench.specs.runspec import RunSpec


def spec_columns(spec: RunSpec) -> dict:
    """The leaderboard columns that describe a run (the rest are its results and provenance)."""
    from bkdbench.data import get_dataset
    from bkdbench.specs.recipes import get_recipe

    info = get_dataset(spec.dataset)
    recipe = {**get_recipe(spec.recipe).to_dict(), "epochs": spec.epochs}
    return {
        "resize": resize_of(info, spec), "recipe_name": spec.recipe,
        "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16],
        "many_threshold": info.many_threshold, "few_threshold": info.few_threshold,
        "run_id": spec.run_id, "dataset": spec.dataset, "data_key": spec.data_key, "imbalance_factor": spec.imbalance_factor,
        "profile": spec.profile, "data_seed": spec.data_seed, "model": spec.model, "method": spec.method,
        "params": _params_column(spec), "recipe": recipe,
        "epochs": spec.epochs, "seed": spec.seed, "split": spec.split, "pretrained": spec.pretrained,
        "teacher_run_id": ",".join(t.run_id for t in spec.all_teachers) or None,
        **_foundation_columns(spec),
        "plugins": ",".join(spec.plugins) if spec.plugins else None,
        "val_per_class": spec.val_per_class,
    }


def resize_of(info, spec: RunSpec) -> str:
    """How a run's images reach the model's input size, in words (a reproduction detail papers omit)."""
    if info.augmentation == "imagenet":
        return (f"store: short side bilinear antialiased (PIL) + centre crop; train: random-resized crop to "
                f"{info.image_size}, bilinear without antialias (batched); eval: resize + centre crop {info.image_size}")
    if spec.data_key is not None:
        return f"decode: bilinear antialiased to {spec.image_size}×{spec.image_size}" if spec.image_size else \
            "none: images as stored"
    return f"none: native {info.image_size}×{info.image_size}" if info.image_size else "none"


def _foundation_columns(spec: RunSpec) -> dict:
    """weights / seen_in1k / teacher: only for runs that have them, so other rows stay as they were."""
    from bkdbench.models.foundation import seen_in1k

    out = {}
    if spec.weights is not None:
        out.update(weights=spec.weights, seen_in1k=seen_in1k(spec.model, spec.weights))
    if spec.teacher is not None and spec.teacher.weights is not None:  # a foundation teacher: MODEL:METHOD
        out.update(teacher=f"{spec.teacher.model}:{spec.teacher.method}", seen_in1k=seen_in1k(spec.teacher.model, spec.teacher.weights))
    return out


def _params_column(spec: RunSpec) -> dict:
    # A class-subset teacher is a CE run on some classes: say which, so it never averages with full CE runs.
    subset = {"classes": ",".join(map(str, spec.train_classes))} if spec.train_classes else {}
    return {**spec.params, **subset}
