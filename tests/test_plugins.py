"""Plugins (bkdbench.plugins): real plugin files written here, imported for real, in this process where a
name can be unique to one test, and through the console script where a run or a fresh process is the
point. The two-node Ray test is in test_plugins_ray.py."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.cli import cli_env, run_cli

METHOD = '''
"""A label-smoothed CE written outside bkdbench."""
import torch.nn.functional as F
from pydantic import Field

from bkdbench.methods import Method, register
from bkdbench.methods.params import MethodParams


class Params(MethodParams):
    smoothing: float = Field(0.1, ge=0, lt=1)


@register("{name}")
class Smooth(Method):
    Params = Params
    needs_teacher = {needs_teacher}

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None):
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.params.smoothing)
'''


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """Plugins loaded in this process are forgotten after each test (their names, modules and the
    loader's record), so tests that list the registries see bkdbench's own names only."""
    import bkdbench.methods  # noqa: F401  (the registries, filled with bkdbench's names, before the snapshot)
    import bkdbench.models  # noqa: F401
    import bkdbench.data  # noqa: F401
    from bkdbench import plugins

    tables = plugins._registries()
    saved = {key: dict(table) for key, table in tables.items()}
    loaded, modules = dict(plugins._LOADED), set(sys.modules)
    yield
    for key, table in tables.items():
        table.clear()
        table.update(saved[key])
    tops = set(plugins._LOADED) - set(loaded)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in set(sys.modules) - modules:
        if name.split(".")[0] in tops:
            sys.modules.pop(name, None)


def write_method(folder: Path, module: str, name: str, *, needs_teacher: bool = False) -> Path:
    path = folder / f"{module}.py"
    path.write_text(METHOD.format(name=name, needs_teacher=needs_teacher))
    return path


def sha16(*blobs: bytes) -> str:
    return hashlib.sha256(b"".join(blobs)).hexdigest()[:16]


# Run ids of built-in specs computed with main's code before plugins existed (make_spec on
# /work/main): specs that use no plugin part keep exactly these.
BUILTIN_IDS = {("digits", 10, "bkd", 3, 1): "3ac5330c82fb2cfa", ("digits", 50, "ce", None, 0): "1a88d2c296da0814",
               ("digits", 10, "ldam-drw", None, 0): "7d754a5936b4bdda"}


def test_specs_without_plugin_parts_keep_their_run_ids(tmp_path):
    from bkdbench.plugins import load
    from bkdbench.specs import make_spec

    load(str(write_method(tmp_path, "plug_ids", "plug-ids")))  # a plugin loaded changes nothing for built-ins
    for (dataset, factor, method, epochs, seed), run_id in BUILTIN_IDS.items():
        spec = make_spec(dataset, factor, method, epochs=epochs, seed=seed)
        assert spec.plugins is None and "plugins" not in spec.canonical_json()
        assert spec.run_id == run_id


def test_a_plugin_method_run_carries_module_and_source_digest(tmp_path):
    from bkdbench.plugins import load
    from bkdbench.specs import make_spec

    path = write_method(tmp_path, "plug_digest", "plug-digest", needs_teacher=True)
    plugin = load(str(path))
    assert (plugin.module, plugin.path) == ("plug_digest", path.resolve())
    assert plugin.digest == sha16(path.read_bytes())
    spec = make_spec("digits", 10, "plug-digest", epochs=3)
    assert spec.plugins == (f"plug_digest@{sha16(path.read_bytes())}",)
    # its CE teacher is the usual CE teacher (same run id as a plain CE run), so it is reused
    assert spec.teacher.plugins is None
    assert spec.teacher.run_id == make_spec("digits", 10, "ce", epochs=3).run_id
    assert load(str(path)) is plugin  # loaded once


def test_editing_the_plugin_gives_new_run_ids(tmp_path):
    code = ("import sys; from bkdbench.plugins import load; from bkdbench.specs import make_spec; "
            "load(sys.argv[1]); print(make_spec('digits', 10, 'plug-edit', epochs=3).run_id)")
    path = write_method(tmp_path, "plug_edit", "plug-edit")

    def run_id() -> str:
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=cli_env(), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    first = run_id()
    assert run_id() == first  # same code, same id
    path.write_text(path.read_text().replace("Field(0.1,", "Field(0.2,"))
    assert run_id() != first


def test_a_package_folder_digest_covers_every_py_file(tmp_path):
    from bkdbench.plugins import load

    pkg = tmp_path / "plug_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import losses  # noqa: F401\n")
    (pkg / "losses.py").write_text(METHOD.format(name="plug-pkg", needs_teacher=False))
    (pkg / "notes.txt").write_text("not code")
    plugin = load(str(pkg))
    expected = sha16(b"__init__.py\0", (pkg / "__init__.py").read_bytes(), b"\0",
                     b"losses.py\0", (pkg / "losses.py").read_bytes(), b"\0")
    assert plugin.digest == expected and plugin.module == "plug_pkg"
    from bkdbench.methods import method_class

    assert method_class("plug-pkg").__module__ == "plug_pkg.losses"
    from bkdbench.specs import make_spec

    assert make_spec("digits", 10, "plug-pkg", epochs=2).plugins == (f"plug_pkg@{expected}",)


def test_a_plugin_model_dataset_and_recipe_are_part_of_the_id(tmp_path):
    from bkdbench.plugins import load
    from bkdbench.specs import make_spec

    path = tmp_path / "plug_parts.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import replace
        from torch import nn
        from bkdbench.data import get_dataset, register_dataset
        from bkdbench.models import register_model
        from bkdbench.specs.recipes import Recipe, register_recipe

        @register_model("plug-mlp")
        def mlp(num_classes, in_channels=3, head="linear"):
            return None

        register_dataset(replace(get_dataset("digits"), name="plug-digits"))
        register_recipe(Recipe("plug-recipe", epochs=4, batch_size=32, lr=0.05))
    '''))
    ref = f"plug_parts@{load(str(path)).digest}"
    assert make_spec("digits", 10, "ce", model="plug-mlp").plugins == (ref,)
    assert make_spec("plug-digits", 10, "ce").plugins == (ref,)
    assert make_spec("digits", 10, "ce", recipe="plug-recipe").plugins == (ref,)
    student = make_spec("digits", 10, "bkd", model="plug-mlp")
    assert student.teacher.plugins == (ref,)  # the teacher uses the plugin's model too


def test_leaderboard_row_and_retrain_command_name_the_plugin(tmp_path):
    path = write_method(tmp_path, "plug_train", "plug-train")
    results = tmp_path / "results"
    out = run_cli(["train", "--plugin", path, "--method", "plug-train", "--epochs", "1", "--results", results],
                  folder=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    from bkdbench.leaderboard.store import read_rows
    from bkdbench.leaderboard.tables import retrain_command

    rows, _ = read_rows(results / "leaderboard")
    assert list(rows.method) == ["plug-train"] and rows.status[0] == "finished"
    assert rows.plugins[0] == f"plug_train@{sha16(path.read_bytes())}"
    assert "--plugin plug_train " in retrain_command(rows.iloc[0])
    assert not (tmp_path / "__pycache__").exists()  # the loader writes nothing next to the user's file


def install_distribution(site: Path, dist: str, package: str, init: str) -> Path:
    """A throw-away distribution installed by hand into ``site``: the package and a dist-info with a
    ``bkdbench.plugins`` entry point, as pip would leave them."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(init)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bkdbench.plugins]\n{package} = {package}\n")
    (info / "RECORD").write_text("")
    return site / package


