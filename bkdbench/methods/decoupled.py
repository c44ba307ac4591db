"""Decoupled classifiers (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020): keep the representation of a plain CE model (stage 1) and re-balance only
its classifier (stage 2). The stage-1 model is found or trained like a teacher (a CE run of the same
model, data and seed, cached by run id); stage 2 trains for ``stage2_fraction`` of that budget.

- ``crt``: freeze the backbone's weights, re-initialise the linear classifier and retrain it with
  class-balanced sampling and plain CE.
- ``lws``: freeze everything; learn one scale f_j per class on the classifier's output, bias
  included: z_j = f_j·(w_jᵀx + b_j), with class-balanced sampling.
- ``tau-norm``: no training; w̃_j = w_j / ‖w_j‖^τ. τ is chosen on the balanced validation split from
  0, 0.1, …, 2 (never the test set) unless given (``tau: auto`` by default); the chosen τ is reported
  in the leaderboard's ``extra`` column. ``bias: keep`` (default) keeps the stage-1 bias,
  ``bias: drop`` predicts from w̃_jᵀx alone.

Checked against the authors' code (facebookresearch/classifier-balancing, and BagofTricks-LT's
re-implementation, zhangyongshun/BagofTricks-LT):

- LWS: ``models/TauNormClassifier.py`` computes ``x = self.fc(x); x *= self.scales`` (fc frozen), so
  the scale multiplies the bias too; BagofTricks-LT's ``lib/modules/classifier_ops.py`` ``LWS`` does
  the same. (SSD-LT's stage II shares ``ScaledLinear``.)
- τ-norm's bias: Kang's ``tau_norm.py`` loads ``fc.bias`` but scores ``dotproduct_similarity(feat,
  pnorm(weights, p))``: no bias (``bias: drop``). BagofTricks-LT's ``lib/net/network.py``
  ``load_model(tau_norm=True)`` normalises only ``classifier.weight`` and loads the bias unchanged
  (``bias: keep``, bkdbench's default). Both use the grid ``np.linspace(0, 2, 21)``; Kang prints test
  accuracy for each τ, bkdbench chooses on validation.
- BatchNorm in stage 2: Kang's ``run_networks.py`` freezes the feature model's parameters
  (``requires_grad = False`` for ``fix: true``) but calls ``model.train()`` on every network each
  epoch, so the frozen backbone's BatchNorm running statistics are re-estimated on the class-balanced
  batches (BagofTricks-LT's ``lib/core/function.py`` also calls ``model.train()`` unless
  ``EVAL_MODE``). ``bn_stats: re-estimate`` (default) does the same; ``bn_stats: frozen`` keeps stage
  1's statistics (``model.eval()`` on the backbone). Weights and BatchNorm affine parameters stay frozen
  either way. On small data the re-estimation costs accuracy: on digits-LT IF 50, statistics from
  class-balanced batches alone take the CE model from 83.2 to 72.6 %, and ``frozen`` is 3.5 (cRT) and
  6.1 (LWS) points better (docs/results-digits.md, benchmarks/decoupled_stage2.py).
- Epoch length: Kang's ``ClassAwareSampler`` nominally yields max_j n_j · C draws, but
  ``run_networks.py`` ends each epoch after ``epoch_steps = int(N / batch_size)`` batches (N the
  long-tailed training-set size: "based on actual number of training data instead of oversampled data
  number"). bkdbench's stage 2 draws N class-balanced samples per epoch and drops the last partial
  batch: ⌊N/B⌋ batches of B, the same count. (Within an epoch the authors cycle through shuffled
  classes and each class's shuffled images, 4 per class in a row on ImageNet-LT; bkdbench draws the
  class and the image uniformly at random.)
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import Method, float_logits, register

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))


class Stage2Params(MethodParams):
    stage2_fraction: float = Field(0.1, gt=0, le=1, description="stage-2 epochs as a fraction of stage 1's")
    bn_stats: Literal["re-estimate", "frozen"] = Field(
        "re-estimate", description="the frozen backbone's BatchNorm statistics: re-estimated on the class-balanced "
                                   "batches (Kang's model.train()) or kept from stage 1")


class TauNormParams(MethodParams):
    tau: Union[Annotated[float, Field(ge=0)], Literal["auto"]] = Field(
        "auto", description="norm exponent; 'auto' = chosen on the validation split")
    bias: Literal["keep", "drop"] = Field(
        "keep", description="the stage-1 bias: kept (BagofTricks-LT) or dropped (Kang's tau_norm.py)")


# Kang et al.'s stage 2 per stage-1 recipe and method: (stage-2 recipe, epochs), from the decoupling code's
# config/<benchmark>/cls_crt.yaml and cls_lws.yaml (specs/recipes.py lists their values). iNat18's LWS
# configuration was not checked here: it keeps the fraction rule.
KANG_STAGE2 = {
    ("imagenet-lt", "crt"): ("imagenet-lt-stage2", 10), ("imagenet-lt", "lws"): ("imagenet-lt-stage2", 5),
    ("inat18", "crt"): ("inat18-stage2", 30), ("inat18", "lws"): ("inat18-stage2", 5),
    ("places-lt", "crt"): ("places-lt-stage2", 10), ("places-lt", "lws"): ("places-lt-stage2", 5),
}


class _Decoupled(Method):
    """A stage-2 method: ``needs_teacher`` because its stage-1 model is provided like a teacher.

    Stage 2's recipe: on the large benchmarks at their recipe's own budget, Kang's (``KANG_STAGE2``:
    its own recipe, epochs, lr, batch and cosine schedule); elsewhere, or when ``stage2_fraction`` is
    given, the stage-1 recipe for ``stage2_fraction`` of its epochs (bkdbench's rule, one -p away)."""

    @classmethod
    def stage2_recipe(cls, recipe: str) -> "tuple[str, int] | None":
        return KANG_STAGE2.get((recipe, cls.name))

    needs_teacher = True
    stage1 = True  # the "teacher" is this run's starting point, not a distillation target
    sampler = "class-balanced"
    drop_last = True  # ⌊N/B⌋ batches per epoch, as Kang's epoch_steps (module docstring)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        return F.cross_entropy(float_logits(logits), targets)

    def prepare(self, model: nn.Module, stage1_state: dict) -> list[nn.Parameter]:
        """Load stage 1, freeze what stays fixed; return the parameters stage 2 trains."""
        model.load_state_dict(stage1_state)
        model.requires_grad_(False)
        return []

    def set_train_mode(self, model: nn.Module) -> None:
        if self.params.bn_stats == "re-estimate":
            model.train()  # as Kang's run_networks.py: frozen weights, BatchNorm statistics re-estimated
        else:
            model.eval()  # the frozen backbone keeps stage 1's BatchNorm statistics
            model.fc.train()


@register("crt")
class ClassifierRetraining(_Decoupled):
    """cRT: re-initialised linear classifier, class-balanced sampling, frozen representation."""

    Params = Stage2Params

    def prepare(self, model, stage1_state):
        super().prepare(model, stage1_state)
        model.fc.reset_parameters()
        model.fc.requires_grad_(True)
        return list(model.fc.parameters())


class ScaledLinear(nn.Module):
    """A frozen linear classifier scaled by learnable f_j: with ``scale_bias`` the whole output
    z_j = f_j·(w_jᵀx + b_j) (LWS and SSD-LT's stage II, as their authors), else z_j = f_j·w_jᵀx + b_j."""

    def __init__(self, linear: nn.Linear, scale_bias: bool = False):
        super().__init__()
        self.linear, self.scale_bias = linear, scale_bias
        self.scale = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device))

    def forward(self, x):
        if self.scale_bias:
            return self.linear(x) * self.scale
        return F.linear(x, self.linear.weight * self.scale[:, None], self.linear.bias)


