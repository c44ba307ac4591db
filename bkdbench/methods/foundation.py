"""What the foundation-model methods share (zero-shot, linear-probe, full-ft, lift): LIFT's head and loss.

    loss = CE(z + τ · log π, y),  π_j = n_j / Σ n_k   (LIFT utils/losses.py ``LogitAdjustedLoss``, τ = 1)

predictions use z unchanged (trainer.py ``test``). The head is LIFT's cosine classifier (scale 25),
initialised from the class names' CLIP text features where the backbone has a text tower and the
dataset has names (trainer.py ``init_head_text_feat``, models/lift_modules.py), else from the class
means of the frozen features (``init_head: class_mean``, LIFT's choice for its IN21k ViTs). Which parts train is each method's ``tuned`` rule; every other parameter is
frozen (``requires_grad=False``: SGD skips parameters without gradients, weight decay included).

These methods run only on a foundation model (``foundation = True``; make_spec refuses others), and
default to the ``lift`` recipe. Class names reach them through ``use_classnames`` (training/train.py,
data/classnames.py). Deviations from LIFT's code are listed in docs/foundation.md.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bkdbench.methods.params import MethodParams, Tau
from bkdbench.methods.registry import Method, MethodError, float_logits


ClassNames = Annotated[str, Field(pattern=r"^(dataset|file:[0-9a-f]{16})$",
                                 description="where class names come from: the dataset's, or a --classnames file's key")]


class FoundationParams(MethodParams):
    classnames: ClassNames = "dataset"
    tau: Tau = 1.0  # the cosine scale is LIFT's fixed 25 (models/lift_modules.py), not a parameter


class FoundationMethod(Method):
    """Base class; subclasses set ``tuned`` (what trains) and, for LIFT, add adapters."""

    Params = FoundationParams
    head = "linear"  # replaced by restructure (LIFT's cosine classifier)
    foundation: ClassVar[bool] = True
    recipe: ClassVar[Optional[str]] = "lift"
    keeps_weights: ClassVar[bool] = True  # its runs may teach (--teacher MODEL:METHOD): weights cached by run id
    needs_names: ClassVar[bool] = False  # refuse a dataset without class names (zero-shot, lift)
    classnames: Optional[list] = None

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        log_n = self.class_counts.to(torch.float64).log()
        self._constants["log_prior"] = log_n - log_n.logsumexp(0)

    def use_classnames(self, names: Optional[list]) -> None:
        if names is None and self.needs_names:
            raise MethodError(f"{self.name} needs class names: this dataset has none; pass --classnames FILE")
        self.classnames = names

    @classmethod
    def restructure(cls, model: nn.Module) -> None:
        from bkdbench.models.lift_modules import LiftCosine

        if not isinstance(model.fc, LiftCosine):
            model.fc = LiftCosine(model.feature_dim, model.num_classes).to(model.model_mean.device)

    def tuned(self, model: nn.Module) -> list[nn.Module]:
        """The modules that train (their parameters only); the head by default."""
        return [model.fc]

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        from bkdbench.models.lift_modules import LiftCosine

        if not hasattr(model, "blocks"):
            raise MethodError(f"{self.name} needs a foundation model")
        before = {id(p) for p in model.parameters()}  # train.py already has these
        self.restructure(model)
        if isinstance(model.fc, LiftCosine) and self.classnames is not None and model.has_text:
            with torch.no_grad():
                model.fc.weight.copy_(_text_weight(model, self.classnames))
        model.requires_grad_(False)
        new = []
        for module in self.tuned(model):
            module.requires_grad_(True)
            new += [p for p in module.parameters() if id(p) not in before]
        return new  # the new head's and adapters' parameters: not in the model's list train.py took

    @torch.no_grad()
    def init_from_data(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prepare) -> None:
        """Without text features (a timm ViT, or no class names): LIFT's ``init_head: class_mean`` (its
        IN21k configs; trainer.py ``init_head_class_mean``): w_c = normalize(mean of class c's
        features), the features of the untrained model (adapters start at zero) on every training
        image with the evaluation preprocessing. Called once before training (training/train.py)."""
        from bkdbench.models.lift_modules import LiftCosine

        if not isinstance(model.fc, LiftCosine) or (self.classnames is not None and model.has_text):
            return
        was = model.training
        model.eval()
        sums = torch.zeros_like(model.fc.weight, dtype=torch.float32)
        for start in range(0, len(labels), 256):
            feats = model.forward_features(prepare(images[start:start + 256])).float()
            sums.index_add_(0, labels[start:start + 256].to(sums.device), feats)
        counts = torch.bincount(labels.to(sums.device), minlength=sums.shape[0]).clamp_min(1)
        model.fc.weight.copy_(F.normalize(sums / counts[:, None], dim=-1))
        model.train(was)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        return F.cross_entropy(z + self.params.tau * self.constant("log_prior", z), targets)


def _text_weight(model, classnames):
    from bkdbench.models.lift_modules import text_head_weight

    return text_head_weight(model, classnames).to(model.fc.weight.device)
