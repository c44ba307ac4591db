"""Models by name: ``create_model("resnet32", num_classes=100)``; one family per file."""
from . import foundation, resnet_cifar, resnet_imagenet, small  # noqa: F401  (registration)
from .heads import HEADS, CosineLinear, make_head
from .registry import ModelError, create_model, model_names, register_model

__all__ = ["HEADS", "CosineLinear", "ModelError", "create_model", "make_head", "model_names", "register_model"]
