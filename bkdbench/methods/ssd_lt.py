"""SSD-LT: "Self Supervised to Distillation for Long-Tailed Visual Recognition" (Li, Wang, Wu, ICCV 2021;
code MCG-NJU/SSD-LT, ImageNet-LT with ResNeXt-50 on 8 GPUs), ported to bkdbench's models and recipes
as three runs, each with its own run id, cached and reused like teachers:

I. ``ssd-lt-stage1`` — self-supervised guided feature learning. The model (encoder + linear classifier)
   trains with CE on labels plus a MoCo-style contrastive loss (weight 1). Queries: the encoder's
   features of the usual training view through a 2-layer MLP (d→d, ReLU, d→128), L2-normalised. Keys:
   the same from a momentum copy of encoder and MLP (m = 0.999, updated before each key forward) on a
   MoCo-v2 view of the same images (``data.augment.moco_v2_view``); on a budget of fewer steps than the
   authors' ~61k the per-step momentum is 0.999^(61000/steps), so that the key encoder ends as far from
   its initial weights as theirs (``momentum_horizon="budget"``; ``"fixed"``: 0.999 per step). A queue of K keys and their labels
   (initialised as the authors do: random unit vectors, label 0) gives the negatives; with T = 0.2,

       L_con = −mean_i [ q_i·k_i/T − log( exp(q_i·k_i/T) + Σ_{j: label_j ≠ y_i} exp(q_i·queue_j/T) ) ]

   (queue entries of the query's own label leave the denominator: label-aware instance
   discrimination, not supervised-contrastive positives). K = the largest multiple of the batch size
   not above the training-set size (CIFAR-100-LT IF100, batch 128: 10,752); every epoch drops its
   last partial batch so that the queue advances by whole batches, as the authors' drop_last does.
   Shuffle BN: the authors shuffle keys across 8 GPUs so that a batch's key statistics differ from its
   queries'. On one device the key batch is shuffled and split into ``key_bn_groups`` sub-batches (4:
   32 images each at batch 128, as 256 over 8 GPUs) whose BatchNorm statistics are computed apart.
II. ``ssd-lt-stage2`` — soft-label generator: stage I's encoder and classifier frozen, one learnable
   scale per class multiplying the classifier's output (bias included: the authors' file is named
   ``tau_norm_classifier`` but this is LWS), class-balanced sampling, CE, last partial batch dropped.
   Its recipe: on ImageNet-LT at the stage-1 recipe's own budget, the authors' (``ssd_stage_ii.py``:
   5 epochs, batch 512, lr 0.2, wd 5e-4, ``--cos``: the ``imagenet-lt-stage2`` recipe); elsewhere, or
   when ``stage2_fraction`` is given, ``stage2_fraction`` of stage I's budget on its recipe (0.1, as
   bkdbench's other stage-2 methods). The authors' class-aware sampler takes 2 images per class visit;
   bkdbench's draws a class uniformly for every image (data/loader.py), the same class balance.
   The model stays in training mode, as the authors' ``model.train()`` leaves it, so the frozen
   encoder's BatchNorm statistics are re-estimated on the class-balanced batches.
III. ``ssd-lt`` — joint training with self-distillation: a fresh model with two linear heads on one
   encoder, the hard head (the model's own ``fc``) trained with CE on labels (instance-balanced) and
   the soft head with KD from the frozen stage-II model, T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch
   mean, T = 2; loss = CE + KD. The soft head is the row's headline; the hard head's accuracy is in
   ``extra`` (``hard_head_top1``, ``hard_head_val_top1``). The authors' teacher sits inside the
   trained module, so ``model.train()`` puts its BatchNorm in training mode too (batch statistics):
   ``teacher_bn="batch"`` (default) does the same, ``"running"`` uses its stored statistics instead.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.data.augment import moco_v2_view
from bkdbench.methods.decoupled import ScaledLinear
from bkdbench.methods.params import MethodParams, Temperature
from bkdbench.methods.registry import Method, MethodError, float_logits, register

ATTACHED = "ssd."  # stage I's key encoder, projections and queue live under this prefix of the model


# ---------------------------------------------------------------- stage I


class Stage1Params(MethodParams):
    temperature: Temperature = 0.2
    momentum: Annotated[float, Field(ge=0, lt=1, description="momentum of the key encoder")] = 0.999
    # "budget": the per-step momentum is momentum ** (AUTHORS_STEPS / steps) on a budget of fewer steps, so
    # that the key encoder keeps the same share of its initial weights at the end as the authors' ~61k-step
    # run (0.999^61000 ≈ 0); "fixed": `momentum` per step whatever the budget (bkdbench before this option:
    # after 10 CIFAR epochs the key encoder still held ~38 % of its random initial weights).
    momentum_horizon: Literal["budget", "fixed"] = "budget"
    dim: Annotated[int, Field(ge=1, description="dimension of the contrastive projection")] = 128
    queue: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="queue length; auto = the largest multiple of the batch size not above the training-set size")
    contrastive_weight: Annotated[float, Field(ge=0, description="weight of the contrastive term")] = 1.0
    key_bn_groups: Annotated[int, Field(ge=1, description="sub-batches with their own BatchNorm statistics for the keys")] = 4


def mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))


class KeyBranch(nn.Module):
    """The momentum copy of the encoder and the query projection, the queue of keys and labels."""

    def __init__(self, model: nn.Module, dim: int, queue: int):
        super().__init__()
        feature_dim = int(model.feature_dim)
        device = next(model.parameters()).device
        self.proj_q = mlp(feature_dim, dim).to(device)
        self.encoder_k = copy.deepcopy(model).requires_grad_(False)
        self.proj_k = copy.deepcopy(self.proj_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue, device=device), dim=0))
        self.register_buffer("queue_labels", torch.zeros(queue, dtype=torch.long, device=device))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def momentum_update(self, model: nn.Module, m: float) -> None:
        query = {k: v for k, v in model.named_parameters() if not k.startswith(ATTACHED)}
        keys = [key for _, key in self.encoder_k.named_parameters()] + list(self.proj_k.parameters())
        queries = ([query[name].detach() for name, _ in self.encoder_k.named_parameters()]
                   + [q.detach() for q in self.proj_q.parameters()])
        # the same k·m + q·(1 − m) per tensor, in a few multi-tensor kernels instead of two per tensor
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, queries, alpha=1 - m)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, groups: int, generator: torch.Generator) -> torch.Tensor:
        """Normalised keys of ``x``, BatchNorm statistics per shuffled sub-batch, in ``x``'s order."""
        order = torch.randperm(len(x), generator=generator)  # the run's CPU shuffle stream
        if x.device.type == "cuda":  # pinned and asynchronous: a pageable copy would wait for the device
            order = order.pin_memory().to(x.device, non_blocking=True)
        parts = [self.proj_k(self.encoder_k(chunk, features=True)[1]) for chunk in x[order].chunk(groups)]
        keys = torch.empty_like(torch.cat(parts))
        keys[order] = torch.cat(parts)
        return F.normalize(keys.float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        n, size = len(keys), self.queue.shape[1]
        slots = (self.queue_ptr + torch.arange(n, device=keys.device)) % size  # the pointer stays on the device
        self.queue[:, slots] = keys.T.to(self.queue.dtype)
        self.queue_labels[slots] = labels
        self.queue_ptr.copy_((self.queue_ptr + n) % size)


def label_masked_contrastive(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor,
                             queue_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SSD-LT's contrastive loss (see the module docstring), computed with a log-sum-exp."""
    pos = (q * k).sum(1, keepdim=True) / temperature
    neg = (q @ queue) / temperature
    neg = neg.masked_fill(queue_labels[None, :] == labels[:, None], float("-inf"))
    return (torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos.squeeze(1)).mean()


@register("ssd-lt-stage1")
class SSDStage1(Method):
    """SSD-LT stage I: CE + label-masked MoCo contrastive loss, momentum key encoder and labelled queue."""

    Params = Stage1Params
    views = 2
    drop_last = True

    AUTHORS_STEPS = 61_000  # the authors' stage-I run on ImageNet-LT, about (REFERENCE.md §4a)

    @property
    def key_momentum(self) -> float:
        """The per-step momentum of the key encoder (``momentum_horizon``, Stage1Params)."""
        m = self.params.momentum
        if self.params.momentum_horizon == "fixed" or not self.batch_size:
            return m
        steps = self.epochs * (self.num_train // self.batch_size)  # drop_last: whole batches
        return m ** (self.AUTHORS_STEPS / steps) if 0 < steps < self.AUTHORS_STEPS else m

    def queue_length(self) -> int:
        if self.params.queue != "auto":
            return int(self.params.queue)
        if not self.batch_size:
            raise MethodError("ssd-lt-stage1: queue='auto' needs the recipe's batch size (build(..., batch_size=B))")
        size = self.num_train // self.batch_size * self.batch_size
        if size == 0:
            raise MethodError(f"ssd-lt-stage1: the training set ({self.num_train} images) holds no full "
                              f"batch of {self.batch_size}")
        return size

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        model.ssd = KeyBranch(model, self.params.dim, self.queue_length())
        # Drawn from the run's seeded global generator: another training seed shuffles differently.
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        return list(model.ssd.proj_q.parameters())

    def state_dict(self) -> dict:
        return {"shuffle_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "shuffle_rng" in state:
            self.generator.set_state(state["shuffle_rng"])

    def second_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return moco_v2_view(images, generator)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)  # the classification term alone

    def train_step(self, model, optimizer, x, y, *, epoch, teacher=None, autocast=None, views=()):
        (x_key,) = views
        plain = getattr(model, "_orig_mod", model)  # under torch.compile, the parameters' own names
        branch = plain.ssd
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            logits, feats = model(x, features=True)
            q = F.normalize(branch.proj_q(feats).float(), dim=1)
            branch.momentum_update(plain, self.key_momentum)
            k = branch.keys(x_key, self.params.key_bn_groups, self.generator)
        contrastive = label_masked_contrastive(q, k, y, branch.queue, branch.queue_labels, self.params.temperature)
        loss = self.loss(logits, y) + self.params.contrastive_weight * contrastive
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        branch.enqueue(k, y)
        return loss.detach()


# ---------------------------------------------------------------- stage II


class Stage2Params(MethodParams):
    stage2_fraction: float = Field(0.1, gt=0, le=1, description="stage-2 epochs as a fraction of stage I's")
    # The authors' loader drops each epoch's last partial batch; False keeps it (bkdbench's earlier rule)
    drop_last: bool = True


@register("ssd-lt-stage2")
class SSDStage2(Method):
    """SSD-LT stage II: per-class scales on stage I's frozen classifier, class-balanced sampling."""

    Params = Stage2Params
    needs_teacher = True
    teacher_method = "ssd-lt-stage1"
    stage1 = True
    sampler = "class-balanced"
    drop_last = True  # the authors' stage-II loader (set per run from the parameter)

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self.drop_last = params.drop_last

    @classmethod
    def stage2_recipe(cls, recipe: str) -> "tuple[str, int] | None":
        """The authors' stage II (module docstring), used at the stage-1 recipe's own budget."""
        return {"imagenet-lt": ("imagenet-lt-stage2", 5)}.get(recipe)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)

    def prepare(self, model: nn.Module, stage1_state: dict) -> list[nn.Parameter]:
        model.load_state_dict({k: v for k, v in stage1_state.items() if not k.startswith(ATTACHED)})
        model.requires_grad_(False)
        self.restructure(model)
        return [model.fc.scale]

    @classmethod
    def restructure(cls, model: nn.Module) -> None:
        model.fc = ScaledLinear(model.fc, scale_bias=True)  # the authors scale the output, bias included


# ---------------------------------------------------------------- stage III


class SSDParams(MethodParams):
    temperature: Temperature = 2.0
    teacher_bn: Literal["batch", "running"] = "batch"


class SoftHead(nn.Module):
    """The model's encoder with its soft (distilled) head: the predictions SSD-LT reports."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.kd_head(self.model(x, features=True)[1])


@register("ssd-lt")
class SSDLT(Method):
    """SSD-LT stage III: hard head CE + soft head KD (T = 2) from the frozen stage-II model."""

    Params = SSDParams
    needs_teacher = True
    teacher_method = "ssd-lt-stage2"

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        device = next(model.parameters()).device
        model.kd_head = nn.Linear(int(model.feature_dim), self.num_classes).to(device)
        return list(model.kd_head.parameters())

    def eval_model(self, model: nn.Module) -> nn.Module:
        return SoftHead(model)

    def report_heads(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"hard_head": model}

    def distillation(self, soft_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        T = self.params.temperature
        return F.kl_div(F.log_softmax(soft_logits / T, dim=-1), F.softmax(teacher_logits / T, dim=-1),
                        reduction="batchmean") * T * T

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None, soft_logits=None) -> torch.Tensor:
        """CE of the hard head's ``logits`` + KD of ``soft_logits`` (the soft head) from the teacher."""
        if teacher_logits is None or soft_logits is None:
            raise MethodError("ssd-lt: the loss needs the soft head's logits and the stage-II teacher's")
        return F.cross_entropy(float_logits(logits), targets) + self.distillation(float_logits(soft_logits),
                                                                                  float_logits(teacher_logits))

    def train_step(self, model, optimizer, x, y, *, epoch, teacher=None, autocast=None, views=()):
        if teacher is None:
            raise MethodError("ssd-lt needs its frozen stage-II model as the teacher")
        teacher.train(self.params.teacher_bn == "batch")
        with torch.no_grad():  # the stage-II teacher in fp32, outside autocast (methods/step.py)
            t_logits = teacher(x)
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            hard, feats = model(x, features=True)
            soft = model.kd_head(feats)
        loss = self.loss(hard.float(), y, teacher_logits=t_logits.detach(), soft_logits=soft.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
