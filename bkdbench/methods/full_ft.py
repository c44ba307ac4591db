"""Full fine-tuning: LIFT's own baseline (shijxcs/LIFT configs/model/clip_vit_b16_ft.yaml:
``full_tuning: True``; models/peft_vit.py ``ViT_Tuner``: ``block_tuned = blocks``).

Every transformer block trains, with LIFT's text-initialised cosine head and the logit-adjusted loss
(methods/foundation.py); as in LIFT, the patch embedding, class and position embeddings and the
pre-/post-transformer LayerNorms stay frozen (they are not in its tuner). Without class names or a text
tower the head starts from the class means of the frozen features (LIFT's IN21k rule).
"""
from __future__ import annotations

from torch import nn

from bkdbench.methods.foundation import FoundationMethod
from bkdbench.methods.registry import register


@register("full-ft")
class FullFineTuning(FoundationMethod):
    """All transformer blocks and the head train; recipe ``lift``."""

    def tuned(self, model: nn.Module) -> list[nn.Module]:
        return [model.blocks(), model.fc]
