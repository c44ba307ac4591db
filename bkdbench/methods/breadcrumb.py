"""Breadcrumb (Liu, Li, Kang, Hua, Vasconcelos, "Breadcrumbs: Adversarial Class-Balanced Sampling for
Long-tailed Recognition", arXiv:2105.00127, 2021): class-balanced classifier training on features
back-tracked across epochs (EMANATE) instead of on repeated tail images.

Two heads share one backbone. The backbone and its classifier ``model.fc`` train with plain CE on
instance-sampled batches. A second linear head ``model.fc_balanced`` trains on detached features
drawn class-balanced from a memory of past features; predictions come from this head only.

Memory, per class c with n_c training images: a ring of the features the backbone produced for
class-c images, each tagged with the epoch e it was computed in, and the per-epoch class means
μ[e, c] (running during epoch e, fixed once it ends). During epoch t the readable features of class c
are its newest L features from completed epochs, and a feature f of epoch e is moved to the backbone's
latest state by its class-mean change (the paper's class alignment):

    f̂ = f + (μ[t−1, c] − μ[e, c])          (= f for features of epoch t−1)

L = ``queue`` (0: ceil(N / C), the mean class size, as the authors' code does), so a tail class reads
features from about L / n_c past epochs while the head reads part of its last epoch, and the balanced
set has about one epoch's worth of features (C·L ≈ N). Each step draws B = batch size pairs: a class
uniformly among the classes with a readable feature, then one of its readable features uniformly, from
a seeded generator kept in ``state_dict`` (so a resumed run repeats the same draws). The loss is

    CE(model.fc(h(x)), y) + balanced_weight · CE(fc_balanced(f̂), ĉ)

with f̂ detached, so the second term trains fc_balanced only. Defaults: queue=0, balanced_weight=1
(the authors step both heads with the same optimiser settings, which a summed loss with weight 1 and
one SGD optimiser reproduces).

Where this follows the authors' code (github.com/BoLiu-SVCL/Breadcrumbs, train.py) and where not:
  * same: the alignment target is the mean of the last completed epoch; only completed epochs are
    read; a class's queue spans ceil(L / n_c) epochs, newest first, truncated to L features.
  * the first epoch has no completed epoch: its features are read as they arrive (unshifted). The
    authors instead train the balanced head on features of class-balanced sampled images until every
    queue is full; this benchmark has one instance-sampled loader, so until then the draws here come
    from the (partly filled) memory.
  * draws are i.i.d. (class, then feature); the authors shuffle a fixed set of exactly L features per
    class each epoch (sampling without replacement). Same class balance in expectation.
  * not read: the running epoch's features against its running mean. Early in an epoch a tail
    class's running mean rests on one or two features, and aligning to it would move the class's
    whole back-tracked set onto them. queue = n_max (the head's count) instead of the default makes
    every class hold as many features as the head has images.

Size: the rings hold C·L + N features (L completed ones plus the epoch being written, per class) of
D floats, with one int64 epoch tag each, plus E·C·D float sums for the means (E = epochs). ``attach``
refuses a configuration needing more than 2 GiB (ImageNet-LT, ResNet-10, D=512, 200 epochs: ~0.8 GiB).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, MethodError, float_logits, register

MAX_MEMORY_BYTES = 2 * 2**30


class BreadcrumbParams(MethodParams):
    queue: int = Field(0, ge=0, description="features read per class; 0 = ceil(N / C), the mean class size")
    balanced_weight: float = Field(1.0, gt=0, description="weight of the class-balanced head's CE term")


class FeatureMemory:
    """Per-class rings of past features with their epoch tags, and per-epoch class sums for the means.

    All rings live in one flat [sum_c capacity_c, D] tensor; class c owns rows start_c … start_c +
    capacity_c − 1, with capacity_c = queue + n_c so the epoch being written never overwrites the
    ``queue`` newest features of completed epochs. ``written[c]`` counts every feature ever pushed for
    c; the next one goes to row start_c + written[c] mod capacity_c (the oldest once the ring is full).
    """

    def __init__(self, class_counts: torch.Tensor, queue: int, epochs: int, dim: int,
                 device: torch.device | str = "cpu"):
        counts = torch.as_tensor(class_counts).to(device=device, dtype=torch.int64)
        self.num_classes, self.queue, self.epochs, self.dim = len(counts), int(queue), int(epochs), int(dim)
        self.capacity = self.queue + counts
        self.start = torch.cumsum(self.capacity, 0) - self.capacity
        rows = int(self.capacity.sum())
        # One row more than the rings: where push writes the features a ring cannot hold (never read),
        # so a batch is stored without a boolean mask, whose size the host would wait for.
        self.scratch = rows
        self._feats = torch.zeros(rows + 1, dim, device=device)
        self._tags = torch.full((rows + 1,), -1, dtype=torch.int64, device=device)
        self.feats, self.tags = self._feats[:rows], self._tags[:rows]
        self.written = torch.zeros(self.num_classes, dtype=torch.int64, device=device)
        self.sums = torch.zeros(epochs, self.num_classes, dim, device=device)
        self.counts = torch.zeros(epochs, self.num_classes, dtype=torch.int64, device=device)
        self.pushed = False

    @staticmethod
    def nbytes(class_counts: torch.Tensor, queue: int, epochs: int, dim: int) -> int:
        """Bytes the memory takes: (C·queue + N) rows of D float32 + an int64 tag, E·C·(D float32 + int64)."""
        c, n = len(class_counts), int(torch.as_tensor(class_counts).sum())
        return (c * queue + n) * (4 * dim + 8) + epochs * c * (4 * dim + 8)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def held(self) -> torch.Tensor:
        """Features each class's ring holds now."""
        return torch.minimum(self.written, self.capacity)

    def class_features(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, epoch tags) held for class c, oldest first (for inspection and tests)."""
        held, cap, start = int(self.held()[c]), int(self.capacity[c]), int(self.start[c])
        rows = start + (int(self.written[c]) - held + torch.arange(held, device=self.device)) % cap
        return self.feats[rows], self.tags[rows]

    def push(self, feats: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """Store a batch's features (detached) under ``epoch`` and add them to that epoch's class sums."""
        if not 0 <= epoch < self.epochs:
            raise MethodError(f"breadcrumb: epoch {epoch} is outside the {self.epochs}-epoch budget the memory "
                              "was sized for; build the method with the run's epochs")
        feats, labels = feats.detach().to(self.feats.dtype), labels.long()
        # Per-class counts as a one-hot sum: bincount's output size would be read back from the device.
        in_batch = F.one_hot(labels, self.num_classes).sum(0)
        # Rank of each item within its class, in batch order: a stable sort keeps the order of arrival.
        order = torch.argsort(labels, stable=True)
        ys = labels[order]
        rank = torch.arange(len(ys), device=ys.device) - (torch.cumsum(in_batch, 0) - in_batch)[ys]
        keep = rank >= in_batch[ys] - self.capacity[ys]  # more than a ring holds: only its newest are kept
        slots = self.start[ys] + (self.written[ys] + rank) % self.capacity[ys]
        slots = torch.where(keep, slots, torch.full_like(slots, self.scratch))  # the others: the scratch row
        self._feats[slots] = feats[order]
        self._tags[slots] = epoch
        self.pushed = True
        self.written += in_batch
        # A one-hot product rather than index_add_: deterministic on CUDA too, so resumes repeat exactly.
        self.sums[epoch] += F.one_hot(labels, self.num_classes).to(feats.dtype).T @ feats
        self.counts[epoch] += in_batch

    def mean(self, epochs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """μ[e, c] for paired index tensors (every pair must have features)."""
        return self.sums[epochs, classes] / self.counts[epochs, classes, None]

    def target_epochs(self, epoch: int) -> torch.Tensor:
        """Per class, the latest completed epoch (< ``epoch``) with its features, else ``epoch`` itself."""
        if epoch == 0:
            return torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        seen = self.counts[:epoch] > 0
        index = torch.arange(epoch, device=self.device)[:, None]
        latest = torch.where(seen, index, torch.full_like(index, -1)).amax(0)
        return torch.where(latest >= 0, latest, torch.full_like(latest, epoch))

    def readable(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(readable count, newest-readable write index, alignment epoch) per class during ``epoch``."""
        target = self.target_epochs(epoch)
        current = torch.where(target < epoch, self.counts[epoch], torch.zeros_like(target))  # not read yet
        count = (self.held() - current).clamp(min=0, max=self.queue)
        return count, self.written - current - 1, target

    def sample(self, n: int, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n class-balanced draws during ``epoch``: (aligned features [n, D], their classes [n])."""
        if not self.pushed:  # a host flag: after any push some class has readable features
            raise MethodError("breadcrumb: the feature memory is empty; push a batch before sampling")
        count, newest, target = self.readable(epoch)
        dev = self.device
        # A class drawn uniformly among those with features: the j-th of them (j uniform below their
        # number) found with a search on their running count, not with nonzero (a host sync).
        nonempty = (count > 0).long()
        seen = torch.cumsum(nonempty, 0)
        j = (torch.rand(n, device=dev, generator=generator) * seen[-1]).long().clamp(max=seen[-1] - 1)
        classes = torch.searchsorted(seen, j + 1)
        k = count[classes]
        back = (torch.rand(n, device=dev, generator=generator) * k).long().clamp(max=k - 1)  # 0 = newest
        slots = self.start[classes] + (newest[classes] - back) % self.capacity[classes]
        tags = self.tags[slots]
        # f + (μ_target − μ_e) rather than f − μ_e + μ_target: exactly f when the two epochs are the same.
        shift = self.mean(target[classes], classes) - self.mean(tags, classes)
        return self.feats[slots] + shift, classes

    def state_dict(self) -> dict:
        return {"feats": self.feats, "tags": self.tags, "written": self.written, "sums": self.sums,
                "counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        for key, value in self.state_dict().items():
            if state[key].shape != value.shape:
                raise MethodError(f"breadcrumb: checkpointed memory '{key}' has shape {tuple(state[key].shape)}, "
                                  f"this run's is {tuple(value.shape)}; resume with the same data, queue and epochs")
            value.copy_(state[key])
        self.pushed = self.pushed or bool(state["written"].sum() > 0)  # once, on restore


class BalancedHeadView(nn.Module):
    """The model's backbone followed by its class-balanced head (what Breadcrumb predicts with)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fc_balanced(self.model(x, features=True)[1])


@register("breadcrumb")
class Breadcrumb(Method):
    """Breadcrumb / EMANATE: see the module docstring for the loss, the memory and the defaults."""

    Params = BreadcrumbParams
    uses_features = True

    def __init__(self, class_counts, params: BreadcrumbParams, *, epochs: int = 200):
        super().__init__(class_counts, params, epochs=epochs)
        self.queue = params.queue or math.ceil(int(self.class_counts.sum()) / self.num_classes)
        self.balanced_head: Optional[nn.Linear] = None  # not `head`: that names the main head's kind
        self.memory: Optional[FeatureMemory] = None
        self.generator: Optional[torch.Generator] = None
        self.seed = 0
        self._pending: Optional[dict] = None  # a checkpoint's state, loaded once the memory's device is known

    def memory_bytes(self, dim: int) -> int:
        return FeatureMemory.nbytes(self.class_counts, self.queue, self.epochs, dim)

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        dim = int(model.feature_dim)
        need = self.memory_bytes(dim)
        if need > MAX_MEMORY_BYTES:
            raise MethodError(
                f"breadcrumb: the feature memory would need {need / 2**30:.1f} GiB ({self.num_classes} classes × "
                f"queue {self.queue} + {int(self.class_counts.sum())} images, D={dim}, {self.epochs} epochs; limit "
                f"{MAX_MEMORY_BYTES / 2**30:.0f} GiB); lower 'queue' or the epoch budget")
        device = next(model.parameters()).device
        model.fc_balanced = nn.Linear(dim, self.num_classes).to(device)
        self.balanced_head = model.fc_balanced
        # Drawn from the run's seeded global generator: another training seed gives other draws.
        self.seed = int(torch.randint(0, 2**62, (1,)))
        return list(model.fc_balanced.parameters())

    def eval_model(self, model: nn.Module) -> nn.Module:
        return BalancedHeadView(model)

    def _ready(self, features: torch.Tensor) -> FeatureMemory:
        """The memory and generator on the features' device, created (or restored) on first use."""
        if self.memory is None:
            self.memory = FeatureMemory(self.class_counts, self.queue, self.epochs, features.shape[1], features.device)
            self.generator = torch.Generator(device=features.device).manual_seed(self.seed)
            if self._pending is not None:
                self.memory.load_state_dict(self._pending["memory"])
                state = self._pending["generator"]
                if state.numel() == self.generator.get_state().numel():
                    self.generator.set_state(state)
                # else: saved on another kind of device (a CPU and a CUDA generator's states do not fit
                # each other): the draws restart from the run's seed; the memory itself resumes exactly
                self._pending = None
        return self.memory

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None, features=None, teacher_features=None):
        if features is None:
            raise MethodError("breadcrumb: needs the penultimate features; pass features=model(x, features=True)[1]")
        if self.balanced_head is None:
            raise MethodError("breadcrumb: call attach(model) first; it adds the class-balanced head fc_balanced")
        ce = F.cross_entropy(float_logits(logits), targets)
        memory = self._ready(features)
        memory.push(features.detach().float(), targets, epoch)
        feats, classes = memory.sample(len(targets), epoch, self.generator)
        balanced = F.cross_entropy(float_logits(self.balanced_head(feats)), classes)
        return ce + self.params.balanced_weight * balanced

    def state_dict(self) -> dict:
        if self.memory is None:
            return dict(self._pending) if self._pending else {}
        return {"memory": self.memory.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._pending = {"memory": dict(state["memory"]), "generator": state["generator"]}
        self.memory = None  # rebuilt on the next step, on the features' device
