"""The plain training step every loss shares: the student's forward, the frozen teachers' forward on
the same batch, the method's loss, backward and step. ``Method.train_step`` runs it unless a method
owns its step; ``bkdbench bench`` times it through ``training.train.train_step``."""
from __future__ import annotations

from typing import Optional

import torch


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, method, x: torch.Tensor, y: torch.Tensor, *,
               epoch: int, teacher=None, autocast: Optional[torch.dtype] = None) -> torch.Tensor:
    """One SGD step on a prepared batch (normalised, laid out); returns the loss, detached, without a
    host sync. ``teacher`` is one frozen model or a list of them."""
    features = method.uses_features
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        logits, feats = model(x, features=True) if features else (model(x), None)
        with torch.no_grad():
            t_logits, t_feats = teacher_outputs(teacher, x, features)
    extra = {"features": feats.float(), "teacher_features": t_feats} if features else {}
    loss = method.loss(logits.float(), y, epoch=epoch, teacher_logits=t_logits, **extra)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def cast_frozen(teacher, dtype: Optional[torch.dtype]):
    """A frozen teacher (or a list of them) with its convolution and linear weights stored in the
    autocast ``dtype`` once. Autocast would cast them on every forward (it caches casts only of weights
    that require gradients): the same rounding, one copy of every weight per step less. Other layers
    (BatchNorm, cosine heads) keep float32, as under autocast. ``dtype`` None: unchanged."""
    if dtype is None or teacher is None:
        return teacher
    for t in (teacher if isinstance(teacher, (list, tuple)) else [teacher]):
        for module in t.modules():
            if type(module) in (torch.nn.Conv2d, torch.nn.Linear):
                module.to(dtype)
    return teacher


def teacher_outputs(teacher, x: torch.Tensor, features: bool):
    """(logits, features or None) of a frozen teacher in float32; lists of both for several teachers."""
    if teacher is None:
        return None, None
    many = isinstance(teacher, (list, tuple))
    outs = [t(x, features=True) if features else (t(x), None) for t in (teacher if many else [teacher])]
    logits = [o[0].float() for o in outs]
    feats = [o[1].float() for o in outs] if features else None
    return (logits, feats) if many else (logits[0], feats[0] if feats else None)
