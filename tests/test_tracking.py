"""Runs mirrored to trackers and read back with each tool's own reader: MLflow (a local SQLite store,
its client), W&B (offline run files) and TensorBoard (the event files); the values match the
leaderboard row, which stays the source of truth. A bad --tracking value or a missing extra ends with
one line, exit 2, nothing written; through Ray the choice reaches every trial (test_suite_runner.py)."""
from __future__ import annotations

import glob
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bkdbench.cli.app import app
from bkdbench.leaderboard.store import read_rows
from bkdbench.paths import leaderboard_dir
from helpers.wandb_files import offline_run

TRAIN = ["train", "--dataset", "digits", "--imbalance", "10", "--method", "ce", "--epochs", "2", "--seed", "3"]


def train(tmp_path: Path, *tracking: str):
    result = CliRunner().invoke(app, [*TRAIN, "--results", str(tmp_path / "results"), *tracking])
    assert result.exit_code == 0, result.output
    rows, _ = read_rows(leaderboard_dir(tmp_path / "results"))
    (row,) = rows.to_dict("records")
    return row, json.loads(row["history"])


def test_mlflow_runs_params_and_metrics_read_back(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    row, history = train(tmp_path, "--tracking", f"mlflow:{uri}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bkdbench/runs")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "ce on digits-LT IF10 seed 3"
    assert run.data.tags["bkdbench.run_id"] == row["run_id"]
    assert run.data.tags["mlflow.source.git.commit"] == (row["git_sha"] or "unknown")
    params = run.data.params
    assert (params["dataset"], params["method"], params["epochs"], params["seed"]) == ("digits", "ce", "2", "3")
    assert float(params["imbalance_factor"]) == 10.0 and params["recipe"] == json.loads(row["recipe"])["name"]
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == \
        [(h["epoch"], pytest.approx(h["train_loss"])) for h in history]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr")] == pytest.approx([h["lr"] for h in history])
    assert run.data.metrics["final/top1"] == pytest.approx(row["top1"])
    assert run.data.metrics["final/few"] == pytest.approx(row["few"])
    assert run.data.metrics["val_top1"] == pytest.approx(history[-1]["val_top1"])


def test_wandb_offline_run_files_hold_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    row, history = train(tmp_path, "--tracking", "wandb:bkd-test")
    (path,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    run = offline_run(Path(path))
    assert run["project"] == "bkd-test" and run["name"] == "ce on digits-LT IF10 seed 3"
    assert f"run_id:{row['run_id']}" in run["tags"]
    assert run["config"]["method"] == "ce" and run["config"]["epochs"] == 2
    assert run["config"]["bkdbench"]["run_id"] == row["run_id"]
    assert [h["train_loss"] for h in run["history"]] == pytest.approx([h["train_loss"] for h in history])
    assert [h["epoch"] for h in run["history"]] == [0, 1]
    assert run["summary"]["final/top1"] == pytest.approx(row["top1"])


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the folder's event files (TFRecord framing around tensorboard Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_event_files_hold_the_epochs(tmp_path):
    row, history = train(tmp_path)
    runs = list((tmp_path / "results" / "experiments" / "tensorboard" / "runs").iterdir())
    assert [r.name for r in runs] == [f"ce-on-digits-LT-IF10-seed-3-{row['run_id']}"]  # label and id
    scalars = tensorboard_scalars(runs[0])
    assert scalars["train_loss"] == [(h["epoch"], pytest.approx(h["train_loss"], rel=1e-6)) for h in history]
    assert [s for s, _ in scalars["test_top1"]] == [h["epoch"] for h in history if "test_top1" in h]
    assert scalars["final/top1"] == [(0, pytest.approx(row["top1"], rel=1e-6))]


@pytest.mark.parametrize("value, message", [
    ("neptune", "unknown tracker 'neptune'"),
    ("mlflow", "--tracking mlflow needs the mlflow client: pip install 'bkdbench[mlflow]'"),
    ("wandb", "--tracking wandb needs the wandb client: pip install 'bkdbench[wandb]'"),
])
@pytest.mark.parametrize("command", ["train", "run", "sweep", "ablate"])
def test_bad_tracking_fails_before_any_work(tmp_path, monkeypatch, command, value, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlflow", "wandb") else real(name, *a))
    monkeypatch.chdir(tmp_path)
    args = {"train": TRAIN, "run": ["run", "--suite", "digits-lt"], "sweep": ["sweep", "bkd"],
            "ablate": ["ablate", "bkd", "--grid", "alpha=0.5,1"]}[command]
    result = CliRunner().invoke(app, [*args, "--results", str(tmp_path / "results"), "--tracking", value])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []  # no results folder, no mlflow.db, no wandb/


def test_wandb_online_without_a_login_fails_before_any_work(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, [*TRAIN, "--results", str(tmp_path / "results"), "--tracking", "wandb"])
    assert result.exit_code == 2 and "WANDB_MODE=offline" in result.output, result.output
    assert not (tmp_path / "results").exists()


# The suite through Ray mirrored to MLflow: tests/test_suite_runner.py, which reads its suite's run.


def test_sweep_search_trials_are_mirrored_too(tmp_path, monkeypatch):
    """A search trial (in process, its teacher a fresh model, tune.report captured) logs its epochs to
    MLflow under the sweep's experiment, tagged as a search trial, with its validation top-1."""
    import bkdbench.training.train as train_mod
    from mlflow import MlflowClient

    from bkdbench.orchestrate.sweeps.driver import search_trial
    from bkdbench.orchestrate.tracking import ENV, Tracking
    from helpers.sweeps import watched_search

    watch = watched_search(monkeypatch, train_mod, epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(ENV, Tracking(kind="mlflow", target=uri).encode())
    search_trial({"alpha": 0.5, "temperature": 3.0}, base=watch.base.canonical_json(), results=str(tmp_path / "r"),
                 sweep_id="bkd-digits-if10-test")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bkdbench/bkd-digits-if10-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["param.temperature"] == "3.0"
    assert any(k.endswith("sweep_role") and v == "search" for k, v in run.data.tags.items()), run.data.tags
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert run.data.metrics["final/val_top1"] == pytest.approx(watch.reports[-1]["val_top1"])
    assert not watch.touched  # still never the test split
