"""Outside code: a user's own methods, models, datasets and recipes, loaded through one loader.

Ways in (all end in ``load``):
  * ``--plugin SPEC`` (repeatable): SPEC is a ``.py`` file, a package folder (with ``__init__.py``)
    or an importable module name;
  * ``BKDBENCH_PLUGINS``: the same SPECs, ``os.pathsep``-separated;
  * a ``plugins:`` list in a suite or search-space YAML file (paths relative to that file);
  * installed distributions with an entry point in the group ``bkdbench.plugins`` (imported by
    ``load_entry_points``, on the driver and on every node from the node's own installation).

A plugin registers its parts with the registries the built-in families use (``methods.register``,
``models.register_model``, ``data.register_dataset``, ``specs.recipes.register_recipe``). What a run
uses from a plugin is part of its identity: ``refs`` gives ``module@digest`` for the parts that come
from a loaded plugin, the digest being SHA-256 (16 hex digits) of the file, or of every ``.py`` file
of the package folder. Ray trials import the same modules (``forward`` puts them in the
environment of every trial; ``import_forwarded`` imports them there, from the job's ``py_modules``
or the node's installation, and refuses code whose digest differs).

Only the standard library at import time: read-only commands never import this module's plugins.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

ENV = "BKDBENCH_PLUGINS"  # SPECs given by the user, os.pathsep-separated
FORWARD_ENV = "BKDBENCH_PLUGIN_MODULES"  # what trials import: "module@digest,..." (set by ``forward``)
GROUP = "bkdbench.plugins"


class PluginError(ValueError):
    """A plugin that cannot be used: the message names the file (and line) or the distribution."""


@dataclass(frozen=True)
class Plugin:
    module: str  # the top-level module name it is imported as (on every node)
    digest: str  # SHA-256 of its source, 16 hex digits
    path: Path  # the .py file or the package folder
    origin: str  # "path", "module" or "entry point of DIST"

    @property
    def ref(self) -> str:
        return f"{self.module}@{self.digest}"

    @property
    def shipped(self) -> bool:
        """Given by path: travels with a Ray job (installed modules are imported from each node's own)."""
        return self.origin == "path"


_LOADED: dict[str, Plugin] = {}
_ENTRY_POINTS_DONE = [False]


def loaded() -> list[Plugin]:
    return list(_LOADED.values())


def source_digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file, or of every ``.py`` file under a folder (relative names too,
    so a renamed file changes it), in a fixed order."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    else:
        for file in sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts):
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
            h.update(file.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec or spec.startswith(".") or Path(spec).exists()


def load(spec: str, *, base: Optional[Path] = None) -> Plugin:
    """Import one plugin (a path relative to ``base`` when given, else to the working folder), once."""
    spec = str(spec).strip()
    if not spec:
        raise PluginError("an empty plugin name")
    if _looks_like_path(spec):
        return _load_path(Path(base or ".").joinpath(Path(spec).expanduser()), spec)
    return _load_module(spec, origin="module")


def load_all(specs: Iterable[str], *, base: Optional[Path] = None) -> list[Plugin]:
    return [load(s, base=base) for s in specs]


def load_env() -> list[Plugin]:
    """The plugins named in ``BKDBENCH_PLUGINS``."""
    return load_all(s for s in os.environ.get(ENV, "").split(os.pathsep) if s.strip())


def load_entry_points() -> list[Plugin]:
    """Import every installed ``bkdbench.plugins`` entry point (once per process)."""
    from importlib.metadata import entry_points

    if _ENTRY_POINTS_DONE[0]:
        return [p for p in _LOADED.values() if p.origin.startswith("entry point")]
    _ENTRY_POINTS_DONE[0] = True
    out = []
    for ep in entry_points(group=GROUP):
        dist = getattr(ep.dist, "name", None) or "an unknown distribution"
        try:
            out.append(_load_module(ep.module, origin=f"entry point of {dist}"))  # keyed by its top-level package
            if ep.attr:  # "pkg.mod:setup": a function to call once imported
                ep.load()()
        except PluginError as exc:
            raise PluginError(f"entry point {ep.name!r} of distribution {dist}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any failure of outside code is the user's to see
            raise PluginError(f"entry point {ep.name!r} ({ep.value}) of distribution {dist} failed: "
                              f"{type(exc).__name__}: {exc}{_where(exc, None)}") from None
    return out


def load_everything(specs: Iterable[str] = ()) -> list[Plugin]:
    """What a command that trains or lists parts loads: entry points, ``BKDBENCH_PLUGINS``, then ``specs``."""
    return [*load_entry_points(), *load_env(), *load_all(specs)]


# ---------------------------------------------------------------- importing


def _load_path(path: Path, given: str) -> Plugin:
    path = path.resolve() if path.exists() else path
    if not path.exists():
        raise PluginError(f"plugin {given}: no such file or folder ({path})")
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise PluginError(f"plugin {given}: a package folder needs an __init__.py ({path} has none)")
        name, file, search = path.name, init, [str(path)]
    elif path.suffix == ".py":
        name, file, search = path.stem, path, None
    else:
        raise PluginError(f"plugin {given}: not a .py file, a package folder or a module name")
    if not name.isidentifier():
        raise PluginError(f"plugin {given}: {name!r} is not a valid Python module name (rename the file or folder)")
    known = _LOADED.get(name)
    if known is not None:
        if known.path == path:
            return known
        raise PluginError(f"plugin {given}: module name {name!r} is already taken by the plugin {known.path}; "
                          "rename one of them")
    if name in sys.modules:
        taken = getattr(sys.modules[name], "__file__", None) or "a built-in module"
        raise PluginError(f"plugin {given}: module name {name!r} is already taken by {taken}; rename the plugin")
    module_spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=search)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    quiet, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    try:
        with _validated(f"plugin {given}", path):
            module_spec.loader.exec_module(module)
    except BaseException:
        for loaded_name in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            sys.modules.pop(loaded_name, None)
        raise
    finally:
        sys.dont_write_bytecode = quiet
    plugin = Plugin(name, source_digest(path), path, "path")
    _LOADED[name] = plugin
    return plugin


def _load_module(name: str, *, origin: str) -> Plugin:
    top = name.split(".")[0]
    if top in _LOADED:
        importlib.import_module(name)
        return _LOADED[top]
    if top == "bkdbench":
        raise PluginError(f"plugin {name}: bkdbench's own modules are loaded already; a plugin is your code")
    with _validated(f"plugin module {name}", None):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                for near in (Path(f"{name}.py"), Path(name) / "__init__.py"):  # a retrain command's bare name
                    if "." not in name and near.is_file():
                        return _load_path(Path(name if near.name == "__init__.py" else near), name)
                raise PluginError(f"plugin {name}: no such module (nor a file or folder of that name here)") from None
            raise
    top_module = sys.modules[top]
    file = Path(getattr(top_module, "__file__", "") or "")
    path = file.parent if file.name == "__init__.py" else file
    plugin = Plugin(top, source_digest(path), path, origin)
    _LOADED[top] = plugin
    return plugin


class _validated:
    """Turns any failure while a plugin's code runs into one PluginError line, and checks the methods
    it registered (a ``loss`` or ``train_step``; every ``Params`` field with a default)."""

    def __init__(self, what: str, path: Optional[Path]):
        self.what, self.path = what, path

    def __enter__(self):
        for registry in ("bkdbench.methods", "bkdbench.models", "bkdbench.data", "bkdbench.specs.recipes"):
            importlib.import_module(registry)  # filled with bkdbench's own names first: what the plugin adds is the rest
        self.saved = {key: dict(table) for key, table in _registries().items()}
        return self

    def __exit__(self, kind, exc, tb):
        try:
            self._check(exc)
        except BaseException:
            for key, table in _registries().items():  # a refused plugin leaves no name behind
                if key in self.saved:  # a registry first imported by the plugin holds only bkdbench's names
                    table.clear()
                    table.update(self.saved[key])
            raise
        return False

    def _check(self, exc):
        if exc is None:
            methods = _registries().get("methods", {})
            for name in sorted(set(methods) - set(self.saved.get("methods", {}))):
                problem = _method_problem(methods[name])
                if problem:
                    raise PluginError(f"{self.what}: method {name!r} {problem}")
            return
        if isinstance(exc, PluginError):
            raise exc
        if isinstance(exc, SyntaxError):
            raise PluginError(f"{self.what}: syntax error in {exc.filename}, line {exc.lineno}: {exc.msg}") from None
        if isinstance(exc, Exception):
            if _is_registry_error(exc):
                raise PluginError(f"{self.what}: {exc}") from None
            raise PluginError(f"{self.what} failed to import: {type(exc).__name__}: {exc}{_where(exc, self.path)}") from None
        raise exc


def _where(exc: BaseException, path: Optional[Path]) -> str:
    """`` (FILE, line N)`` of the innermost frame in the plugin's own code (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    own = [f for f in frames if path is not None and _under(Path(f.filename), path)]
    frame = (own or [f for f in frames if "importlib" not in f.filename] or frames)[-1]
    return f" ({frame.filename}, line {frame.lineno})"


def _under(file: Path, path: Path) -> bool:
    try:
        return file.resolve() == path or path in file.resolve().parents
    except OSError:
        return False


def _registries() -> dict[str, dict]:
    """The registries' own tables that are imported already (the originals, not copies)."""
    tables = {"methods": ("bkdbench.methods.registry", "_REGISTRY"), "models": ("bkdbench.models.registry", "_MODELS"),
              "datasets": ("bkdbench.data.registry", "_REGISTRY"), "dataset origins": ("bkdbench.data.registry", "_ORIGIN"),
              "recipes": ("bkdbench.specs.recipes", "RECIPES"), "recipe origins": ("bkdbench.specs.recipes", "_ORIGIN")}
    return {key: getattr(sys.modules[mod], attr) for key, (mod, attr) in tables.items() if mod in sys.modules}


def _method_problem(cls) -> Optional[str]:
    """What makes a registered class unusable as a method, or None: it must compute a loss (``loss``
    or its own ``train_step``), and every ``Params`` field needs a default (a run is built from the
    defaults plus what the user sets). The registry is read from sys.modules: the registries call
    this module, never the other way round."""
    registry = sys.modules["bkdbench.methods.registry"]
    base, params = registry.Method, registry.MethodParams
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return "is not a subclass of bkdbench.methods.Method"
    if cls.loss is base.loss and cls.train_step is base.train_step and cls.trains:
        return f"({cls.__qualname__}) defines neither loss() nor train_step()"
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, params)):
        return f"({cls.__qualname__}): Params must subclass bkdbench.methods.params.MethodParams"
    required = [f for f, info in cls.Params.model_fields.items() if info.is_required()]
    if required:
        return f"({cls.__qualname__}): Params field(s) {', '.join(required)} have no default; give each a default value"
    return None


