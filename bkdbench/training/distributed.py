"""Data-parallel training of one run on several workers: the torch-only half (no Ray).

``train(spec, distributed=Distributed(rank, world_size))`` runs on every worker of a process group
that the caller has already initialised (``torch.distributed.init_process_group``: NCCL on CUDA,
gloo on CPU; Ray Train's TorchTrainer does it in ``orchestrate/workers.py``, a test does it with
``torch.multiprocessing``). With ``world_size == 1`` (the default) nothing here is used and
``train`` is the single-process code path it always was.

What a run on W workers does, and why it ends where one worker would (up to float rounding):

- **Batches.** The recipe's batch size stays the *global* batch and its learning rate stays the
  recipe's. Every worker draws the same seeded permutation of each epoch and trains on its
  contiguous, disjoint slice of every global batch (``data/shards.py``: rows ``[b·r//W, b·(r+1)//W)``,
  sizes differing by at most one; an epoch's last batch with fewer than W images is skipped).
  Augmentation draws are made for the whole global batch, so every image gets the crop and flip it
  gets on one worker.
- **Gradients.** The model is wrapped in ``DistributedDataParallel``, which averages gradients over
  the W workers. Each worker's loss is the mean over its shard of n_r images; to make the average
  the gradient of the mean over the global batch of b images even when the shards are unequal, the
  gradient flowing back from the model's outputs is scaled by W·n_r/b (exactly 1 when b divides
  evenly). Weight decay and momentum then act on identical gradients on every worker.
- **BatchNorm** (``sync_batchnorm=True``, the default): batch statistics over the whole global
  batch, as on one worker. CUDA uses ``torch.nn.SyncBatchNorm``; torch's refuses CPU tensors, so on
  CPU (gloo) ``GlobalBatchNorm`` below all-reduces each layer's per-channel count, mean and sum of
  squared deviations (one all-reduce forward, one backward, per layer). Running statistics are then identical on every worker and the
  buffers need no broadcast. With ``sync_batchnorm=False`` every worker normalises with its own
  shard's statistics (cheaper, and *not* equivalent to one worker: a per-worker batch of b/W) and
  DDP copies rank 0's running statistics to the others at every forward.
- **Teachers** are frozen copies on every worker and see the worker's own shard.
- **The epoch's loss** is all-reduced (summed loss and image count), so every worker records the
  same ``train_loss`` and the same images per epoch; a diverged run stops on every worker at once.
- **Evaluation** runs on every worker over the full validation/test split (identical weights, so
  identical numbers); a method that changes the model at the end (τ-norm's τ chosen on validation)
  does so the same way everywhere. Only rank 0 *reports* (the caller's ``report`` decides).

Not supported yet on several workers (``check_supported`` refuses them with one line): methods that
own their training step (SSD-LT) and methods that train parameters outside the model (CBD's
projection); ``compile`` is applied on top of DDP.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in the run's process group (already initialised when world_size > 1)."""

    rank: int = 0
    world_size: int = 1
    sync_batchnorm: bool = True

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size}")


SINGLE = Distributed()

# GlobalBatchNorm needs an all-reduce that autograd flows through; torch 2.14 points to a private
# module instead (torch.distributed._functional_collectives), so the public one stays, unwarned.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


def backend_for(device: torch.device) -> str:
    """The process-group backend for a device type: NCCL on CUDA, gloo on CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch of every worker, on any device
    (torch's SyncBatchNorm works only on CUDA). One all-reduce per layer gathers every worker's
    per-channel (count, mean, sum of squared deviations), combined exactly; autograd flows through it, so
    the backward pass is the one of BatchNorm over the global batch. Evaluation and a world of one
    are plain ``F.batch_norm``. Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf, c = (x if x.dtype == torch.float64 else x.float()), x.size(1)
        rank, world = dist.get_rank(), dist.get_world_size()
        n = float(x.numel() // c)
        local_mean = xf.mean(dims) if n else xf.new_zeros(c)
        local_m2 = ((xf - local_mean.view(shape)) ** 2).sum(dims)
        # All ranks' (count, mean, M2), gathered as an all-reduce of one slot per rank (autograd
        # flows through all_reduce on every backend), then combined exactly (Chan et al.):
        # no E[x²] − E[x]² cancellation.
        slots = xf.new_zeros(world, 2 * c + 1)
        slots = slots.index_copy(0, torch.tensor([rank], device=x.device),
                                 torch.cat([xf.new_full((1,), n), local_mean, local_m2]).view(1, -1))
        slots = all_reduce(slots)
        counts, means, m2s = slots[:, :1], slots[:, 1:c + 1], slots[:, c + 1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / total  # biased, for normalising
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (total / (total - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` made global-batch: torch's SyncBatchNorm on CUDA,
    ``GlobalBatchNorm`` elsewhere. Parameters and buffers are kept (the same tensors)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, device))
    return out


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ShardWeighted(nn.Module):
    """The model, with the gradient from its outputs scaled by ``scale`` (W·n_r/b, set per step):
    DDP's average of the workers' gradients is then the gradient of the global batch's mean loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.scale = 1.0

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if self.scale == 1.0:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)(_ScaleGrad.apply(o, self.scale) if torch.is_tensor(o) else o for o in out)
        return _ScaleGrad.apply(out, self.scale)


def check_supported(method, model: nn.Module, trainable: list) -> None:
    """Refuse, with one line, what several workers do not handle yet (module docstring)."""
    from bkdbench.methods.registry import Method

    name = getattr(method, "name", type(method).__name__)
    if type(method).train_step is not Method.train_step:
        raise ValueError(f"{name} owns its training step: not supported on several workers per trial yet")
    inside = {id(p) for p in model.parameters()}
    if any(id(p) not in inside for p in trainable):
        raise ValueError(f"{name} trains parameters outside the model: not supported on several workers per trial yet")


def wrap_model(model: nn.Module, distributed: Distributed, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP over ``ShardWeighted(model)``. ``model`` itself stays
    the plain module (state dicts, evaluation, checkpoints)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = torch.device(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # Buffers: global-batch BatchNorm keeps them equal everywhere, so no copy at every forward
    # (torch 2.14 renamed the option; older torch, e.g. 2.11 on GPU machines, has only the old name).
    sync = not distributed.sync_batchnorm
    option = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    return DDP(ShardWeighted(model), device_ids=ids, **{option: sync})


def set_shard_size(step_model: nn.Module, distributed: Distributed, shard: int, global_batch: int) -> None:
    """Before a step: weight this worker's gradient by its share of the global batch."""
    step_model.module.scale = distributed.world_size * shard / global_batch


def epoch_totals(loss_sum: torch.Tensor, images: int) -> tuple[torch.Tensor, int]:
    """The epoch's summed loss and image count over every worker (one all-reduce)."""
    both = torch.stack([loss_sum.detach().double(), torch.tensor(float(images), dtype=torch.float64,
                                                                 device=loss_sum.device)])
    dist.all_reduce(both)
    return both[0].to(loss_sum.dtype), int(round(float(both[1])))


def device_names(name: str, distributed: Distributed) -> str:
    """Every worker's device, as one string: "cpu" when all are the same, else the names joined."""
    names: list[Optional[str]] = [None] * distributed.world_size
    dist.all_gather_object(names, name)
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else ", ".join(str(n) for n in unique)