def test_an_installed_entry_point_is_seen_with_no_plugin_option(tmp_path):
    site = tmp_path / "site"
    package = install_distribution(site, "plug-lab", "plug_lab", METHOD.format(name="plug-lab", needs_teacher=False))
    env = cli_env(PYTHONPATH=f"{Path(__file__).parents[1]}:{site}")
    listed = run_cli(["methods"], env=env, folder=tmp_path)
    digest = sha16(b"__init__.py\0", (package / "__init__.py").read_bytes(), b"\0")
    assert listed.returncode == 0 and f"plug_lab@{digest}" in listed.stdout, listed.stdout + listed.stderr
    results = tmp_path / "results"
    out = run_cli(["train", "--method", "plug-lab", "--epochs", "1", "--results", results], env=env, folder=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    from bkdbench.leaderboard.store import read_rows

    rows, _ = read_rows(results / "leaderboard")
    assert list(rows.method) == ["plug-lab"] and list(rows.plugins) == [f"plug_lab@{digest}"]


def test_an_entry_point_that_fails_names_its_distribution(tmp_path):
    site = tmp_path / "site"
    install_distribution(site, "plug-broken", "plug_broken", "import os\nraise ImportError('needs libfoo')\n")
    env = cli_env(PYTHONPATH=f"{Path(__file__).parents[1]}:{site}")
    out = run_cli(["train", "--epochs", "1"], env=env, folder=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert "distribution plug-broken" in line and "ImportError: needs libfoo" in line and "line 2" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing written


def test_the_scaffold_passes_its_own_test_and_trains(tmp_path):
    out = run_cli(["new", "method", "my-loss", "--dir", tmp_path / "mine"], folder=tmp_path)
    assert out.returncode == 0, out.stderr
    mine = tmp_path / "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["my-loss.yaml", "my_loss.py", "test_my_loss.py"]
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_loss.py"],
                            cwd=mine, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout + tested.stderr
    results = tmp_path / "results"
    out = run_cli(["train", "--plugin", mine / "my_loss.py", "--method", "my-loss", "--epochs", "1",
                   "--results", results], folder=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    from bkdbench.specs.search_spaces import load_space

    space, _ = load_space("my-loss", str(mine / "my-loss.yaml"))  # its `plugins:` brings the method
    assert list(space.params) == ["smoothing"]


def test_the_report_shows_the_plugin_in_the_provenance_and_old_rows_read(tmp_path):
    """A row with a plugins value and one written before the column existed, in one report (no torch)."""
    import pyarrow.parquet as pq

    from bkdbench.cli.app import app
    from bkdbench.leaderboard.store import write_row
    from bkdbench.paths import leaderboard_dir
    from helpers.report_rows import row
    from typer.testing import CliRunner

    board = leaderboard_dir(tmp_path)
    write_row(board, row("mine-s0", "my-loss", 0, 70.0, plugins="my_loss@0123456789abcdef"))
    old = write_row(board, row("ce-s0", "ce", 0, 60.0))
    pq.write_table(pq.read_table(old).drop_columns(["plugins"]), old)  # as the store wrote it before plugins
    out = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--out", str(tmp_path / "page")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "page" / "index.html").read_text()
    assert "plugins <code>my_loss@0123456789abcdef</code>" in page
    assert "--method my-loss --seed 0 --data-seed 0 --model digits-cnn --recipe small --epochs 3 --plugin my_loss" in page
    assert page.count("--plugin") == 1  # the CE row has none


def test_a_sweep_of_an_edited_plugin_is_another_sweep():
    from bkdbench.orchestrate.sweeps.driver import SweepConfig

    base = dict(method="bkd", dataset="digits", imbalance=10.0, space_file="x.yaml", space_hash="0123456789ab")
    assert SweepConfig(**base).sweep_id == SweepConfig(**base, plugins=None).sweep_id  # built-in: as before
    ids = {SweepConfig(**base, plugins=p).sweep_id for p in (None, "mine@0000000000000000", "mine@1111111111111111")}
    assert len(ids) == 3


@pytest.mark.parametrize("same_code", [True, False])
def test_a_trial_imports_forwarded_plugins_on_a_registry_miss_and_checks_their_digest(tmp_path, monkeypatch,
                                                                                       same_code):
    """What a Ray trial does (the driver forwards module@digest; py_modules or the node's installation
    makes the module importable by name): here the folder on sys.path stands in for py_modules."""
    from bkdbench.methods import method_class
    from bkdbench.plugins import FORWARD_ENV, PluginError

    module = f"plug_fwd_{same_code}".lower()
    path = write_method(tmp_path, module, f"plug-fwd-{same_code}".lower())
    digest = sha16(path.read_bytes()) if same_code else "0" * 16
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(FORWARD_ENV, f"{module}@{digest}")
    if same_code:
        assert method_class(f"plug-fwd-{same_code}".lower()).__module__ == module
    else:
        with pytest.raises(PluginError, match=f"has digest {sha16(path.read_bytes())}, the run expects 0000"):
            method_class("plug-fwd-false")
