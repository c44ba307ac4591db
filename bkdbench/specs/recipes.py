"""Training recipes by name. ``reference`` is the LDAM-DRW / BKD recipe exactly; the others keep its
shape (warm-up, two ×0.01 steps) at fractions of the epoch budget, so a 20-epoch smoke run of any
recipe is the same schedule compressed."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction

SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 2e-4
    # Warm-up: the first warmup_frac of the training steps, in warmup_stairs equal stairs lr·k/stairs
    # (k = 1..stairs). At 200 epochs that is the reference's lr·(e+1)/5 for epochs e < 5 exactly; a
    # shorter budget ramps within its first epoch(s) (20 epochs: five stairs over the first half epoch).
    warmup_frac: float = 5 / 200
    milestones_frac: tuple[float, float] = (160 / 200, 180 / 200)
    lr_decay: float = 0.01  # applied at each milestone (×0.01, then ×0.01 again)
    eval_every: int = 1
    # "step": the reference's two ×lr_decay steps at milestones_frac. "cosine": after warm-up, epoch e
    # runs at lr·½(1+cos(π·e/E)), i.e. torch's CosineAnnealingLR(T_max=E, eta_min=0) stepped once
    # per epoch (the decoupling code's recipe); milestones_frac and lr_decay are then unused.
    schedule: str = "step"
    warmup_stairs: int = 5

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.warmup_stairs < 1 or not 0 <= self.warmup_frac < 1:
            raise RecipeError("warmup_stairs must be >= 1 and warmup_frac in [0, 1)")

    def warmup_epochs(self, epochs: int) -> Fraction:
        """The warm-up's length in epochs, exactly (a fraction for short budgets: 1/2 at 20 epochs)."""
        return Fraction(self.warmup_frac).limit_denominator(10**6) * epochs

    def milestones(self, epochs: int) -> tuple[float, int, int]:
        """(warm-up length in epochs, first decay epoch, second decay epoch) for an ``epochs`` budget."""
        warm = self.warmup_epochs(epochs)
        return (int(warm) if warm.denominator == 1 else float(warm),
                round(self.milestones_frac[0] * epochs), round(self.milestones_frac[1] * epochs))

    def lr_at(self, epoch: int, epochs: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate of batch ``step`` (0-based) of 0-based ``epoch``, an epoch having
        ``steps_per_epoch`` batches (the default 1: the epoch's first batch, or the reference's
        per-epoch rule where warm-up stairs are whole epochs, as at 200 epochs)."""
        warm = self.warmup_epochs(epochs)
        done = Fraction(epoch * steps_per_epoch + step, steps_per_epoch)  # epochs trained before this batch
        if done < warm:
            return self.lr * (math.floor(done * self.warmup_stairs / warm) + 1) / self.warmup_stairs
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        _, m1, m2 = self.milestones(epochs)
        if epoch >= m2:
            return self.lr * self.lr_decay**2
        if epoch >= m1:
            return self.lr * self.lr_decay
        return self.lr

    def epoch_lrs(self, epoch: int, epochs: int, steps_per_epoch: int) -> list[float]:
        """The learning rate of each of the epoch's batches (they differ only during warm-up)."""
        steps = max(1, steps_per_epoch)
        if epoch >= self.warmup_epochs(epochs):
            return [self.lr_at(epoch, epochs)] * steps
        return [self.lr_at(epoch, epochs, s, steps) for s in range(steps)]

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    r.name: r
    for r in (
        Recipe("reference", epochs=200, batch_size=128, lr=0.1),
        # digits: ~400 training images; 40 short epochs keep the demo suite near a minute on 2 cores.
        Recipe("small", epochs=40, batch_size=64, lr=0.05, weight_decay=5e-4),
        Recipe("fashion", epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4),
        # Real 32×32 images on a 2-core CPU (the cifar10-jpeg-lt-cpu suite): the reference's optimiser
        # and batch, 10 epochs, validation/test every 5 (and at the end). Timing in that suite file.
        Recipe("cpu-short", epochs=10, batch_size=128, lr=0.1, eval_every=5),
        # The large benchmarks, as the decoupling code (facebookresearch/classifier-balancing) trains its
        # instance-balanced stage 1: SGD momentum 0.9, cosine to 0 per epoch (coslr: true, endlr: 0.0), no
        # warm-up. ImageNet-LT: config/ImageNet_LT/feat_uniform.yaml (90 epochs, batch 512, lr 0.2, wd 5e-4).
        Recipe("imagenet-lt", epochs=90, batch_size=512, lr=0.2, weight_decay=5e-4, warmup_frac=0.0, schedule="cosine"),
        # iNat18: config/iNaturalist18/feat_unifrom.yaml (sic; 90 epochs, batch 512, lr 0.2, wd 1e-4).
        Recipe("inat18", epochs=90, batch_size=512, lr=0.2, weight_decay=1e-4, warmup_frac=0.0, schedule="cosine"),
        # Places-LT fine-tunes an ImageNet-pretrained ResNet-152 (--pretrained). 30 epochs: OLTR's
        # config/Places_LT/stage_1.py (batch 128, backbone lr 0.001, classifier 0.1, ×0.1 every 10 epochs,
        # wd 5e-4). The decoupling repository ships no stage-1 config for it, only cls_crt.yaml/cls_lws.yaml:
        # batch 256, wd 5e-4, cosine to 0, backbone lr 0.01 (classifier 0.1; one lr here for both).
        # docs/large-benchmarks.md says how this differs from both.
        Recipe("places-lt", epochs=30, batch_size=256, lr=0.01, weight_decay=5e-4, warmup_frac=0.0, schedule="cosine"),
        # The decoupling code's classifier stage (cRT / LWS), per benchmark: config/<benchmark>/cls_crt.yaml and
        # cls_lws.yaml, cosine to 0 (coslr: true, endlr: 0.0), class-aware sampler. ImageNet-LT: batch 512,
        # lr 0.2, wd 5e-4, cRT 10 / LWS 5 epochs; iNat18: batch 512, lr 0.2, wd 1e-4, cRT 30 / LWS 5; Places-LT:
        # batch 256, classifier lr 0.1, wd 5e-4, cRT 10 / LWS 5. ``epochs`` is cRT's; methods/decoupled.py
        # names LWS's.
        Recipe("imagenet-lt-stage2", epochs=10, batch_size=512, lr=0.2, weight_decay=5e-4, warmup_frac=0.0,
               schedule="cosine"),
        Recipe("inat18-stage2", epochs=30, batch_size=512, lr=0.2, weight_decay=1e-4, warmup_frac=0.0, schedule="cosine"),
        Recipe("places-lt-stage2", epochs=10, batch_size=256, lr=0.1, weight_decay=5e-4, warmup_frac=0.0,
               schedule="cosine"),
        # LIFT (Shi et al., ICML 2024; shijxcs/LIFT configs/model/clip_vit_b16_peft.yaml and utils/config.py):
        # 10 epochs, batch 128, SGD lr 0.01, momentum 0.9, wd 5e-4, CosineAnnealingLR(T_max=epochs) stepped
        # per epoch, no warm-up. The foundation methods' default (methods/foundation.py); iNat18: --epochs 20.
        Recipe("lift", epochs=10, batch_size=128, lr=0.01, weight_decay=5e-4, warmup_frac=0.0, schedule="cosine"),
    )
}


