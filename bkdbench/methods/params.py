"""Parameter models: shared, range-checked field types and readable validation errors.

Every method declares a pydantic model built from these field types, so the same name always has the
same meaning and range wherever it appears (CLI, YAML suites, leaderboard columns).
"""

from __future__ import annotations

from typing import Annotated

import annotated_types
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


def parse_value(text: str) -> bool | int | float | str:
    """A parameter value typed on a command line: true/false, a number, else the text itself
    (pydantic then checks it against the parameter's own type, e.g. a whole number of teachers)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for number in (int, float):  # "3" stays whole (a count of teachers); float fields accept it as 3.0
        try:
            return number(text)
        except ValueError:
            pass
    return text.strip()


def parse_assignments(items: list[str]) -> dict[str, bool | int | float | str]:
    """``["queue=0", "groups=0,1|2,3"]`` → {"queue": 0, "groups": "0,1|2,3"}; ValueError on a bad item."""
    out: dict[str, bool | int | float | str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--param takes NAME=VALUE (got {item!r})")
        if name.strip() in out:
            raise ValueError(f"--param sets {name.strip()!r} twice")
        out[name.strip()] = parse_value(value)
    return out


def _whole_epoch_if_absolute(value: float) -> float:
    if value >= 1 and value != int(value):
        raise ValueError("must be a fraction in [0, 1) or a whole epoch index >= 1")
    return value


Alpha = Annotated[float, Field(ge=0, description="weight of the distillation term")]
Temperature = Annotated[float, Field(gt=0, description="softmax temperature for distillation")]
Beta = Annotated[float, Field(ge=0, lt=1, description="class-balanced weighting beta (Cui et al.)")]
Gamma = Annotated[float, Field(ge=0, description="focusing exponent of the focal loss")]
MaxM = Annotated[float, Field(gt=0, description="largest LDAM margin (rarest class)")]
Scale = Annotated[float, Field(gt=0, description="scale applied to cosine logits")]
Tau = Annotated[float, Field(ge=0, description="strength of the prior adjustment")]
CbStart = Annotated[
    float,
    Field(ge=0, description="when class-balanced weighting starts: fraction < 1 or epoch index >= 1"),
    AfterValidator(_whole_epoch_if_absolute),
]


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys and NaN/inf are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def _allowed_range(model: type[BaseModel], field: str) -> str | None:
    """Describe a field's numeric bounds, e.g. '> 0' or 'in [0, 1)', from its constraints."""
    info = model.model_fields.get(field)
    if info is None:
        return None
    lo = hi = None
    for c in info.metadata:
        if isinstance(c, annotated_types.Ge):
            lo = f"[{c.ge:g}"
        elif isinstance(c, annotated_types.Gt):
            lo = f"({c.gt:g}"
        elif isinstance(c, annotated_types.Lt):
            hi = f"{c.lt:g})"
        elif isinstance(c, annotated_types.Le):
            hi = f"{c.le:g}]"
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    if hi:
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
    return None


def explain_validation_error(method: str, model: type[BaseModel], err: ValidationError) -> str:
    """One line naming the method, each bad parameter, what is allowed and the value given."""
    allowed = f"allowed: {', '.join(model.model_fields)}" if model.model_fields else "it takes no parameters"
    problems = []
    for e in err.errors():
        param = ".".join(str(p) for p in e["loc"]) or "parameters"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown parameter '{param}' ({allowed})")
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            problems.append(f"{param} must be {_allowed_range(model, param)} (got {got!r})")
        elif e["type"] == "value_error":
            problems.append(f"{param} {e['ctx']['error']} (got {got!r})")
        else:
            problems.append(f"{param}: {e['msg']} (got {got!r})")
    return f"{method}: " + "; ".join(problems)
