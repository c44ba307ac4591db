"""The house rules of docs/architecture.md, read from the source (AST, lazy imports included): no
import circles, no import that runs back up a layer, the folders pyproject packages are the folders
there are, and the shipped search spaces are where users look for them."""
from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bkdbench"

SHARED = {"bkdbench", "bkdbench.storage", "bkdbench.paths", "bkdbench.provenance"}
CORE = ("data", "models", "methods", "training")
LAYER_OF_FOLDER = {**{c: "core" for c in CORE}, "cli": "cli", "orchestrate": "orchestrate", "specs": "specs",
                   "leaderboard": "results", "bench": "bench"}
# What each layer may not import: other layers of bkdbench, and outside libraries.
FORBIDDEN_LAYERS = {
    "core": {"cli", "orchestrate", "results", "bench"},
    "specs": {"cli", "orchestrate", "results", "bench"},
    "results": {"core", "specs", "cli", "orchestrate", "bench"},
    "orchestrate": {"cli", "bench"},
    "bench": {"cli", "orchestrate"},
    "shared": {"core", "specs", "cli", "orchestrate", "results", "bench"},
    "cli": set(),
}
FORBIDDEN_LIBRARIES = {
    "core": {"ray", "optuna", "typer", "rich"},
    "bench": {"ray", "optuna", "typer", "rich"},
    "results": {"torch", "torchvision", "ray"},
    "specs": {"torch", "ray", "typer", "rich"},  # a search space turns itself into Optuna distributions
    "shared": {"torch", "ray", "optuna", "typer", "rich"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> str:
    if module in SHARED:
        return "shared"
    folder = module.split(".")[1]
    return LAYER_OF_FOLDER.get(folder, folder)


def imports(module: str, path: Path) -> list[str]:
    """Absolute names of everything ``module`` imports, anywhere in the file (functions included)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append(target)
            found += [f"{target}.{a.name}" for a in node.names]
    return found


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = {t for t in imports(name, path) if t in mods and t != name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}  # importing one's own package is no circle
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package():
    assert circles(internal_graph()) == []


def test_no_import_runs_back_up_a_layer():
    mods = modules()
    wrong = []
    for name, path in mods.items():
        if name == "bkdbench.__main__":
            continue  # the entry point runs the CLI
        mine = layer(name)
        for target in imports(name, path):
            top = target.split(".")[0]
            if top == "bkdbench":
                if target in mods and layer(target) in FORBIDDEN_LAYERS[mine]:
                    wrong.append(f"{name} ({mine}) imports {target} ({layer(target)})")
            elif top in FORBIDDEN_LIBRARIES.get(mine, ()):
                wrong.append(f"{name} ({mine}) imports {target}")
    assert sorted(set(wrong)) == []


def test_the_package_top_level_holds_only_shared_modules_and_layer_folders():
    files = {p.stem for p in PACKAGE.glob("*.py")}
    assert files == {"__init__", "__main__", "storage", "paths", "provenance", "plugins"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYER_OF_FOLDER) | {"suites"}


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert set(config["packages"]) == code | {"bkdbench.suites", "bkdbench.search_spaces", "bkdbench.leaderboard.templates",
                                           "bkdbench.leaderboard.published"}
    assert config["package-dir"] == {"bkdbench.search_spaces": "search_spaces"}


def test_search_spaces_at_the_root_are_the_shipped_files():
    from bkdbench.specs.search_spaces import HERE, load_space, space_names

    top = ROOT / "search_spaces"
    assert not any(p.is_symlink() for p in top.iterdir())
    assert HERE == top  # a checkout reads the root folder itself
    yamls = sorted(p.stem for p in top.glob("*.yaml"))
    assert len(yamls) >= 9 and space_names() == yamls
    for name in yamls:
        assert load_space(name)[0].method == name


@pytest.mark.parametrize("module", ["bkdbench.cli.app", "bkdbench.bench", "bkdbench.training.train"])
def test_layers_import_on_their_own(module):
    """Each layer's entry module imports in a fresh interpreter (no hidden dependence on import order)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
