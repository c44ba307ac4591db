"""Zero-shot CLIP (LIFT's ``zero_shot`` mode, models/models.py ``ZeroShotCLIP``): the classifier is the
text features of "a photo of a {name}." for every class (one template, no ensemble), logits
``logit_scale.exp() · cos(f @ proj, t_c)``. Nothing trains (0 epochs, like τ-norm); the prompt is
recorded in the row's ``extra``. Needs a CLIP model and a dataset with class names.
"""
from __future__ import annotations

import torch
from torch import nn

from bkdbench.methods.foundation import ClassNames, FoundationMethod
from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import MethodError, register


class ZeroShotParams(MethodParams):
    classnames: ClassNames = "dataset"


@register("zero-shot")
class ZeroShot(FoundationMethod):
    """Text features of class-name prompts as the classifier; no training."""

    Params = ZeroShotParams
    trains = False
    keeps_weights = False  # trains no classifier: never a teacher
    needs_names = True

    @classmethod
    def restructure(cls, model: nn.Module) -> None:
        from bkdbench.models.lift_modules import ZeroShotHead

        if model.proj is None:
            raise MethodError("zero-shot needs a CLIP model (a text tower): clip-vit-b16 or clip-tiny")
        if not isinstance(model.fc, ZeroShotHead):
            model.fc = ZeroShotHead(model.proj, model.num_classes, model.logit_scale)

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        from bkdbench.models.lift_modules import PROMPT

        self.restructure(model)
        with torch.no_grad():
            model.fc.text.copy_(model.text_features(_prompts(self.classnames)).to(model.fc.text.device))
        model.requires_grad_(False)
        self.prompt = PROMPT
        return []

    def finalize(self, model, validate) -> dict:
        return {"prompt": self.prompt}

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None):
        raise MethodError("zero-shot does not train")


def _prompts(names):
    from bkdbench.models.lift_modules import prompts

    return prompts(names)
