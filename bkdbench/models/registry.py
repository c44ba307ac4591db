"""Model registry (timm-style): ``@register_model`` on a factory, ``create_model(name, ...)``."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class ModelError(ValueError):
    pass


def register_model(name: str):
    """Decorator: register a factory ``f(num_classes, in_channels, head) -> nn.Module`` under ``name``."""
    def wrap(factory: Callable[..., nn.Module]):
        known = _MODELS.get(name)
        if known is not None and known is not factory and _where(known) != _where(factory):
            raise ModelError(f"model '{name}' is already registered by {_where(known)}; {_where(factory)} registers "
                             "it again: choose another name")
        _MODELS[name] = factory
        return factory

    return wrap


def _where(factory) -> str:
    code = getattr(factory, "__code__", None)
    return f"{factory.__module__}.{factory.__qualname__} ({code.co_filename if code else '?'})"


def model_module(name: str) -> str | None:
    """The module that registered model ``name`` (a plugin's, or bkdbench's)."""
    return getattr(_MODELS.get(name), "__module__", None)


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3, head: str = "linear", **options) -> nn.Module:
    """Every model's ``forward(x, features=False)`` returns logits, or (logits, penultimate features).
    ``options`` go to the factory (the foundation models' ``weights``)."""
    if name not in _MODELS and _plugins_on_miss():
        return create_model(name, num_classes, in_channels, head, **options)
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, head=head, **options)


def has_model(name: str) -> bool:
    """Whether ``name`` is registered (in a Ray trial, after importing the forwarded plugins)."""
    return name in _MODELS or (_plugins_on_miss() and name in _MODELS)


def _plugins_on_miss() -> bool:
    from bkdbench.plugins import import_on_miss

    return import_on_miss()
