"""LIFT's trainable modules on a ``FoundationModel`` (Shi et al., ICML 2024, code shijxcs/LIFT), written
from its description and checked against its code:

* ``AdaptFormer`` (models/peft_modules.py): LayerNorm → Linear(d, r) → ReLU → Linear(r, d) → × a learned
  scalar ``scale`` (initialised 1). The down projection is Kaiming-normal with ``a = √5``, the up
  projection and both biases are zero, so an adapted model starts as the backbone itself.
* Where it sits (models/peft_vit.py, ``Peft_ViT.forward``): in every block, parallel to the MLP, on the
  block's post-attention state ``h``: ``h + mlp(ln_2(h)) + adaptformer(h)``. Here the block's ``ln_2``
  and ``mlp`` become one ``AdaptedMLP`` (``mlp(ln(h)) + adapter(h)``), which the block adds to ``h``
  (its layer scale must be the identity, as in CLIP and the AugReg ViTs).
* Bottleneck width (``ViT_Tuner``): ``2 ** max(0, int(log2(C / (2 L))))`` for C classes and L blocks
  (4 for CIFAR-100 on ViT-B/16, 32 for ImageNet-LT).
* ``CosineClassifier`` (models/classifiers.py): weight C × D, initialised uniform(−1, 1) then every row
  renormalised to length 1 (``renorm_(2, 0, 1e-5).mul_(1e5)``); logits = ``scale · cos(x, w_c)``, scale
  25 (utils/config.py ``_C.scale``, passed through ``**cfg``; the class default 30 is overridden).
* Its text initialisation (trainer.py ``init_head_text_feat``, prompt "default"): t_c = normalize(text
  embedding of "a photo of a {name}." with "_" → " "), mapped back through the image projection,
  w_c = normalize(t_c @ projᵀ), because the head reads the features before the projection.
* Zero-shot CLIP (models/models.py ``ZeroShotCLIP``): ``logit_scale.exp() · cos(f @ proj, t_c)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PROMPT = "a photo of a {}."  # LIFT's "default" prompt (trainer.py get_tokenized_prompts / init_head_text_feat)
LIFT_SCALE = 25.0


def prompts(classnames) -> list[str]:
    return [PROMPT.format(str(c).replace("_", " ")) for c in classnames]


def adapter_width(num_classes: int, layers: int) -> int:
    return 2 ** max(0, int(math.log2(num_classes / (layers * 2))))


class AdaptFormer(nn.Module):
    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down_proj.weight, a=math.sqrt(5))
        for p in (self.up_proj.weight, self.down_proj.bias, self.up_proj.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(F.relu(self.down_proj(self.ln(x)))) * self.scale


class AdaptedMLP(nn.Module):
    """A block's pre-MLP norm, MLP and a parallel adapter on the norm's input."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: AdaptFormer):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def add_adapters(model) -> list[nn.Parameter]:
    """AdaptFormer in every block of ``model`` (a FoundationModel); returns the adapters' parameters."""
    blocks = model.blocks()
    if any(isinstance(getattr(b, "mlp"), AdaptedMLP) for b in blocks):
        return []
    width = adapter_width(model.num_classes, len(blocks))
    params = []
    for block in blocks:
        clip = hasattr(block, "ln_2")
        norm_name, scale = ("ln_2", block.ls_2) if clip else ("norm2", block.ls2)
        if not isinstance(scale, nn.Identity):
            raise ValueError("AdaptFormer here needs blocks without layer scale (CLIP, AugReg ViTs)")
        adapter = AdaptFormer(model.feature_dim, width).to(model.model_mean.device)
        block.mlp = AdaptedMLP(getattr(block, norm_name), block.mlp, adapter)
        setattr(block, norm_name, nn.Identity())
        params += list(adapter.parameters())
    return params


class LiftCosine(nn.Module):
    """LIFT's ``CosineClassifier``: weight C × D, logits = scale · cos(x, w_c) (scale fixed)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = LIFT_SCALE):
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1)) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g} (fixed)"


@torch.no_grad()
def text_head_weight(model, classnames) -> torch.Tensor:
    """LIFT's text-initialised head weight: normalize(normalize(text(prompts)) @ projᵀ), C × D."""
    text = model.text_features(prompts(classnames))
    return F.normalize(text @ model.proj.detach().float().t(), dim=-1)


class ZeroShotHead(nn.Module):
    """Zero-shot CLIP: ``logit_scale · cos(f @ proj, t_c)``; ``text`` (C × E) is a buffer, ``proj`` is
    the model's own (shared, frozen)."""

    def __init__(self, proj: nn.Parameter, num_classes: int, logit_scale: float):
        super().__init__()
        self.proj = proj
        self.logit_scale = float(logit_scale)
        self.register_buffer("text", torch.zeros(num_classes, proj.shape[1], device=proj.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = F.normalize(x @ self.proj, dim=-1)
        return self.logit_scale * F.linear(image, F.normalize(self.text, dim=-1))
