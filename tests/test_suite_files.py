"""Suite files and `bkdbench run`'s checks of its input: the shipped suites load, and bad input ends
with one line naming the problem and exit status 2 before any work (no Ray, nothing written).

In-process through typer's CliRunner; the modules that would start Ray are replaced by one that
fails the test if anything is taken from it."""
from __future__ import annotations

import re
import sys
import types
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from bkdbench.cli import app
from bkdbench.leaderboard.store import read_rows, write_row
from bkdbench.specs.suites import load_suite, suite_names
from helpers.cli import run_cli
from helpers.files import assert_nothing_written, snapshot, tree, write_suite

SHIPPED = {"digits-lt": 36, "cifar-lt": 216, "fashion-lt": 30, "imagenet-lt": 8, "places-lt": 6, "inat18": 6}

GOOD = dict(datasets=["digits"], imbalance=[10], methods=["ce"], seeds=1, epochs=2)


class _NoRay(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):  # libraries that scan sys.modules ask for __file__ and the like
            raise AttributeError(name)
        raise AssertionError(f"bad input reached {self.__name__}.{name}: work (Ray) started before the check")


@pytest.fixture
def no_ray(monkeypatch):
    """Anything `bkdbench run` takes from the Ray-side modules fails the test."""
    for name in ("bkdbench.orchestrate.runner", "bkdbench.orchestrate.ray_session"):
        monkeypatch.setitem(sys.modules, name, _NoRay(name))


@pytest.fixture
def results(tmp_path):
    """An existing results folder with one finished run in its leaderboard."""
    root = tmp_path / "results"
    write_row(root / "leaderboard", {
        "run_id": "0123456789abcdef", "suite": "earlier", "dataset": "digits", "imbalance_factor": 10.0,
        "method": "ce", "seed": 0, "status": "finished", "top1": 50.0,
        "finished_at": datetime(2025, 1, 2, tzinfo=timezone.utc),
    })
    return root


def run_bad(args, results, code=2, allow_empty_folders=False):
    """Run `bkdbench ARGS` in-process; expect exit ``code``, one line on stderr, no traceback, and
    nothing written in the test's folder (the existing results folder beside the suite files and
    data folders of the test). Returns that line."""
    before = snapshot(results.parent)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, f"exit {result.exit_code}; output:\n{result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.output
    assert result.stdout.strip() == "", f"nothing is printed before the error:\n{result.stdout}"
    assert_nothing_written(before, results.parent, allow_empty_folders=allow_empty_folders)
    rows, bad = read_rows(results / "leaderboard")
    assert list(rows.run_id) == ["0123456789abcdef"] and bad == []
    return lines[0]


# --- the shipped suites ----------------------------------------------------------------------

def test_suites_command_lists_the_shipped_suites(monkeypatch):
    from bkdbench.cli import console

    monkeypatch.setattr(console.console, "_width", 250)  # one table row per line
    result = CliRunner().invoke(app, ["suites"])
    assert result.exit_code == 0, result.output
    for name, runs in SHIPPED.items():
        assert re.search(rf"[│|]\s*{re.escape(name)}\s*[│|]\s*{runs}\s*[│|]", result.output), \
            f"{name} with {runs} runs not listed:\n{result.output}"


@pytest.mark.parametrize("name", sorted(set(suite_names()) | set(SHIPPED)))
def test_shipped_suite_loads(name):
    suite = load_suite(name)
    assert suite.name == name
    assert suite.size() == SHIPPED.get(name, suite.size()) > 0


def test_digits_suite_expands_to_distinct_runs():
    specs = load_suite("digits-lt").expand()
    assert len(specs) == 36
    assert len({s.run_id for s in specs}) == 36
    students = [s for s in specs if s.teacher is not None]
    assert {s.method for s in students} == {"kd", "bkd"}
    ids = {s.run_id for s in specs}
    assert all(s.teacher.run_id in ids for s in students)  # a suite's CE runs are its teachers


# --- bad suite files ------------------------------------------------------------------------

