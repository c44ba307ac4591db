"""DiVE: distilling virtual examples from a Balanced-Softmax teacher (He, Wu, Wei, "Distilling Virtual
Examples for Long-tailed Recognition", ICCV 2021).

As BagofTricks-LT's ``DiVEKLD`` (the configuration its CIFAR-LT re-runs use; the paper's own code was
never released), with z_s the student's and z_t the teacher's logits:

    q~  = softmax(z_t / T) ** power, renormalised per sample (power < 1 flattens the teacher: more
          mass on its tail classes, the "virtual examples")
    loss = alpha * T^2 * KL(q~ || softmax(z_s / T)) + (1 - alpha) * BalancedSoftmaxCE(z_s, y)

KL summed over classes and averaged over the batch; BalancedSoftmaxCE(z, y) = CE(z + log n, y).
The teacher is a ``balanced-softmax`` run of the same model, data, recipe and seed (not the CE run);
predictions use the student's plain logits. Defaults (BagofTricks' CIFAR configuration): alpha=0.5,
temperature=2, power=0.5.

Schedule: BagofTricks-LT's DiVE configurations (``configs/cao_cifar/DiVE/*/teacher.yaml`` and
``student.yaml``) step the learning rate ×0.01 at epochs 120 and 160 of 200 (``LR_STEP: [120, 160]``), not
at LDAM's 160/180. ``milestones="authors"`` (default) trains the student and its Balanced-Softmax teacher
under the run's recipe with its steps moved to 0.6 / 0.8 of the budget (recipe name
``<recipe>/milestones=0.6,0.8``; a cosine recipe is unchanged); ``milestones="recipe"`` keeps the recipe's
own steps (bkdbench before this option).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bkdbench.methods.params import MethodParams, Temperature
from bkdbench.methods.registry import Method, MethodError, float_logits, register


class DiVEParams(MethodParams):
    alpha: Annotated[float, Field(ge=0, le=1, description="weight of the distillation term; 1 - alpha weights the CE")] = 0.5
    temperature: Temperature = 2.0
    power: Annotated[float, Field(gt=0, description="exponent flattening the teacher's distribution")] = 0.5
    milestones: Literal["authors", "recipe"] = "authors"  # module docstring: BagofTricks' 120/160 of 200


@register("dive")
class DiVE(Method):
    """DiVE: alpha·T²·KL(q~ ‖ softmax(z_s/T)) + (1 − alpha)·BalancedSoftmaxCE(z_s, y), q~ ∝ softmax(z_t/T)^power,
    from a Balanced-Softmax teacher (see the module docstring)."""

    Params = DiVEParams
    needs_teacher = True
    teacher_method = "balanced-softmax"

    AUTHORS_MILESTONES = (120 / 200, 160 / 200)

    @classmethod
    def recipe_for(cls, recipe: str, params: dict) -> str:
        from bkdbench.specs.recipes import with_milestones  # lazily: specs are read by the core, not imported at load

        return with_milestones(recipe, cls.AUTHORS_MILESTONES) if params.get("milestones") == "authors" else recipe

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        self._constants["log_n"] = self.class_counts.to(torch.float64).log()

    def teacher_targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """q~: the teacher's softened distribution raised to ``power`` and renormalised per row."""
        q = F.softmax(teacher_logits / self.params.temperature, dim=-1) ** self.params.power
        return q / q.sum(dim=-1, keepdim=True)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        if teacher_logits is None or teacher_logits.shape != logits.shape:
            raise MethodError(f"{self.name}: needs teacher_logits of the student's shape {tuple(logits.shape)} "
                              "(the frozen Balanced-Softmax teacher's logits on the same batch)")
        z = float_logits(logits)
        T, alpha = self.params.temperature, self.params.alpha
        q = self.teacher_targets(teacher_logits.detach().to(z.dtype))
        kl = F.kl_div(F.log_softmax(z / T, dim=-1), q, reduction="batchmean")
        balanced_ce = F.cross_entropy(z + self.constant("log_n", z), targets)
        return alpha * T * T * kl + (1 - alpha) * balanced_ce
