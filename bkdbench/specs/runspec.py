"""RunSpec: the single description of one training run, and its stable id.

Only pydantic at import time; ``make_spec`` consults the core registries lazily to fill defaults, so
a spec always carries every value that shapes the run (resolved method parameters, recipe, epochs)
and two specs that train the same thing have the same ``run_id``.

Data from a user's folder (``imagefolder``): ``data_key`` is the folder's content hash and
``image_size`` its resize setting, so two folders never share a run id. Both are None for the fixed
datasets and are then left out of the canonical JSON, which keeps those run ids what they were.
``imbalance_factor="natural"`` keeps a long-tailed folder as it is: the spec says profile "natural"
and the folder's own n_max / n_min (2 decimals), so the IF column stays a number.

``pretrained`` is the content key (SHA-256, 16 hex digits) of the weights a run starts from
(``--pretrained FILE``, models/pretrained.py; None: from scratch, left out of the canonical JSON);
``with_pretrained`` gives it to a run and every run it needs first.

``split`` says how validation is drawn (``bkdbench.data.splits``): ``"every-class"`` (default, V
images in every class, a class short of unused images giving the last of its kept ones) or
``"reference"`` (the reference training set, index-identical; validation only from unused images).
Teachers carry their student's split (make_spec builds them from the same values, and a teacher
that saw the student's validation images leaks). ``val_per_class`` (None: the dataset's own V) sets
how many validation images each class gets where they come from the training images; the dataset's
own V is stored as None, so it names the same run.

``PROTOCOL`` is part of every run id: it names the version of what a spec's fields mean and is
bumped whenever the same spec would now train differently, so that a result of the old procedure is
never taken for one of the new (the leaderboard skips finished run ids, and teachers are cached by
run id). Version 2: the short-budget warm-up actually ramps (per step), validation covers every
class by default, students draw their own seeds, the decoupled classifiers follow Kang et al.

Seeds (``init_seed``, ``order_seed``): a run that distils from, or starts from, other runs
(``all_teachers`` non-empty) is a "student"; its initial weights and its batch order /
augmentation stream come from seeds derived from (seed, role) with SHA-256, so that a student with
seed s neither starts from its teacher's initial weights nor replays its teacher's batches. Every
other run (CE, focal, re-weighting, Balanced Softmax, ...) uses ``seed`` itself, as before. Runs of
one role and seed share both seeds, so KD and BKD students of seed s still start alike and see the
same batches (paired comparisons; one packed trial). SSD-LT's stages II/III and the decoupled
stage-2 methods (cRT, LWS, τ-norm) count as students too: they start from a stage-1 model's
weights, and with the plain seed their loader would replay stage 1's batch order and augmentations
from epoch 0 (and a re-initialised classifier would be stage 1's initial one); deriving costs
nothing and keeps one rule for every run with a prerequisite. CBD's extra teachers are CE runs with
seeds s + 1000·k and stay plain runs (role "run").
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

ParamValue = Union[bool, int, float, str]


class SpecError(ValueError):
    """A run that cannot be described: unknown names or out-of-range values."""


class RunSpec(BaseModel):
    """One run. ``split`` and the derived seeds ``init_seed`` / ``order_seed`` are explained in the
    module docstring. In short: ``role`` is "student" exactly when ``all_teachers`` is non-empty, and
    that includes SSD-LT's stages II/III and the decoupled stage-2 methods (cRT, LWS, τ-norm), whose
    "teacher" is the stage-1 model they start from. Chosen so because with the plain seed such a run
    would replay its stage 1's batch order and augmentations from epoch 0 (the same loader seed) and
    re-initialise any new classifier exactly as stage 1's was; deriving leaves their behaviour
    otherwise alone and keeps one rule for every run with a prerequisite."""

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
    teachers: Optional[tuple["RunSpec", ...]] = None  # several teachers (CBD, class-subset KD); then teacher is None
    train_classes: Optional[tuple[int, ...]] = None  # train (and evaluate) on these classes only, relabelled 0..k-1
    data_key: Optional[str] = None  # content hash of an image folder (None: a fixed dataset)
    image_size: Optional[int] = Field(None, gt=0)  # an image folder resized to N×N (None: as it is)
    split: Literal["every-class", "reference"] = "every-class"  # how validation is drawn (module docstring)
    # Validation images per class where they come from the training images (--val-per-class); None: the
    # dataset's own V (left out of the canonical JSON, so earlier run ids stay)
    val_per_class: Optional[int] = Field(None, gt=0)
    pretrained: Optional[str] = Field(None, pattern=r"^[0-9a-f]{16}$")  # content key of the starting weights (models/pretrained.py)
    # Which epoch's weights the run keeps and reports: None = the last (default, left out of the canonical
    # JSON so earlier run ids stay), "best-val" = the best validation epoch (Kang et al.'s state_dict_best).
    select: Optional[Literal["best-val"]] = None
    # A foundation model's starting weights (models/foundation.py): the named tag, "none" or
    # "file:<content key>"; None for every other model (left out of the canonical JSON).
    weights: Optional[str] = Field(None, pattern=r"^(none|file:[0-9a-f]{16}|[A-Za-z0-9_.-]+)$")
    # "module@digest" of each plugin whose method, model, dataset or recipe this run uses (bkdbench.plugins);
    # None: built-in parts only, left out of the canonical JSON so those run ids stay what they were
    plugins: Optional[tuple[str, ...]] = None
    protocol: Literal[2] = 2  # PROTOCOL (module docstring): part of the run id, never set by hand

    @field_validator("params")
    @classmethod
    def _sorted(cls, v: dict) -> dict:
        return dict(sorted(v.items()))

    def canonical_json(self) -> str:
        return json.dumps(_without_unset(self.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def label(self) -> str:
        factor = f"natural IF{self.imbalance_factor:g}" if self.profile == "natural" else f"IF{self.imbalance_factor:g}"
        subset = f" classes {','.join(map(str, self.train_classes))}" if self.train_classes else ""
        return f"{self.method}{subset} on {self.dataset}-LT {factor} seed {self.seed}"

    @property
    def role(self) -> str:
        """``"student"`` when the run needs other runs first (teachers or a stage-1 model), else ``"run"``."""
        return "student" if self.all_teachers else "run"

    @property
    def init_seed(self) -> int:
        """torch's seed for the initial weights (module docstring): ``seed`` for a plain run."""
        return _derived_seed(self.seed, self.role, "init")

    @property
    def order_seed(self) -> int:
        """The loader's seed (batch order, crops, flips, sampler): ``seed`` for a plain run."""
        return _derived_seed(self.seed, self.role, "order")

    @property
    def all_teachers(self) -> list["RunSpec"]:
        """Every run this one needs first, in order: its teachers (or its stage-1 model)."""
        return list(self.teachers) if self.teachers else ([self.teacher] if self.teacher else [])

    @property
    def prerequisites(self) -> list["RunSpec"]:
        """Every run to train before this one, a teacher's own teacher before it (SSD-LT: stage I,
        then stage II); each once."""
        out: dict[str, RunSpec] = {}
        for teacher in self.all_teachers:
            for run in (*teacher.prerequisites, teacher):
                out.setdefault(run.run_id, run)
        return list(out.values())


