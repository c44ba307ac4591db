"""RunSpec: the single description of one training run, and its stable id.

Only pydantic at import time; ``make_spec`` consults the core registries lazily to fill defaults, so
a spec always carries every value that shapes the run (resolved method parameters, recipe, epochs)
and two specs that train the same thing have the same ``run_id``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

ParamValue = Union[bool, int, float, str]


class SpecError(ValueError):
    """A run that cannot be described: unknown names or out-of-range values."""


class RunSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    imbalance_factor: float = Field(ge=1)
    profile: str = "exp"
    data_seed: int = 0
    model: str
    method: str = "ce"
    params: dict[str, ParamValue] = Field(default_factory=dict)
    recipe: str
    epochs: int = Field(gt=0)
    seed: int = 0
    teacher: Optional["RunSpec"] = None

    @field_validator("params")
    @classmethod
    def _sorted(cls, v: dict) -> dict:
        return dict(sorted(v.items()))

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def label(self) -> str:
        return f"{self.method} on {self.dataset}-LT IF{self.imbalance_factor:g} seed {self.seed}"


def make_spec(
    dataset: str,
    imbalance_factor: float,
    method: str = "ce",
    *,
    seed: int = 0,
    data_seed: int = 0,
    profile: str = "exp",
    model: Optional[str] = None,
    recipe: Optional[str] = None,
    epochs: Optional[int] = None,
    params: Optional[dict[str, Any]] = None,
    teacher: Optional[RunSpec] = None,
) -> RunSpec:
    """Resolve every default (dataset → model/recipe, recipe → epochs, method → parameters) and
    validate names and ranges. A distilling method gets its teacher: a CE run of the same model,
    data, recipe, epochs and seed, unless ``teacher`` is given. Raises SpecError with one clear line."""
    from .data import DataError, get_dataset
    from .data.longtail import PROFILES
    from .methods import MethodError, build, validate_params
    from .models import ModelError, model_names
    from .recipes import RecipeError, get_recipe

    try:
        info = get_dataset(dataset)
        model = model or info.default_model
        if model not in model_names():
            raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(model_names())}")
        rec = get_recipe(recipe or info.default_recipe)
        merged = {**info.method_defaults.get(method, {}), **(params or {})}
        resolved = validate_params(method, **merged)
        needs_teacher = build(method, [1] * info.num_classes, epochs=epochs or rec.epochs, **resolved).needs_teacher
    except (DataError, MethodError, ModelError, RecipeError) as exc:
        raise SpecError(str(exc)) from None
    if not imbalance_factor >= 1:  # also catches NaN
        raise SpecError(f"imbalance factor must be >= 1 (got {imbalance_factor:g})")
    if epochs is not None and epochs <= 0:
        raise SpecError(f"epochs must be > 0 (got {epochs})")
    if profile not in PROFILES:
        raise SpecError(f"unknown long-tail profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    common = dict(
        dataset=dataset, imbalance_factor=float(imbalance_factor), profile=profile, data_seed=data_seed,
        model=model, recipe=rec.name, epochs=epochs or rec.epochs, seed=seed,
    )
    if needs_teacher and teacher is None:
        teacher = RunSpec(method="ce", params=validate_params("ce"), **common)
    elif not needs_teacher:
        teacher = None
    return RunSpec(method=method, params=resolved, teacher=teacher, **common)


def spec_columns(spec: RunSpec) -> dict:
    """The leaderboard columns that describe a run (the rest are its results and provenance)."""
    from .data import get_dataset
    from .recipes import get_recipe

    info = get_dataset(spec.dataset)
    return {
        "many_threshold": info.many_threshold, "few_threshold": info.few_threshold,
        "run_id": spec.run_id, "dataset": spec.dataset, "imbalance_factor": spec.imbalance_factor,
        "profile": spec.profile, "data_seed": spec.data_seed, "model": spec.model, "method": spec.method,
        "params": dict(spec.params), "recipe": {**get_recipe(spec.recipe).to_dict(), "epochs": spec.epochs},
        "epochs": spec.epochs, "seed": spec.seed, "teacher_run_id": spec.teacher.run_id if spec.teacher else None,
    }
