"""``bkdbench ablate``: a factorial grid (or a named preset of variants) of one method's parameters
× imbalance factors × seeds, run as one resumable experiment, rows tagged with an ablation id."""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Optional

from ..methods.params import parse_value
from ..specs import RunSpec, make_spec

# Component ablations of BKD (each variant is a parameter setting of the one method, not a copy).
PRESETS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "bkd": {
        "components": [
            {},  # BKD as published: instance-balanced CE + class-balanced, renormalised KD term
            {"ce_weighting": "class-balanced"},  # the CE term class-balanced too
            {"kd_weighting": "none"},  # plain distillation term (= vanilla KD)
            {"renormalize": False},  # class weights on the teacher, no per-sample renormalisation
            {"cb_start": 0.0},  # class weights from the first epoch instead of deferred
        ],
    },
}


class AblationError(ValueError):
    pass


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["alpha=0,0.5,1", "temperature=1,2"]`` → {"alpha": [0.0, 0.5, 1.0], "temperature": [1.0, 2.0]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise AblationError(f"--grid takes PARAM=v1,v2,... (got {item!r})")
        if name.strip() in grid:
            raise AblationError(f"--grid names {name.strip()!r} twice")
        grid[name.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def variants(method: str, grid: dict[str, list[Any]], preset: Optional[str]) -> list[dict[str, Any]]:
    """The parameter settings to run: a preset's list, or the full factorial product of the grid."""
    if preset:
        try:
            return [dict(v) for v in PRESETS[method][preset]]
        except KeyError:
            known = [f"{m}:{p}" for m, ps in PRESETS.items() for p in ps]
            raise AblationError(f"no preset {preset!r} for {method}; known presets: {', '.join(known)}") from None
    if not grid:
        raise AblationError("give at least one --grid PARAM=v1,v2 (or --preset)")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def ablation_specs(method: str, settings: list[dict], datasets: list[str], imbalances: list[float], seeds: int,
                   epochs: Optional[int] = None, model: Optional[str] = None,
                   recipe: Optional[str] = None, data_dir=None) -> list[RunSpec]:
    return [
        make_spec(dataset, factor, method, seed=seed, epochs=epochs, model=model, recipe=recipe, params=setting,
                  data_dir=data_dir)
        for dataset in datasets for factor in imbalances for setting in settings for seed in range(seeds)
    ]


def ablation_id(method: str, specs: list[RunSpec]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(s.run_id for s in specs)).encode()).hexdigest()[:8]
    return f"{method}-ablation-{digest}"
