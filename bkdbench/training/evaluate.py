"""Evaluation: balanced top-1 (mean per-class recall), per-class accuracy, many/medium/few-shot
accuracy, expected calibration error (15 equal-width bins) and NLL. Accuracies and ECE in percent."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

ECE_BINS = 15


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor],
            batch_size: int = 1000, autocast: Optional[torch.dtype] = None) -> torch.Tensor:
    """Logits (float32) for uint8 ``images``; ``prepare`` normalises (and sets memory format)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare(images[start : start + batch_size])
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def per_class_accuracy(pred: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class in percent; NaN for a class with no samples."""
    correct = torch.bincount(targets[pred == targets], minlength=num_classes).double()
    total = torch.bincount(targets, minlength=num_classes).double()
    return torch.where(total > 0, 100.0 * correct / total.clamp_min(1), torch.full_like(total, math.nan))


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Σ_b |B_b|/N · |acc_b − conf_b| over equal-width confidence bins (lo, hi], in percent."""
    conf, pred = probs.max(dim=1)
    correct = (pred == targets).double()
    conf = conf.double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 cannot occur for a softmax max.
    which = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(which, minlength=bins).double()
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    conf_sum = torch.bincount(which, weights=conf, minlength=bins)
    gap = (acc_sum - conf_sum).abs()  # = |B|·|acc_b − conf_b|
    return float(100.0 * gap.sum() / len(targets))


def _mean(values: torch.Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           shots: Optional[dict[str, Sequence[int]]] = None) -> dict:
    """Metrics for logits that are already the method's prediction logits (``eval_logits``)."""
    logits, targets = logits.float().cpu(), targets.cpu()
    pred = logits.argmax(dim=1)
    acc = per_class_accuracy(pred, targets, num_classes)
    out = {
        "top1": _mean(acc),  # balanced accuracy: classes absent from the split are skipped
        "per_class_acc": [float(a) for a in acc],
        "ece": expected_calibration_error(F.softmax(logits, dim=1), targets),
        "nll": float(F.cross_entropy(logits, targets)),
    }
    for split, classes in (shots or {}).items():
        out[split] = _mean(acc[list(classes)]) if len(classes) else math.nan
    return out
