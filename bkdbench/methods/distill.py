"""Knowledge distillation from a CE-trained teacher: vanilla KD and Balanced KD.

One implementation serves both names; `kd` is BKD with the teacher's distribution left unweighted.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from bkdbench.methods.params import Alpha, Beta, CbStart, MethodParams, Temperature
from bkdbench.methods.registry import Method, MethodError, float_logits, register


class _DistillParams(MethodParams):
    alpha: Alpha = 1.0
    temperature: Temperature = 2.0
    beta: Beta = 0.9999
    cb_start: CbStart = 0.0


class BKDParams(_DistillParams):
    ce_weighting: Literal["instance", "class-balanced"] = "instance"
    kd_weighting: Literal["class-balanced", "none"] = "class-balanced"
    renormalize: bool = True


@register("bkd")
class BalancedKD(Method):
    """Balanced Knowledge Distillation (Shaoyu Zhang, Chen Chen, Xiyuan Hu, Silong Peng; arXiv:2104.10510,
    2021; Neurocomputing 2023).

    q = softmax(z_t / T) from the frozen teacher, w = class-balanced weights (beta), and
    q'_j = w_j * q_j / sum_k w_k * q_k: every class of the teacher's distribution is weighted, then
    each row renormalised (the weight is not picked by the label). The loss is
        CE(z_s, y) + alpha * T^2 * KL(q' || softmax(z_s / T)),
    KL summed over classes and averaged over the batch. Before cb_epoch, w = 1 (plain KD).
    Defaults alpha=1, temperature=2, beta=0.9999, cb_start=0 (suites set e.g. 0.8 for CIFAR-10).

    Ablation knobs (defaults give BKD): ce_weighting="class-balanced" weights the CE term too (from
    cb_epoch); kd_weighting="none" gives vanilla KD; renormalize=False uses q'_j = w_j * q_j as is.
    """

    Params = BKDParams
    needs_teacher = True

    @property
    def ce_class_balanced(self) -> bool:
        return self.params.ce_weighting == "class-balanced"

    @property
    def kd_class_balanced(self) -> bool:
        return self.params.kd_weighting == "class-balanced"

    def teacher_targets(self, teacher_logits: torch.Tensor, epoch: int) -> torch.Tensor:
        """The distillation target q (or q') for each row, given the teacher's logits."""
        q = F.softmax(teacher_logits / self.params.temperature, dim=-1)
        w = self.cb_weights(q, epoch) if self.kd_class_balanced else None
        if w is None:
            return q
        q = q * w
        return q / q.sum(dim=-1, keepdim=True) if self.params.renormalize else q

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        if teacher_logits is None:
            raise MethodError(f"{self.name}: distillation needs teacher_logits (the frozen teacher's "
                              "logits on the same batch); pass teacher_logits=teacher(x)")
        if teacher_logits.shape != logits.shape:
            raise MethodError(f"{self.name}: teacher_logits shape {tuple(teacher_logits.shape)} does not "
                              f"match the student's {tuple(logits.shape)}")
        z = float_logits(logits)
        T = self.params.temperature
        ce_weight = self.cb_weights(z, epoch) if self.ce_class_balanced else None
        ce = F.cross_entropy(z, targets, weight=ce_weight)
        q = self.teacher_targets(teacher_logits.detach().to(z.dtype), epoch)
        kl = F.kl_div(F.log_softmax(z / T, dim=-1), q, reduction="batchmean")
        return ce + (self.params.alpha * T * T) * kl


class KDParams(_DistillParams):
    weighted_ce: bool = False
    # With weighted_ce, the CE weights switch on at 80% of the budget (epoch 160 of 200), as the
    # reference's KD baseline (its DRW rule); cb_start=0 weights CE from the first epoch.
    cb_start: CbStart = 0.8


@register("kd")
class VanillaKD(BalancedKD):
    """Knowledge distillation (Hinton, Vinyals, Dean, 2015).

    CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), KL summed over classes and
    averaged over the batch. Defaults alpha=1, temperature=2.

    weighted_ce=True uses class-balanced weights (beta, from cb_epoch) in the CE term. It is off by
    default because the BKD reference student script silently forced that re-weighting, so its "KD"
    baseline was not vanilla KD; here the variant is explicit. beta and cb_start only matter then.
    cb_start defaults to 0.8 (weights from epoch 160 of 200): the reference script's DRW rule, which
    it forces on CIFAR-10 (train_student.py lines 124-127, REFERENCE.md §4). On CIFAR-100 it forces
    Reweight, weights from epoch 0: pass cb_start=0 to reproduce that baseline.
    """

    Params = KDParams

    @classmethod
    def deferred_part(cls, params: dict, epochs: int):
        return super().deferred_part(params, epochs) if params.get("weighted_ce") else None  # cb_start unused

    @property
    def ce_class_balanced(self) -> bool:
        return self.params.weighted_ce

    @property
    def kd_class_balanced(self) -> bool:
        return False