_OMITTED_WHEN_NONE = ("data_key", "image_size", "teachers", "train_classes", "pretrained", "select", "weights",
                      "plugins", "val_per_class")  # fields added later: absent keeps older run ids unchanged
PROTOCOL = 2  # see the module docstring: bump it (and RunSpec.protocol) when an unchanged spec would train differently


def with_pretrained(spec: RunSpec, key: Optional[str]) -> RunSpec:
    """``spec`` and every run it needs first, all starting from the weights with content key ``key``
    (``--pretrained``): KD teachers are runs of the same recipe, so they fine-tune from them too."""
    if key is None:
        return spec
    update: dict[str, Any] = {"pretrained": key}
    if spec.teacher is not None:
        update["teacher"] = with_pretrained(spec.teacher, key)
    if spec.teachers:
        update["teachers"] = tuple(with_pretrained(t, key) for t in spec.teachers)
    return RunSpec.model_validate({**spec.model_dump(), **update})


def _derived_seed(seed: int, role: str, purpose: str) -> int:
    """``seed`` for a plain run; for a student a stable 31-bit hash of (seed, role, purpose)."""
    if role == "run":
        return seed
    digest = hashlib.sha256(f"bkdbench:{role}:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def _without_unset(fields: dict) -> dict:
    out = {k: v for k, v in fields.items() if not (k in _OMITTED_WHEN_NONE and v is None)}
    if isinstance(out.get("teacher"), dict):
        out["teacher"] = _without_unset(out["teacher"])
    if out.get("teachers"):
        out["teachers"] = [_without_unset(t) for t in out["teachers"]]
    return out


def make_spec(
    dataset: str,
    imbalance_factor: Union[float, str],
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
    data_dir: Optional[Union[str, Path]] = None,
    image_size: Optional[int] = None,
    split: str = "every-class",
    select: Optional[str] = None,
    weights: Optional[str] = None,
    val_per_class: Optional[int] = None,
) -> RunSpec:
    """Resolve every default (dataset → model/recipe, recipe → epochs, method → parameters) and
    validate names and ranges. A distilling method gets its teacher: a run of the same model,
    data, recipe, epochs and seed with the method's ``teacher_method`` (CE; Balanced Softmax for
    DiVE), unless ``teacher`` is given. Raises SpecError with one clear line.

    ``imagefolder`` needs ``data_dir`` (its folder is decoded, or read from the cache, to learn its
    classes and content key); ``image_size`` resizes it. ``imbalance_factor="natural"`` (or
    ``profile="natural"``) keeps the training set as it is and records its own imbalance factor.
    ``split``: "every-class" or "reference" (module docstring); teachers get the same, and the same
    ``val_per_class`` (validation images per class; None: the dataset's own; refused for a dataset
    whose validation split is its own).
    ``select``: None / "last" (the last epoch) or "best-val" (the best validation epoch's weights, as
    Kang et al. keep for stage 1 and stage 2); every run it needs first gets the same.
    ``weights``: a foundation model's ``--weights`` (pretrained, none, FILE; models/foundation.py)."""
    from bkdbench.data import NATURAL, DataError, dataset_info, natural_imbalance
    from bkdbench.data.splits import check_split

    try:
        check_split(split)
        if select not in (None, "last", "best-val"):
            raise SpecError(f"select takes last or best-val (got {select!r})")
        select = None if select == "last" else select
        info = dataset_info(dataset, data_dir, image_size)
        imbalance_factor, profile = _imbalance(imbalance_factor, profile)
        from bkdbench.data.splits import check_profile

        check_profile(info, profile)  # ImageNet-LT & co.: natural only
        if profile == NATURAL:
            own = natural_imbalance(info, data_dir)
            if imbalance_factor is not None and abs(imbalance_factor - own) > 0.005:
                raise SpecError(f"the natural profile takes the data's own imbalance factor ({own:g}), "
                                f"not {imbalance_factor:g}")
            imbalance_factor = own
        val_per_class = _val_per_class(info, val_per_class, imbalance_factor, profile, data_dir, split)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    model, rec, resolved, needs_teacher = _resolve_names(info, method, model, recipe, epochs, params)
    _check_ranges(imbalance_factor, epochs, profile)
    _check_counts(info, imbalance_factor, profile)
    weights = _weights(model, method, weights)
    for name, value in (("seed", seed), ("data seed", data_seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(f"the {name} must be an integer >= 0 (got {value!r})")
    common = dict(
        dataset=dataset, imbalance_factor=float(imbalance_factor), profile=profile, data_seed=data_seed,
        model=model, recipe=rec.name, epochs=epochs or rec.epochs, seed=seed, data_key=info.data_key,
        image_size=image_size, split=split, select=select, weights=weights, val_per_class=val_per_class,
    )
    from bkdbench.methods import MethodError, method_class

    cls, teachers = method_class(method), None
    try:
        # e.g. class-subset KD turns its "shots" grouping into explicit class lists from this data's counts
        resolved = cls.resolve_for_data(resolved, lambda: _shots(info, imbalance_factor, profile, data_dir, split,
                                                                 val_per_class))
        if needs_teacher and teacher is None and method_class(cls.teacher_method).needs_teacher:
            # a teacher with a teacher of its own (SSD-LT's stages): made like any run of that method
            base = make_spec(dataset, imbalance_factor, cls.teacher_method, seed=seed, data_seed=data_seed, profile=profile,
                             model=model, recipe=rec.name, epochs=common["epochs"], data_dir=data_dir, image_size=image_size,
                             split=split, select=select, val_per_class=val_per_class)
            teachers = cls.teacher_specs(base, resolved)
            teacher = None if teachers else base
        elif needs_teacher and teacher is None:
            base = RunSpec(method=cls.teacher_method, params=_teacher_params(cls.teacher_method),
                           plugins=plugin_refs(cls.teacher_method, model, dataset, rec.name), **common)
            teachers = cls.teacher_specs(base, resolved)  # None: the one default teacher
            teacher = None if teachers else base
        elif needs_teacher and cls.teacher_specs(teacher, resolved):
            raise SpecError(f"{method} plans its own teachers; it does not take a single given teacher")
        elif needs_teacher and any((t.split, t.val_per_class) != (split, val_per_class)
                                   for t in (*teacher.prerequisites, teacher)):
            raise SpecError(f"teacher {teacher.run_id} was trained with the "
                            f"{_split_words(teacher.split, teacher.val_per_class)} validation split, the student uses "
                            f"{_split_words(split, val_per_class)}: it may have trained on the student's validation images")
        elif not needs_teacher:
            teacher = None
    except (DataError, MethodError) as exc:
        raise SpecError(str(exc)) from None

    if not cls.trains:
        common["epochs"] = 1  # no training (τ-norm): only the stage-1 classifier is changed
    elif "stage2_fraction" in resolved:  # decoupled classifiers: stage 1 gets the budget, stage 2 a part
        kang = None
        if "stage2_fraction" not in (params or {}) and common["epochs"] == rec.epochs:  # the recipe's own budget
            # Kang's stage 2 on the large benchmarks (methods/decoupled.py)
            kang = getattr(cls, "stage2_recipe", lambda _: None)(rec.name)
        if kang:
            common["recipe"], common["epochs"] = kang
        else:
            common["epochs"] = max(1, round(resolved["stage2_fraction"] * common["epochs"]))
    return RunSpec(method=method, params=resolved, teacher=teacher, teachers=tuple(teachers) if teachers else None,
                   plugins=plugin_refs(method, model, dataset, rec.name), **common)


def plugin_refs(method: str, model: str, dataset: str, recipe: str) -> Optional[tuple[str, ...]]:
    """``module@digest`` of the loaded plugins that define any of these parts (None: all built in)."""
    from bkdbench.plugins import loaded, refs

    if not loaded():
        return None
    from bkdbench.data.registry import dataset_module
    from bkdbench.methods import method_class
    from bkdbench.models.registry import model_module
    from bkdbench.specs.recipes import recipe_module

    return refs(method_class(method).__module__, model_module(model), dataset_module(dataset), recipe_module(recipe))


def _weights(model: str, method: str, weights: Optional[str]) -> Optional[str]:
    """The run's ``weights`` value (None for a model that is not a foundation model)."""
    from bkdbench.methods import method_class
    from bkdbench.models.foundation import WeightsError, resolve_weights

    try:
        resolved = resolve_weights(model, weights)
    except WeightsError as exc:
        raise SpecError(str(exc)) from None
    if resolved is None and getattr(method_class(method), "foundation", False):
        raise SpecError(f"{method} needs a foundation model (clip-vit-b16, vit-b16-in21k, ...; --model), not {model}")
    return resolved


def _split_words(split: str, val_per_class: Optional[int]) -> str:
    """``'every-class'``, or ``'every-class' (50 a class)`` with a ``val_per_class`` of its own."""
    return f"{split!r}" + (f" ({val_per_class} a class)" if val_per_class else "")


def _val_per_class(info, val_per_class: Optional[int], imbalance_factor: float, profile: str, data_dir,
                   split: str) -> Optional[int]:
    """``val_per_class`` as a spec stores it: None for the dataset's own V. Raises SpecError (DataError)
    where it cannot apply (``splits.check_val_per_class``)."""
    if val_per_class is None:
        return None
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, int) or val_per_class < 1:
        raise SpecError(f"validation images per class must be an integer >= 1 (got {val_per_class!r})")
    if val_per_class == info.val_per_class:
        return None  # the same run as without the option
    from bkdbench.data.splits import check_val_per_class

    check_val_per_class(info, imbalance_factor, profile, data_dir, split, val_per_class)
    return val_per_class


def _shots(info, imbalance_factor: float, profile: str, data_dir, split: str,
           val_per_class: Optional[int] = None) -> dict[str, list[int]]:
    from bkdbench.data import kept_class_counts, shot_split

    counts = kept_class_counts(info, imbalance_factor, profile, data_dir, split, val_per_class)
    return shot_split(counts, info.many_threshold, info.few_threshold)


def check_spec(
    dataset: str,
    imbalance_factor: Union[float, str],
    method: str = "ce",
    *,
    profile: str = "exp",
    model: Optional[str] = None,
    recipe: Optional[str] = None,
    epochs: Optional[int] = None,
    params: Optional[dict[str, Any]] = None,
) -> None:
    """``make_spec``'s checks of names and ranges without touching any data: a suite is validated
    on load, before anyone has said where its image folder lives. Raises SpecError."""
    from bkdbench.data import DataError, get_dataset

    try:
        info = get_dataset(dataset)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    factor, profile = _imbalance(imbalance_factor, profile)
    from bkdbench.data.splits import check_profile

    try:
        check_profile(info, profile)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    _resolve_names(info, method, model, recipe, epochs, params)
    _check_ranges(factor, epochs, profile)
    _check_counts(info, factor, profile)


def _imbalance(imbalance_factor: Union[float, str], profile: str) -> tuple[Optional[float], str]:
    """(factor or None, profile): "natural" in either place means the natural profile."""
    from bkdbench.data import NATURAL

    if isinstance(imbalance_factor, str):
        if imbalance_factor.strip().lower() == NATURAL:
            return None, NATURAL
        try:
            imbalance_factor = float(imbalance_factor)
        except ValueError:
            raise SpecError(f"imbalance factor must be a number >= 1 or 'natural' (got {imbalance_factor!r})") from None
    return float(imbalance_factor), profile


def _resolve_names(info, method, model, recipe, epochs, params):
    """(model, recipe, resolved method parameters, needs_teacher) for a dataset's defaults."""
    from bkdbench.data import DataError
    from bkdbench.methods import MethodError, method_class, validate_params
    from bkdbench.models import ModelError, model_names
    from bkdbench.models.registry import has_model
    from bkdbench.specs.recipes import RecipeError, get_recipe

    try:
        model = model or info.default_model
        if not has_model(model):
            raise ModelError(f"unknown model {model!r}; choose one of: {', '.join(model_names())}")
        merged = {**info.method_defaults.get(method, {}), **(params or {})}
        resolved = validate_params(method, **merged)
        cls = method_class(method)
        resolved = cls.resolve_for_model(resolved, model, merged)  # e.g. DKD's β by student model
        rec = get_recipe(cls.recipe_for(recipe or getattr(cls, "recipe", None) or info.default_recipe, resolved))  # LIFT's own recipe; DiVE's milestones
        needs_teacher = cls.needs_teacher  # no build: a folder's class count is not known yet
    except (DataError, MethodError, ModelError, RecipeError) as exc:
        raise SpecError(str(exc)) from None
    return model, rec, resolved, needs_teacher


def _check_ranges(imbalance_factor: Optional[float], epochs: Optional[int], profile: str) -> None:
    from bkdbench.data import NATURAL
    from bkdbench.data.longtail import PROFILES

    if imbalance_factor is not None and not (math.isfinite(imbalance_factor) and imbalance_factor >= 1):
        raise SpecError(f"imbalance factor must be a finite number >= 1 (got {imbalance_factor:g})")
    if epochs is not None and epochs <= 0:
        raise SpecError(f"epochs must be > 0 (got {epochs})")
    if profile not in (*PROFILES, NATURAL):
        raise SpecError(f"unknown long-tail profile {profile!r}; choose one of: {', '.join((*PROFILES, NATURAL))}")


def _check_counts(info, imbalance_factor: Optional[float], profile: str) -> None:
    """An imbalance factor so large that the tail keeps no image is refused before any work: every
    method needs each class in training (the reference truncates n_max·IF^(-i/(C-1)) to an integer)."""
    from bkdbench.data import NATURAL, longtail_counts

    unread = info.resolve is not None and info.data_key is None  # an image folder not read yet (a suite file)
    if profile == NATURAL or imbalance_factor is None or unread or not info.n_max or not info.num_classes:
        return  # a folder kept as it is, or one whose counts are known only once it is read
    counts = longtail_counts(info.n_max, info.num_classes, imbalance_factor, profile)
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise SpecError(
            f"imbalance factor {imbalance_factor:g} leaves {info.name} classes {empty[0]}..{empty[-1]} with no training "
            f"image ({profile} profile, head class {info.n_max} images): the largest factor that keeps one image in "
            f"every class is {info.n_max} (the tail keeps int(n_max / IF) images)")


def _teacher_params(method: str) -> dict:
    from bkdbench.methods import validate_params

    return validate_params(method)
