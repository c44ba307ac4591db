"""Suites: YAML files that name a grid of runs (datasets × imbalance factors × methods × seeds).

A suite file is validated on load: unknown keys, wrong types and unknown dataset/method/model/recipe
names end in a ``SuiteError`` naming the file and the offending key. ``Suite.expand`` turns it into
RunSpecs (with their teachers), optionally filtered. A suite on ``imagefolder`` is validated without
its folder; ``expand(data_dir=...)`` reads the folder (``bkdbench run --data-dir``) for the specs'
content key and class count. ``imbalance`` may list ``natural`` (a folder kept as it is).
``split`` (default ``every-class``; ``reference`` keeps the reference training sets exactly) says how
validation is drawn for every run of the suite, teachers included; ``expand(split=...)`` overrides it,
and ``val_per_class`` (default: the dataset's own) how many images a class gives it (``expand(val_per_class=...)``
overrides it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bkdbench.specs import RunSpec, SpecError, check_spec, make_spec
from bkdbench.specs.yamlfile import load_yaml_model

HERE = Path(__file__).parent.parent / "suites"  # the shipped suite files


class SuiteError(ValueError):
    pass


class TeacherEntry(BaseModel):
    """A distillation student's teacher as a run of its own (``--teacher MODEL:METHOD``)."""
    model_config = ConfigDict(extra="forbid")
    model: str
    method: str
    weights: Optional[str] = None  # a foundation model's tag (default: pretrained) or none


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    # Foundation rows (docs/foundation.md): this entry's own model and weights, and a student's teacher.
    model: Optional[str] = None
    weights: Optional[str] = None
    teacher: Optional[TeacherEntry] = None


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    runs_on: str = Field("cpu", description="where it is meant to run: cpu, gpu or cluster")
    datasets: list[str] = Field(min_length=1)
    imbalance: list[Union[float, Literal["natural"]]] = Field(min_length=1)
    methods: list[Union[str, MethodEntry]] = Field(min_length=1)
    seeds: Union[int, list[int]] = 3
    data_seed: int = 0
    profile: str = "exp"
    split: Literal["every-class", "reference"] = "every-class"
    val_per_class: Optional[int] = Field(None, gt=0)  # validation images per class (None: the dataset's own)
    model: Optional[str] = None
    recipe: Optional[str] = None
    epochs: Optional[int] = Field(None, gt=0)
    # The training crop of the split-list benchmarks and the resize of an image folder, as
    # `bkdbench train --image-size` (None: the dataset's own, 224 for ImageNet-LT, Places-LT, iNat18).
    image_size: Optional[int] = Field(None, ge=8)
    # Data-parallel workers per trial (`bkdbench run --workers-per-trial`, which overrides it);
    # an execution setting, not part of any run id.
    workers_per_trial: int = Field(1, ge=1)
    # The user's own code the suite needs (bkdbench.plugins): .py files, package folders (relative to the
    # suite file) or module names, imported before any name is checked.
    plugins: list[str] = Field(default_factory=list)
    # The published table the suite targets (bkdbench/leaderboard/published/<name>.yaml): `bkdbench run`
    # ends with our cells beside it (Δ where the protocol matches). Not part of any run id.
    published: Optional[str] = None

    @field_validator("published")
    @classmethod
    def _shipped_table(cls, v: Optional[str]) -> Optional[str]:
        tables = Path(__file__).parent.parent / "leaderboard" / "published"  # a path: specs never import results
        if v is not None and not (tables / f"{v}.yaml").is_file():
            names = sorted(p.stem for p in tables.glob("*.yaml"))
            raise ValueError(f"unknown published table {v!r}; choose one of: {', '.join(names)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: Union[int, list[int]]) -> Union[int, list[int]]:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"seeds is a number of seeds (at least 1) or a list of seeds (got {v})")
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"a list of seeds must be non-empty, without repeats, each >= 0 (got {v})")
        return v

    @field_validator("imbalance")
    @classmethod
    def _at_least_one(cls, v: list) -> list:
        bad = [f for f in v if f != "natural" and f < 1]
        if bad:
            raise ValueError(f"imbalance factors must be >= 1 (got {bad})")
        return v

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def method_entries(self) -> list[MethodEntry]:
        return [MethodEntry(method=m) if isinstance(m, str) else m for m in self.methods]

    def expand(
        self,
        *,
        datasets: Optional[list[str]] = None,
        imbalance: Optional[list[Union[float, str]]] = None,
        methods: Optional[list[str]] = None,
        seeds: Optional[int] = None,
        epochs: Optional[int] = None,
        data_dir: Optional[Path] = None,
        split: Optional[str] = None,
        select: Optional[str] = None,
        val_per_class: Optional[int] = None,
    ) -> list[RunSpec]:
        """RunSpecs of the suite (filters narrow it; ``epochs`` overrides the budget for smoke runs;
        ``data_dir`` is where the data lives, needed by ``imagefolder``; ``split`` overrides the suite's;
        ``select``: "best-val" keeps each run's best validation epoch, as ``make_spec``)."""
        from bkdbench.data.imagefolder import scan_once

        with scan_once():  # one listing of an image folder for all the suite's specs
            return self._expand(datasets, imbalance, methods, seeds, epochs, data_dir, split or self.split, select,
                                val_per_class or self.val_per_class)

    def _expand(self, datasets, imbalance, methods, seeds, epochs, data_dir, split, select=None,
                val_per_class=None) -> list[RunSpec]:
        chosen_seeds = self.seed_list()[:seeds] if seeds is not None else self.seed_list()
        specs = []
        for dataset in self.datasets:
            if datasets and dataset not in datasets:
                continue
            for factor in self.imbalance:
                if imbalance and factor not in imbalance:
                    continue
                for entry in self.method_entries():
                    if methods and entry.method not in methods:
                        continue
                    for seed in chosen_seeds:
                        common = dict(seed=seed, data_seed=self.data_seed, profile=self.profile, data_dir=data_dir,
                                      image_size=self.image_size, split=split, select=select,
                                      val_per_class=val_per_class)
                        teacher = None
                        if entry.teacher is not None:  # its own recipe; a smoke budget shortens it too
                            t = entry.teacher
                            teacher = make_spec(dataset, factor, t.method, model=t.model, weights=t.weights,
                                                epochs=epochs or self.epochs, **common)
                        specs.append(make_spec(
                            dataset, factor, entry.method, model=entry.model or self.model, recipe=self.recipe,
                            epochs=epochs or self.epochs, params=entry.params, teacher=teacher,
                            weights=entry.weights, **common,
                        ))
        return specs

    def check(self) -> None:
        """Every name and range the suite uses, without reading any data (SpecError)."""
        for dataset in self.datasets:
            for factor in self.imbalance:
                for entry in self.method_entries():
                    check_spec(dataset, factor, entry.method, profile=self.profile, model=entry.model or self.model,
                               recipe=self.recipe, epochs=self.epochs, params=entry.params)
                    if entry.teacher is not None:
                        _check_teacher(entry, dataset, factor, self.profile, self.epochs)

    def with_methods(self, names: list[str]) -> "Suite":
        """The suite with ``names`` added to its methods (``run --with-method``): each runs on every
        dataset, imbalance factor and seed, checked like the suite's own."""
        extra = [n for n in names if n not in {m.method for m in self.method_entries()}]
        if not extra:
            return self
        grown = self.model_copy(update={"methods": [*self.methods, *extra]})
        try:
            grown.check()
        except SpecError as exc:
            raise SuiteError(f"--with-method: {exc}") from None
        return grown

    def size(self) -> int:
        return len(self.datasets) * len(self.imbalance) * len(self.methods) * len(self.seed_list())


