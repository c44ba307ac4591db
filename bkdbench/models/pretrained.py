"""Starting weights from a file (``--pretrained PATH``): Places-LT's standard recipe fine-tunes an
ImageNet-pretrained ResNet-152 (OLTR, Liu et al. 2019, config/Places_LT/stage_1.py; the decoupling
code starts from the same model).

A run carries the file's content key (``RunSpec.pretrained``, SHA-256 of its bytes), never its
path: the same weights on another machine give the same run ids, other weights other ones. The file
itself reaches trials through ``$BKDBENCH_PRETRAINED`` (bkdbench.paths), and the key is checked
again where it is read.

What is loaded. The file is a state dict (or a checkpoint holding one under ``state_dict`` or
``model``; a ``module.`` prefix from DataParallel is dropped), read with ``weights_only=True``.
Every parameter and buffer of the model outside its classifier ``fc`` must be in the file with the
same shape: anything else (another depth, another width, missing keys) is refused, naming the first
keys. The classifier is taken when its shape matches (the same classes); otherwise it keeps its
fresh initialisation, as the OLTR and decoupling code build a new classifier on the pretrained
features (ImageNet's 1,000 classes against Places-LT's 365; a cosine head is fresh too). Other keys of
the file that the model does not have are refused, so that a file for another architecture never
half-loads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

CLASSIFIER = "fc."  # the head every registered model names ``fc`` (models/heads.py)
_KEYS: dict[tuple, str] = {}  # (path, size, mtime) → content key, per process
_LAST: list = [None, None]  # [content key, its state dict]: the last file loaded, kept for the next model


class PretrainedError(ValueError):
    """A weights file that cannot start this model: the message names the file and the keys."""


def file_key(path: "str | os.PathLike") -> str:
    """The content key of a weights file (the first 16 hex digits of its SHA-256)."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError:
        raise PretrainedError(f"--pretrained {path} does not exist") from None
    if not path.is_file():
        raise PretrainedError(f"--pretrained {path} is not a file")
    stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if stamp not in _KEYS:
        from bkdbench.storage import file_digest

        _KEYS[stamp] = file_digest(path)[:16]
    return _KEYS[stamp]


def read_state(path: "str | os.PathLike") -> dict:
    """The state dict in ``path`` (tensors on the CPU)."""
    path = Path(path).expanduser()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch raise many types for a foreign file
        raise PretrainedError(f"--pretrained {path} is not a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"--pretrained {path} holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def matched_state(model: nn.Module, state: dict, where: str = "--pretrained") -> tuple[dict, list[str]]:
    """(the entries of ``state`` to load into ``model``, the classifier keys left initialised);
    PretrainedError when the backbone does not match exactly (module docstring)."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} (the model's {tuple(v.shape)})" for k, v in own.items()
             if not k.startswith(CLASSIFIER) and k in state and state[k].shape != v.shape]
    missing = [k for k in own if not k.startswith(CLASSIFIER) and k not in state]
    extra = [k for k in state if k not in own and not k.startswith(CLASSIFIER)]
    for problems, what in ((wrong, "has other shapes for"), (missing, "lacks"), (extra, "has keys the model lacks:")):
        if problems:
            shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise PretrainedError(f"{where} does not fit this model: the file {what} {shown}")
    take = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    fresh = [k for k in own if k.startswith(CLASSIFIER) and k not in take]
    return take, fresh


def check_fits(path: "str | os.PathLike", model_name: str, num_classes: int, channels: int = 3,
               head: str = "linear") -> list[str]:
    """Before any work: whether ``path`` can start ``model_name``; returns the classifier keys that
    will keep their initialisation. The model is built on the meta device (no memory, no time)."""
    from .registry import create_model

    state = read_state(path)
    with torch.device("meta"):
        model = create_model(model_name, num_classes, channels, head=head)
    return matched_state(model, state, f"--pretrained {path}")[1]


def load_into(model: nn.Module, key: str, path: Optional["str | os.PathLike"] = None) -> list[str]:
    """Load the weights with content key ``key`` (from ``path``, else ``$BKDBENCH_PRETRAINED``) into
    ``model``; returns the classifier keys left initialised."""
    from bkdbench.paths import PRETRAINED_ENV

    path = path or os.environ.get(PRETRAINED_ENV)
    if not path:
        raise PretrainedError(f"this run starts from pretrained weights {key}: pass --pretrained FILE")
    if file_key(path) != key:
        raise PretrainedError(f"--pretrained {path} has content key {file_key(path)}, the run was made for {key}")
    if _LAST[0] != key:  # K packed students (and a teacher's students) start from one read
        _LAST[:] = [key, read_state(path)]
    take, fresh = matched_state(model, _LAST[1], f"--pretrained {path}")
    model.load_state_dict(take, strict=False)
    return fresh
