"""``bkdbench ablate``: a factorial grid (or a named preset of variants) of one method's parameters
× imbalance factors × seeds, run as one resumable experiment, rows tagged with an ablation id."""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Optional

from ..methods.params import parse_value
from ..specs import RunSpec, make_spec



class _OtherCbStart:
    """A preset value: the ``cb_start`` schedule that the run's dataset does NOT use by default. Datasets
    differ (``DatasetInfo.method_defaults``: BKD's weights deferred to 80% of the budget on CIFAR-10,
    digits and Fashion-MNIST, on from epoch 0 on CIFAR-100), so a fixed ``cb_start: 0`` variant would
    be the default itself on CIFAR-100. Resolved per dataset by ``ablation_specs``: a default of 0
    becomes ``DEFERRED_CB_START``, any deferred default becomes 0."""

    def __repr__(self) -> str:
        return "<the other cb_start schedule>"


OTHER_CB_START = _OtherCbStart()
DEFERRED_CB_START = 0.8  # the reference's deferred switch: epoch 160 of 200

# Component ablations of BKD (each variant is a parameter setting of the one method, not a copy).
PRESETS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "bkd": {
        "components": [
            {},  # BKD as published: instance-balanced CE + class-balanced, renormalised KD term
            {"ce_weighting": "class-balanced"},  # the CE term class-balanced too
            {"kd_weighting": "none"},  # plain distillation term (= vanilla KD)
            {"renormalize": False},  # class weights on the teacher, no per-sample renormalisation
            {"cb_start": OTHER_CB_START},  # the other schedule: from epoch 0 where deferred, deferred where from 0
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
                   recipe: Optional[str] = None, data_dir=None, split: str = "every-class",
                   teacher: Optional[tuple[str, str]] = None, weights: Optional[str] = None,
                   val_per_class: Optional[int] = None) -> list[RunSpec]:
    """``teacher``: (model, method) of every student's teacher (``--teacher``; its own recipe, this budget),
    with ``weights`` for it when it is a foundation model."""
    def make(dataset, factor, setting, seed=0):
        given = None
        if teacher is not None:
            given = make_spec(dataset, factor, teacher[1], seed=seed, epochs=epochs, model=teacher[0], weights=weights,
                              data_dir=data_dir, split=split, val_per_class=val_per_class)
        return make_spec(dataset, factor, method, seed=seed, epochs=epochs, model=model, recipe=recipe, params=setting,
                         data_dir=data_dir, split=split, teacher=given, val_per_class=val_per_class)

    return [
        make(dataset, factor, resolved, seed)
        for dataset in datasets for factor in imbalances for setting in settings
        for resolved in [_for_dataset(setting, lambda s: make(dataset, factor, s))] for seed in range(seeds)
    ]


def _for_dataset(setting: dict, make) -> dict:
    """``setting`` with ``OTHER_CB_START`` replaced by the schedule that the dataset's default (the
    ``cb_start`` a spec of the rest of the setting resolves to) is not."""
    if not any(v is OTHER_CB_START for v in setting.values()):
        return setting
    if any(v is OTHER_CB_START for k, v in setting.items() if k != "cb_start"):
        raise AblationError("OTHER_CB_START is a value of cb_start only")
    default = make({k: v for k, v in setting.items() if k != "cb_start"}).params["cb_start"]
    return {**setting, "cb_start": DEFERRED_CB_START if default == 0 else 0.0}


def ablation_id(method: str, specs: list[RunSpec]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(s.run_id for s in specs)).encode()).hexdigest()[:8]
    return f"{method}-ablation-{digest}"
