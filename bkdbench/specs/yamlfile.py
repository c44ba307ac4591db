"""Reading a YAML file into a pydantic model with one clear error line naming the file and the key."""
from __future__ import annotations

import re
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
        key, message = _first_problem(exc)
        raise error(f"{path}: key '{key}': {message}") from None


# pydantic puts the tried member of a Union into an error's location ('seeds.int', 'methods.0.str'):
# type names, never the snake_case keys of bkdbench's files.
_UNION_MEMBER = re.compile(r"^(int|str|float|bool|(list|dict|tuple|literal|function-\w+)\[.*\]|[A-Z]\w*)$")


def _key(loc) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _UNION_MEMBER.match(p))) or "(top level)"


def _first_problem(exc: ValidationError) -> tuple[str, str]:
    """(key, message) of the first invalid key, in the file's own words: for a value that may take
    several shapes, the error inside the shape it has (a mapping's bad key), else the shapes allowed."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = first["loc"]
    at = next((i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_MEMBER.match(p)), None)
    if at is None:
        return _key(loc), first["msg"]
    tried = [e for e in errors if e["loc"][:at] == loc[:at] and len(e["loc"]) > at]
    inside = [e for e in tried if len(e["loc"]) > at + 1]  # the member whose shape matched got further
    if inside:
        return _key(inside[0]["loc"]), inside[0]["msg"]
    shapes = list(dict.fromkeys(_shape(str(e["loc"][at])) for e in tried))
    return _key(loc), f"{first['input']!r} is not {' or '.join(shapes)}"


def _shape(member: str) -> str:
    """A Union member's tag in a user's words: 'int' -> 'an integer', 'list[int]' -> 'a list'."""
    words = {"int": "an integer", "float": "a number", "str": "a name", "bool": "true or false"}
    if member in words:
        return words[member]
    if member.startswith("literal["):
        return member[len("literal["):-1]  # the allowed word itself, e.g. 'natural'
    if member.startswith(("list[", "tuple[")):
        return "a list"
    return "a mapping" if member[0].isupper() or member.startswith("dict[") else member