def _check_teacher(entry: MethodEntry, dataset, factor, profile, epochs) -> None:
    from bkdbench.methods import method_class, teacher_methods

    t = entry.teacher
    check_spec(dataset, factor, t.method, profile=profile, model=t.model, epochs=epochs)
    cls = method_class(entry.method)
    if not cls.needs_teacher or cls.stage1:
        raise SpecError(f"{entry.method} is no distillation student: it takes no teacher")
    if not method_class(t.method).trains or t.method not in teacher_methods():
        raise SpecError(f"teacher {t.model}:{t.method} trains no classifier whose weights are kept")


def suite_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist")
        return path
    packaged = HERE / f"{name_or_path}.yaml"
    if not packaged.is_file():
        raise SuiteError(f"unknown suite {name_or_path!r}; choose one of: {', '.join(suite_names())} or pass a YAML file")
    return packaged


def load_suite(name_or_path: str, *, check_names: bool = True) -> Suite:
    """Load and validate a suite (by packaged name or file path), including every name it uses.
    ``check_names=False`` checks the file's keys and types only: checking method and dataset names
    imports their registries (and torch), which listing the shipped suites does not need."""
    path = suite_path(name_or_path)
    suite = load_yaml_model(path, Suite, SuiteError,
                            "a suite file is a mapping of keys (name, datasets, imbalance, methods, ...)")
    if not check_names:
        return suite
    if suite.plugins:  # before the names are checked: they may be the plugins' own
        from bkdbench.plugins import PluginError, load_all

        try:
            load_all(suite.plugins, base=path.parent)
        except PluginError as exc:
            raise SuiteError(f"{path}: key 'plugins': {exc}") from None
    try:  # names and parameter ranges of every combination (data is read only when the suite runs)
        suite.check()
    except SpecError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    return suite
