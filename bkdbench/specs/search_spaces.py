"""Search spaces: one YAML file per searchable method (``bkd.yaml`` ...), or a user's own file.

Each parameter has a type (float, int or categorical), a range or choices, and a log flag; a file may
also hold ``fixed`` parameters and ``asha_before_lr_drop`` (early stopping's first rung). A file is
validated on load: malformed YAML, unknown keys, an unknown method or parameter, or a range outside
the method's allowed values end in a ``SpaceError`` naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bkdbench.specs.yamlfile import load_yaml_model



def _shipped_folder() -> Path:
    """The shipped spaces: ``bkdbench/search_spaces/`` in an installed wheel (pyproject maps the
    repository's top-level ``search_spaces/`` there), else that top-level folder of a checkout."""
    package = Path(__file__).parent.parent
    installed = package / "search_spaces"
    return installed if installed.is_dir() else package.parent / "search_spaces"


HERE = _shipped_folder()


class SpaceError(ValueError):
    pass


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _shape(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError("a float/int parameter needs 'low' < 'high'")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale range needs 'low' > 0")
        return self

    def probe_values(self, points: int = 9) -> list[Any]:
        """Values that must all be legal for the method: every choice, or the ends and interior
        points of the range (a range can cross an illegal value, e.g. cb_start in [0.5, 2])."""
        if self.type == "categorical":
            return list(self.choices)
        import numpy as np

        grid = np.geomspace(self.low, self.high, points) if self.log else np.linspace(self.low, self.high, points)
        if self.type == "int":
            return sorted({int(round(v)) for v in grid})
        return [float(v) for v in grid]

    def to_optuna(self):
        import optuna.distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(self.choices)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(self.low, self.high, log=self.log)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str
    description: str = ""
    params: dict[str, Param] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)  # parameters held constant during the search
    # ASHA's first rung waits for the recipe's first learning-rate drop (orchestrate.sweeps.driver.grace_period):
    # true lets it come earlier, for a space whose ranking is known not to change at the drop. No shipped
    # space sets it: none has been shown to keep its order across the ×0.01 drop.
    asha_before_lr_drop: bool = False
    # The user's own code the method comes from (bkdbench.plugins): paths relative to this file, or module names.
    plugins: list[str] = Field(default_factory=list)

    def optuna_space(self) -> dict:
        return {name: p.to_optuna() for name, p in self.params.items()}


def space_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load_space(method: str, path: Optional[str] = None) -> tuple[SearchSpace, Path]:
    """The space for ``method``: the user's file when given, else the shipped ``<method>.yaml``."""
    from bkdbench.methods import MethodError, validate_params

    file = Path(path) if path else HERE / f"{method}.yaml"
    if not file.is_file():
        if path:
            raise SpaceError(f"search space file {file} does not exist")
        raise SpaceError(f"no search space for {method!r}; shipped: {', '.join(space_names())}; pass --space FILE")
    space = load_yaml_model(file, SearchSpace, SpaceError,
                            "a search space is a mapping with keys method, params (and description, fixed, "
                            "asha_before_lr_drop, plugins)")
    if space.plugins:  # the method may be the plugin's own: imported before any name is checked
        from bkdbench.plugins import PluginError, load_all

        try:
            load_all(space.plugins, base=file.parent)
        except PluginError as exc:
            raise SpaceError(f"{file}: key 'plugins': {exc}") from None
    if space.method != method:
        raise SpaceError(f"{file}: key 'method': the file is for {space.method!r}, the sweep for {method!r}")
    try:
        validate_params(method, **space.fixed)
    except MethodError as exc:
        raise SpaceError(f"{file}: key 'fixed': {exc}") from None
    for name, param in space.params.items():
        if name in space.fixed:
            raise SpaceError(f"{file}: key 'params.{name}': {name} is also in 'fixed'; search it or fix it, not both")
        for value in param.probe_values():
            try:
                validate_params(method, **{**space.fixed, name: value})
            except MethodError as exc:
                raise SpaceError(f"{file}: key 'params.{name}': {exc}") from None
            if param.type != "categorical" and isinstance(validate_params(method, **{name: value})[name], bool):
                raise SpaceError(f"{file}: key 'params.{name}': {name} is a yes/no parameter; "
                                 "use type: categorical with choices [true, false]")
    return space, file