def _is_registry_error(exc: Exception) -> bool:
    return type(exc).__name__ in ("MethodError", "ModelError", "DataError", "RecipeError") and \
        type(exc).__module__.startswith("bkdbench.")


# ---------------------------------------------------------------- identity and trials


def ref_of(module_name: Optional[str]) -> Optional[str]:
    """``module@digest`` when ``module_name`` belongs to a loaded plugin, else None (a built-in part)."""
    if not module_name:
        return None
    plugin = _LOADED.get(module_name.split(".")[0])
    return plugin.ref if plugin is not None else None


def refs(*modules: Optional[str]) -> Optional[tuple[str, ...]]:
    """The sorted ``module@digest`` of the plugins among ``modules``; None when there are none, which
    keeps the run id of a spec that uses no plugin part what it always was."""
    found = sorted({r for r in map(ref_of, modules) if r})
    return tuple(found) or None


def forward() -> tuple[dict, list[str]]:
    """(environment variables, ``py_modules`` paths) that give every Ray trial the loaded plugins."""
    if not _LOADED:
        return {}, []
    env = {FORWARD_ENV: ",".join(p.ref for p in _LOADED.values())}
    return env, [str(p.path) for p in _LOADED.values() if p.shipped]


def import_forwarded() -> None:
    """In a trial: import the plugins the driver forwarded (``FORWARD_ENV``) and check that the code
    here is the code the run ids were made from. Does nothing where nothing was forwarded."""
    wanted = [r for r in os.environ.get(FORWARD_ENV, "").split(",") if r]
    for ref in wanted:
        module, _, digest = ref.partition("@")
        plugin = _load_module(module, origin="forwarded") if module not in _LOADED else _LOADED[module]
        if digest and plugin.digest != digest:
            raise PluginError(f"plugin {module} here ({plugin.path}) has digest {plugin.digest}, the run expects "
                              f"{digest}: this node has other code than the driver")


def import_on_miss() -> bool:
    """A registry does not know a name: in a trial, import the forwarded plugins (once) and say
    whether the registry should look again. The registries call this before giving up."""
    if not os.environ.get(FORWARD_ENV) or all(r.partition("@")[0] in _LOADED
                                             for r in os.environ[FORWARD_ENV].split(",") if r):
        return False
    import_forwarded()
    return True
