"""LIFT (Shi, Wei, Zhou, Li, Long, "Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts",
ICML 2024; first titled PEL; code shijxcs/LIFT, configs/model/clip_vit_b16_peft.yaml).

AdaptFormer adapters in every block (models/lift_modules.py), the backbone frozen, LIFT's cosine
classifier (scale 25) initialised from the class names' text features, the logit-adjusted loss
(methods/foundation.py). Only the adapters and the head train, as LIFT's optimizer gets only
``tuner`` and ``head``. Recipe ``lift``. Test-time ensembling (LIFT's ``tte``) is not applied.
"""
from __future__ import annotations

from torch import nn

from bkdbench.methods.foundation import FoundationMethod
from bkdbench.methods.registry import register
from bkdbench.models.lift_modules import AdaptedMLP


@register("lift")
class Lift(FoundationMethod):
    """AdaptFormer + text-initialised cosine head + logit-adjusted loss; backbone frozen."""

    needs_names = True

    @classmethod
    def restructure(cls, model: nn.Module) -> None:
        from bkdbench.models.lift_modules import add_adapters

        add_adapters(model)
        super().restructure(model)

    def tuned(self, model: nn.Module) -> list[nn.Module]:
        return [b.mlp.adapter for b in model.blocks() if isinstance(b.mlp, AdaptedMLP)] + [model.fc]

    def set_train_mode(self, model: nn.Module) -> None:
        model.eval()  # LIFT trains with ``tuner.train()`` only; the frozen backbone stays as evaluated
        for module in self.tuned(model):
            module.train()