BAD_FILES = {
    # id: (file text or fields, words the message must contain besides the file's path)
    "malformed-yaml": ("name: x\ndatasets: [digits\nimbalance: [10]\n", ["YAML"]),
    "unknown-key": ({**GOOD, "epoch": 3}, ["epoch"]),
    "wrong-type": ({**GOOD, "seeds": "many"}, ["key 'seeds': 'many' is not an integer or a list"]),
    "bad-seed-in-list": ({**GOOD, "seeds": [0, "x"]}, ["key 'seeds.1': Input should be a valid integer"]),
    "imbalance-word": ({**GOOD, "imbalance": ["ten"]}, ["key 'imbalance.0': 'ten' is not a number or 'natural'"]),
    "method-entry-typo": ({**GOOD, "methods": [{"name": "bkd"}]}, ["key 'methods.0.method': Field required"]),
    "unknown-method": ({**GOOD, "methods": ["ce", "cee"]}, ["cee", "bkd", "ldam-drw", "focal"]),
    "unknown-dataset": ({**GOOD, "datasets": ["nosuchdata"]}, ["nosuchdata", "digits", "cifar10"]),
    "imbalance-below-1": ({**GOOD, "imbalance": [0.5]}, ["imbalance"]),
    "bad-method-param": ({**GOOD, "methods": [{"method": "bkd", "params": {"temperature": -1}}]},
                         ["temperature"]),
    "not-a-mapping": ("- digits\n- ce\n", []),
    "zero-seeds": ({**GOOD, "seeds": 0}, ["key 'seeds'", "at least 1"]),
    "empty-seed-list": ({**GOOD, "seeds": []}, ["key 'seeds'", "non-empty"]),
    "repeated-seed": ({**GOOD, "seeds": [1, 1]}, ["key 'seeds'", "without repeats"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_suite_file(case, tmp_path, results, no_ray):
    content, words = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        write_suite(path, **content)
    line = run_bad(["run", "--suite", str(path), "--results", str(results)], results)
    assert str(path) in line, line
    for word in words:
        assert word in line, f"{word!r} missing from: {line}"


# --- bad command lines ------------------------------------------------------------------------

def test_unknown_suite_name_lists_the_shipped_ones(results, no_ray):
    line = run_bad(["run", "--suite", "nosuch-suite", "--results", str(results)], results)
    assert "nosuch-suite" in line
    for name in SHIPPED:
        assert name in line, line


def test_missing_suite_file(tmp_path, results, no_ray):
    path = tmp_path / "absent.yaml"
    line = run_bad(["run", "--suite", str(path), "--results", str(results)], results)
    assert str(path) in line


def test_zero_epochs(results, no_ray):
    line = run_bad(["run", "--suite", "digits-lt", "--epochs", "0", "--results", str(results)], results)
    assert "epochs" in line


def test_filters_that_leave_no_runs(results, no_ray):
    line = run_bad(["run", "--suite", "digits-lt", "--method", "focal", "--results", str(results)], results)
    assert "--method focal: not in suite digits-lt" in line and "balanced-softmax" in line  # what it has


def test_unwritable_results_folder(tmp_path, results, no_ray):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    target = blocker / "sub"
    line = run_bad(["run", "--suite", "digits-lt", "--epochs", "1", "--results", str(target)], results)
    assert str(target) in line
    assert blocker.read_text() == "a file, not a folder"


def test_missing_dataset_files(tmp_path, results, no_ray):
    empty = tmp_path / "empty"
    empty.mkdir()
    suite = write_suite(tmp_path / "cifar.yaml", **{**GOOD, "datasets": ["cifar10"]})
    # `run` proves the results folder writable before it reads the data, without creating it: no file
    # and no folder may appear, in the results or in the data folder.
    line = run_bad(["run", "--suite", str(suite), "--data-dir", str(empty), "--results", str(results)], results)
    assert "bkdbench data download" in line
    assert tree(empty) == []  # not even a folder in the data folder


def test_bad_input_through_the_console_script(tmp_path, results):
    """The real process: exit status 2, one line on stderr, no traceback, no Ray started."""
    path = tmp_path / "bad.yaml"
    write_suite(path, **{**GOOD, "epoch": 3})
    before = snapshot(tmp_path)
    proc = run_cli(["run", "--suite", path, "--results", results], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "epoch" in lines[0], proc.stderr
    assert proc.stdout.strip() == ""
    assert_nothing_written(before, tmp_path)


# --- run ids, pinned ---------------------------------------------------------------------------
# A run id names everything cached for the run (its leaderboard row, a teacher's checkpoint): a change
# to how ids are computed, or to any default that enters a spec, orphans every cached result, and
# every leaderboard starts over. These literals were computed once (2026-12, protocol 2); changing
# one is a deliberate edit whose commit says that every cached result is invalidated.
PINNED_RUN_IDS = {
    ("digits-lt", "ce", 10.0, 0): "8b09286de5027e17",
    ("digits-lt", "bkd", 10.0, 0): "cfb9d7edd39e494a",
    ("cifar-lt", "ce", 100.0, 0): "c28ebcee7588c48e",
    ("cifar-lt", "bkd", 100.0, 0): "a7dd70c295f1bbb4",
}
# The spec behind the first id, as text: the id is the first 16 hex digits of its SHA-256.
DIGITS_CE_JSON = ('{"data_seed":0,"dataset":"digits","epochs":40,"imbalance_factor":10.0,"method":"ce",'
                  '"model":"cnn-small","params":{},"profile":"exp","protocol":2,"recipe":"small","seed":0,'
                  '"split":"every-class","teacher":null}')


@pytest.mark.parametrize("suite, method, imbalance, seed", sorted(PINNED_RUN_IDS))
def test_run_ids_of_shipped_specs_are_pinned(suite, method, imbalance, seed):
    (spec,) = [s for s in load_suite(suite).expand()
               if (s.method, s.imbalance_factor, s.seed) == (method, imbalance, seed) and s.dataset in ("digits", "cifar10")]
    assert spec.run_id == PINNED_RUN_IDS[suite, method, imbalance, seed]
    if method == "bkd":  # its teacher is the CE run of the same setup, by id
        assert spec.teacher.run_id == PINNED_RUN_IDS[suite, "ce", imbalance, seed]


def test_a_run_id_is_the_sha256_of_the_canonical_spec():
    import hashlib

    (spec,) = [s for s in load_suite("digits-lt").expand() if (s.method, s.imbalance_factor, s.seed) == ("ce", 10.0, 0)]
    assert spec.canonical_json() == DIGITS_CE_JSON
    assert hashlib.sha256(DIGITS_CE_JSON.encode()).hexdigest()[:16] == PINNED_RUN_IDS["digits-lt", "ce", 10.0, 0]
