"""Training recipes by name. ``reference`` is the LDAM-DRW / BKD recipe exactly; the others keep its
shape (warm-up, two ×0.01 steps) at fractions of the epoch budget, so a 20-epoch smoke run of any
recipe is the same schedule compressed."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_frac: float = 5 / 200  # 5 warm-up epochs of 200
    milestones_frac: tuple[float, float] = (160 / 200, 180 / 200)
    lr_decay: float = 0.01  # applied at each milestone (×0.01, then ×0.01 again)
    eval_every: int = 1

    def milestones(self, epochs: int) -> tuple[int, int, int]:
        """(warm-up epochs, first decay epoch, second decay epoch) for an ``epochs`` budget."""
        warm = max(1, round(self.warmup_frac * epochs))
        return warm, round(self.milestones_frac[0] * epochs), round(self.milestones_frac[1] * epochs)

    def lr_at(self, epoch: int, epochs: int) -> float:
        """Learning rate of 0-based ``epoch``: lr·(e+1)/warm during warm-up, as the reference does."""
        warm, m1, m2 = self.milestones(epochs)
        if epoch + 1 <= warm:
            return self.lr * (epoch + 1) / warm
        if epoch >= m2:
            return self.lr * self.lr_decay**2
        if epoch >= m1:
            return self.lr * self.lr_decay
        return self.lr

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
    )
}


class RecipeError(ValueError):
    pass


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def recipe_names() -> list[str]:
    return sorted(RECIPES)
