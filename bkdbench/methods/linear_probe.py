"""Linear probe: the backbone frozen, only the classifier trains (LIFT's recipe with no tuner at all:
its optimizer then holds only the head). The head is LIFT's cosine classifier (scale 25), started from
the class names' text features where there are names and a text tower (LIFT's ``init_head:
text_feat``), else from the class means of the frozen features (its IN21k rule); the logit-adjusted loss (methods/foundation.py).
"""
from __future__ import annotations

from bkdbench.methods.foundation import FoundationMethod
from bkdbench.methods.registry import register


@register("linear-probe")
class LinearProbe(FoundationMethod):
    """Frozen backbone; the cosine head trains."""
