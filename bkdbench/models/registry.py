"""Model registry (timm-style): ``@register_model`` on a factory, ``create_model(name, ...)``."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class ModelError(ValueError):
    pass


def register_model(name: str):
    def wrap(factory: Callable[..., nn.Module]):
        _MODELS[name] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3, head: str = "linear", **options) -> nn.Module:
    """Every model's ``forward(x, features=False)`` returns logits, or (logits, penultimate features).
    ``options`` go to the factory (the foundation models' ``weights``)."""
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, head=head, **options)
