"""Pretrained foundation backbones: CLIP image towers through ``open_clip`` and ImageNet-21k ViTs
through ``timm`` (the extra ``bkdbench[foundation]``). Both libraries are imported only when such a
model is built, so the rest of the core never needs them.

Models: ``clip-vit-b16`` (open_clip ``ViT-B-16``, QuickGELU, weights ``openai``), ``vit-b16-in21k``
(timm ``vit_base_patch16_224.augreg_in21k``), ``vit-b16-in21k-ft-in1k`` (``...augreg_in21k_ft_in1k``:
the checkpoint LIFT's "IN21k ViT-B/16" loads with timm 0.6.12; it has seen ImageNet-1k labels), and
two random-weights architectures of the same code for smoke runs and tests: ``clip-tiny`` (2 layers,
width 64, 32 px, patch 8; text tower 2 layers, width 64) and ``vit-tiny`` (timm, the same sizes).

Weights (``weights=``; a run's identity, RunSpec.weights): ``"pretrained"`` (the model's named tag,
through the library's own hub cache: ``HF_HOME`` / open_clip's ``cache_dir``), ``"none"`` (random
initialisation, seeded by the run) or ``"file:<16 hex>:<path>"``: a state dict of the *library's*
model (what ``open_clip`` / ``timm`` save: ``CLIP.state_dict()``, ``VisionTransformer.state_dict()``)
loaded strictly before wrapping. The run id carries the tag or the file's content key, never a path.

The wrapper (``FoundationModel``) keeps bkdbench's model contract: ``forward(x, features=False)``,
classifier ``fc``, ``feature_dim``. Features are the class token after the final LayerNorm, before
CLIP's projection, as LIFT's ``Peft_ViT`` (models/peft_vit.py: ``x = ln_post(x[:, 0])``, ``proj`` unused).
Its input is a batch normalised with the *dataset's* statistics (the loader's); on the device the
wrapper undoes that, repeats a grey channel, resizes (bicubic, as CLIP's preprocessing) to the
model's resolution and normalises with the model's own mean/std (``set_input_stats``). The text
tower is kept outside the module tree (no state-dict entries, never trained), for the methods that
need class-name prompts (``text_features``).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .heads import make_head
from .registry import ModelError, register_model

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Foundation:
    name: str
    library: str  # "open_clip" or "timm"
    arch: str  # open_clip model name or timm model name (without tag)
    tag: Optional[str]  # the named pretrained weights; None: random only (the tiny ones)
    image_size: int
    mean: tuple
    std: tuple
    seen_in1k: bool  # whether the named weights have seen ImageNet-1k labels
    hub: Optional[str] = None  # the hub repository the tag resolves to (for the offline check)


FOUNDATIONS = {f.name: f for f in (
    Foundation("clip-vit-b16", "open_clip", "ViT-B-16", "openai", 224, CLIP_MEAN, CLIP_STD, False,
               "timm/vit_base_patch16_clip_224.openai"),
    Foundation("vit-b16-in21k", "timm", "vit_base_patch16_224", "augreg_in21k", 224, HALF, HALF, False,
               "timm/vit_base_patch16_224.augreg_in21k"),
    Foundation("vit-b16-in21k-ft-in1k", "timm", "vit_base_patch16_224", "augreg_in21k_ft_in1k", 224, HALF, HALF, True,
               "timm/vit_base_patch16_224.augreg_in21k_ft_in1k"),
    Foundation("clip-tiny", "open_clip", "tiny", None, 32, CLIP_MEAN, CLIP_STD, False),
    Foundation("vit-tiny", "timm", "vit_base_patch16_224", None, 32, HALF, HALF, False),
)}
TINY_CLIP = dict(embed_dim=32, vision=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                 text=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
WEIGHT_TAGS = ("pretrained", "none")


class WeightsError(ValueError):
    """Weights that cannot start this model (unknown tag, not cached offline, a file that does not fit)."""


def is_foundation(model: str) -> bool:
    return model in FOUNDATIONS


def resolve_weights(model: str, weights: Optional[str]) -> Optional[str]:
    """The run's ``weights`` value for ``--weights`` (None: the default, ``pretrained``): the named tag,
    ``none``, or ``file:<key>`` for a file (its path travels separately). Refuses bad combinations."""
    entry = FOUNDATIONS.get(model)
    if entry is None:
        if weights is not None:
            raise WeightsError(f"--weights is for the foundation models ({', '.join(FOUNDATIONS)}); "
                               f"{model} starts from a file with --pretrained FILE")
        return None
    weights = "pretrained" if weights is None else str(weights)
    if weights == "pretrained":
        if entry.tag is None:
            raise WeightsError(f"{model} has no pretrained weights (random architecture for smoke runs): use --weights none")
        return entry.tag
    if weights == "none":
        return "none"
    if os.path.exists(os.path.expanduser(weights)):
        from .pretrained import PretrainedError, file_key

        try:
            return f"file:{file_key(weights)}"
        except PretrainedError as exc:
            raise WeightsError(str(exc).replace("--pretrained", "--weights")) from None
    raise WeightsError(f"--weights must be pretrained, none or an existing weights file (got {weights!r})")


def seen_in1k(model: str, weights: Optional[str]) -> Optional[bool]:
    """Whether a run's starting weights have seen ImageNet-1k labels: the named tag's own answer, False
    for random weights, True for any file (nothing says otherwise); None for other models."""
    entry = FOUNDATIONS.get(model)
    if entry is None or weights is None:
        return None
    if weights == "none":
        return False
    if weights.startswith("file:"):
        return True
    return entry.seen_in1k


def check_available(model: str, weights: Optional[str]) -> None:
    """Before any work: named weights must be in the library's cache, or a hub must be reachable.
    One WeightsError line otherwise (never a download traceback after Ray starts)."""
    entry = FOUNDATIONS.get(model)
    if entry is None or weights in (None, "none") or weights.startswith("file:"):
        return
    _import(entry.library)
    if _cached(entry) or _hub_reachable():
        return
    raise WeightsError(f"{model} weights {weights!r} are not in the local cache ({entry.hub} in {_hub_cache()}) and "
                       "no hub is reachable: copy the cache here, or pass --weights FILE or --weights none")


def _cached(entry: Foundation) -> bool:
    from huggingface_hub import try_to_load_from_cache

    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
    cache = _hub_cache()
    return any(isinstance(try_to_load_from_cache(entry.hub, n, cache_dir=cache), str) for n in names)


def _hub_cache() -> str:
    """The Hugging Face hub cache as the environment says now (the library reads it once, at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import threading

    reached = []

    def connect():  # in a thread: a name lookup ignores the socket timeout and may hang
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            reached.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(5)
    return bool(reached)


def _import(library: str):
    try:
        return __import__(library)
    except ImportError:
        raise ModelError(f"the foundation models need {library}: pip install 'bkdbench[foundation]'") from None


def _weights_path(weights: str) -> str:
    from bkdbench.paths import WEIGHTS_ENV

    key = weights.split(":", 1)[1]
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        raise WeightsError(f"this run starts from weights file {key}: pass --weights FILE")
    from .pretrained import file_key

    if file_key(path) != key:
        raise WeightsError(f"--weights {path} has content key {file_key(path)}, the run was made for {key}")
    return path


def build_library_model(entry: Foundation, weights: str):
    """The library's own model with the run's weights: an open_clip ``CLIP`` (and its tokenizer) or a
    timm ``VisionTransformer`` without classifier. Files load strictly into it."""
    lib = _import(entry.library)
    tokenizer = None
    if entry.library == "open_clip":
        if entry.tag is None:
            from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

            net = CLIP(TINY_CLIP["embed_dim"], CLIPVisionCfg(**TINY_CLIP["vision"]), CLIPTextCfg(**TINY_CLIP["text"]),
                       quick_gelu=True)
        elif weights == entry.tag:
            net = lib.create_model(entry.arch, pretrained=weights, force_quick_gelu=True)
        else:  # the architecture the named weights use (OpenAI's QuickGELU)
            net = lib.create_model(entry.arch, pretrained=None, force_quick_gelu=True)
        tokenizer = lib.get_tokenizer("ViT-B-16")  # CLIP's BPE vocabulary, shipped in the wheel
    else:
        kw = TINY_VIT if entry.tag is None else {}
        name = entry.arch if entry.tag is None or weights != entry.tag else f"{entry.arch}.{entry.tag}"
        net = lib.create_model(name, pretrained=weights == entry.tag, num_classes=0, **kw)
    if weights.startswith("file:"):
        load_weights_file(net, _weights_path(weights))
    return net.float(), tokenizer


def load_weights_file(net: nn.Module, path: str) -> None:
    """Load a library model's state dict from ``path`` exactly (every key, every shape), or refuse."""
    from .pretrained import PretrainedError, read_state

    try:
        state = read_state(path)
    except PretrainedError as exc:
        raise WeightsError(str(exc).replace("--pretrained", "--weights")) from None
    own = net.state_dict()
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[:3]
        what = "lacks" if missing else ("has keys the model lacks:" if extra else "has other shapes for")
        raise WeightsError(f"--weights {path} does not fit this model: the file {what} {', '.join(first)}")
    net.load_state_dict(state)


class FoundationModel(nn.Module):
    """A library backbone behind bkdbench's model contract (module docstring)."""

    def __init__(self, entry: Foundation, weights: str, num_classes: int, head: str = "linear"):
        super().__init__()
        net, tokenizer = build_library_model(entry, weights)
        self.library, self.image_size, self.num_classes = entry.library, entry.image_size, num_classes
        if entry.library == "open_clip":
            visual = net.visual
            self.proj = nn.Parameter(visual.proj.detach().clone())  # image → joint space (zero-shot only)
            visual.proj = None  # features before the projection, as LIFT's head reads them
            net.visual = nn.Identity()  # the text tower keeps no second reference to the image tower
            self.backbone = visual
            self.feature_dim = int(self.proj.shape[0])
            self.logit_scale = float(net.logit_scale.detach().exp())
            self.__dict__["text_tower"] = (net.eval().requires_grad_(False), tokenizer)  # outside the module tree
        else:
            self.backbone = net
            self.proj = None
            self.feature_dim = int(net.num_features)
            self.__dict__["text_tower"] = None
        self.fc = make_head(head, self.feature_dim, num_classes)
        self.register_buffer("model_mean", torch.tensor(entry.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("model_std", torch.tensor(entry.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("data_mean", torch.zeros(1, 1, 1, 1), persistent=False)
        self.register_buffer("data_std", torch.ones(1, 1, 1, 1), persistent=False)

    @property
    def has_text(self) -> bool:
        return self.text_tower is not None

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks (open_clip ``ResidualAttentionBlock`` or timm ``Block``)."""
        return self.backbone.transformer.resblocks if self.library == "open_clip" else self.backbone.blocks

    def set_input_stats(self, mean, std) -> None:
        """The statistics the loader normalised this model's input with (the dataset's)."""
        dev = self.data_mean.device
        self.data_mean = torch.as_tensor(mean, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
        self.data_std = torch.as_tensor(std, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """A dataset-normalised batch as this model's input (on the batch's device)."""
        x = x.float() * self.data_std + self.data_mean  # back to [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return ((x - self.model_mean) / self.model_std).contiguous()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.model_input(x))

    def forward(self, x: torch.Tensor, features: bool = False):
        feats = self.forward_features(x)
        logits = self.fc(feats)
        return (logits, feats) if features else logits

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings of ``prompts`` (P × embed_dim, float32, on the model's device)."""
        if self.text_tower is None:
            raise ModelError("this backbone has no text tower (zero-shot and text-initialised heads need CLIP)")
        net, tokenizer = self.text_tower
        device = self.model_mean.device
        net.to(device)
        out = torch.cat([net.encode_text(tokenizer(prompts[i:i + 256]).to(device)).float()
                         for i in range(0, len(prompts), 256)])
        net.to("cpu")
        return F.normalize(out, dim=-1)


def _factory(name: str):
    def make(num_classes: int, in_channels: int = 3, head: str = "linear", weights: Optional[str] = None):
        entry = FOUNDATIONS[name]
        if in_channels not in (1, 3):
            raise ModelError(f"{name} takes grey or RGB images (got {in_channels} channels)")
        # no weights named: random ones (nothing is fetched implicitly); a run always names its own
        return FoundationModel(entry, weights or "none", num_classes, head)

    return make


for _name in FOUNDATIONS:
    register_model(_name)(_factory(_name))
