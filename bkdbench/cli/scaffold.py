"""The three files ``bkdbench new method NAME`` writes: a method (a label-smoothed cross-entropy to
replace with the user's loss), a test of its loss against a value worked out by hand, and a
search-space YAML. Each passes as written (``bkdbench train --plugin FILE``, ``pytest``, ``bkdbench
sweep NAME --space FILE``), so the user starts from something that runs and shows the pattern."""
from __future__ import annotations

METHOD = '''"""{name}: <one line: what the loss does and why it helps the tail classes>.

Formula (replace with yours; this is what the code below computes, a label-smoothed cross-entropy):
    L = mean over the batch of  (1 - eps) * (-log p_y) + eps * mean_j (-log p_j),   p = softmax(z)
Citation: <authors>, "<title>", <venue> <year>. Authors' code: <URL> (<file>, <line>).
Deviations from the authors' code: <none yet; say what differs and why>.

Trained with:  bkdbench train --plugin {module}.py --method {name}
Swept with:    bkdbench sweep {name} --space {name}.yaml
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bkdbench.methods import Method, register
from bkdbench.methods.params import MethodParams
from bkdbench.methods.registry import float_logits


class Params(MethodParams):
    """Every field needs a default: a run is the defaults plus what the user sets (-p NAME=VALUE)."""

    smoothing: float = Field(0.1, ge=0, lt=1, description="eps: probability mass spread evenly over all classes")


@register("{name}")
class {cls}(Method):
    Params = Params
    # What the training loop reads (see bkdbench.methods.Method): head ("linear" or "cosine"), sampler
    # ("instance" or "class-balanced"), needs_teacher (then teacher_logits arrive; the CE run is the teacher).

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, epoch: int = 0,
             teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        log_p = F.log_softmax(float_logits(logits), dim=-1)
        nll = -log_p.gather(1, targets[:, None]).squeeze(1)
        uniform = -log_p.mean(dim=-1)
        eps = self.params.smoothing
        return ((1 - eps) * nll + eps * uniform).mean()
'''

TEST = '''"""{name}'s loss against a value worked out by hand (replace it with your loss's own worked example).

Run with:  pytest {test_file}
"""
import math
from pathlib import Path

import torch

from bkdbench.plugins import load

load(str(Path(__file__).with_name("{module}.py")))


def test_loss_matches_a_value_worked_out_by_hand():
    from bkdbench.methods import build

    method = build("{name}", [5, 1], epochs=1, smoothing=0.1)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = (3/4, 1/4) and (1/2, 1/2)
    targets = torch.tensor([0, 1])
    # by hand: sample 1: 0.9 * -log(3/4) + 0.1 * (-log(3/4) - log(1/4)) / 2; sample 2: -log(1/2); then the mean
    first = 0.9 * -math.log(0.75) + 0.1 * (-math.log(0.75) - math.log(0.25)) / 2
    second = math.log(2.0)
    assert abs(method.loss(logits, targets).item() - (first + second) / 2) < 1e-6
'''

SPACE = '''# Search space of {name}:  bkdbench sweep {name} --space {name}.yaml
method: {name}
description: label smoothing eps (replace with your loss's parameters)
plugins: [{module}.py]  # relative to this file
params:
  smoothing: {{type: float, low: 0.0, high: 0.3}}
'''


def files(name: str) -> dict[str, str]:
    """{file name: text} for method ``name`` (e.g. ``my-loss``: my_loss.py, test_my_loss.py, my-loss.yaml)."""
    module = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in module.split("_"))
    values = dict(name=name, module=module, cls=cls, test_file=f"test_{module}.py")
    return {f"{module}.py": METHOD.format(**values), f"test_{module}.py": TEST.format(**values),
            f"{name}.yaml": SPACE.format(**values)}
