"""Reading a YAML file into a pydantic model with one clear error line naming the file and the key."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], error: type[Exception], shape: str) -> M:
    """``model`` validated from the YAML mapping in ``path``; ``error(message)`` on malformed YAML,
    a non-mapping (``shape`` says what the file should look like) or the first invalid key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: malformed YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: {shape}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise error(f"{path}: key '{key}': {first['msg']}") from None