class RecipeError(ValueError):
    pass


def history_lr(lrs: list[float]) -> float:
    """An epoch's ``lr`` in run histories: the mean over its batches (the one rate outside warm-up)."""
    return lrs[0] if min(lrs) == max(lrs) else math.fsum(lrs) / len(lrs)


MILESTONES = "/milestones="  # a derived recipe: "<recipe>/milestones=0.6,0.8" (fractions of the budget)


def with_milestones(name: str, fractions: tuple[float, float]) -> str:
    """The name of recipe ``name`` with its two decay steps moved to ``fractions`` of the budget (a
    method's authors' schedule, e.g. DiVE's 120/160 of 200); a cosine recipe has no steps: unchanged."""
    base = get_recipe(name)
    if base.schedule != "step" or tuple(base.milestones_frac) == tuple(fractions):
        return name
    return f"{name.split(MILESTONES)[0]}{MILESTONES}{fractions[0]:g},{fractions[1]:g}"


_ORIGIN: dict[str, str] = {}  # recipes registered from outside: name -> module


def register_recipe(recipe: Recipe) -> Recipe:
    """Add a recipe (a plugin's): a name that exists already is refused, naming both places."""
    import sys

    caller = sys._getframe(1).f_globals
    origin = f"{caller.get('__name__', '?')} ({caller.get('__file__', '?')})"
    if recipe.name in RECIPES and _ORIGIN.get(recipe.name) != origin:
        known = _ORIGIN.get(recipe.name, f"{__name__} ({__file__})")
        raise RecipeError(f"recipe '{recipe.name}' is already registered by {known}; {origin} registers it again: "
                          "choose another name")
    RECIPES[recipe.name] = recipe
    _ORIGIN[recipe.name] = origin
    return recipe


def recipe_module(name: str) -> str | None:
    """The module that registered recipe ``name`` (None for the recipes above)."""
    origin = _ORIGIN.get(name.partition(MILESTONES)[0])
    return origin.split(" ")[0] if origin else None


def get_recipe(name: str) -> Recipe:
    base, _, moved = name.partition(MILESTONES)
    if base not in RECIPES:
        from bkdbench.plugins import import_on_miss

        if import_on_miss():
            return get_recipe(name)
    if base not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}")
    if not moved:
        return RECIPES[base]
    try:
        first, second = (float(v) for v in moved.split(","))
    except ValueError:
        raise RecipeError(f"recipe {name!r}: milestones are two fractions, e.g. {base}{MILESTONES}0.6,0.8") from None
    if not 0 < first <= second < 1:
        raise RecipeError(f"recipe {name!r}: milestones must satisfy 0 < first <= second < 1")
    return replace(RECIPES[base], name=name, milestones_frac=(first, second))


def recipe_names() -> list[str]:
    return sorted(RECIPES)