@register("lws")
class LearnableWeightScaling(_Decoupled):
    """LWS: one learnable scale per class on the stage-1 classifier, everything else frozen."""

    Params = Stage2Params

    def prepare(self, model, stage1_state):
        super().prepare(model, stage1_state)
        self.restructure(model)
        return [model.fc.scale]

    @classmethod
    def restructure(cls, model):
        model.fc = ScaledLinear(model.fc, scale_bias=True)  # Kang's TauNormClassifier.py: fc(x) * scales


@register("tau-norm")
class TauNormalisation(_Decoupled):
    """τ-normalised classifier: w̃_j = w_j / ‖w_j‖^τ; no training."""

    Params = TauNormParams
    trains = False

    def set_train_mode(self, model):
        model.eval()  # nothing trains; the stage-1 model is used as it is

    def finalize(self, model, validate):
        weight = model.fc.weight.detach().clone()
        norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.params.bias == "drop" and model.fc.bias is not None:
            with torch.no_grad():
                model.fc.bias.zero_()  # Kang's tau_norm.py scores features·w̃ᵀ without the bias

        def apply(tau: float) -> None:
            with torch.no_grad():
                model.fc.weight.copy_(weight / norms.pow(tau))

        if self.params.tau != "auto":
            apply(self.params.tau)
            return {"tau": self.params.tau}
        scores = []
        for tau in TAU_GRID:  # validation only; ties go to the smaller τ (the milder change)
            apply(tau)
            scores.append((validate(), -tau))
        best = -max(scores)[1]
        apply(best)
        return {"tau": best, "tau_val_top1": max(scores)[0]}
