"""Plugins through Ray on a real two-node cluster (`ray start` head + worker on this machine): the head
has no CPU, so every trial runs on the second node, where the plugin file is not importable by path
(it lives in this test's folder, on no node's PYTHONPATH or working folder): it gets there only with
the job (runtime_env py_modules). One cluster serves a suite whose YAML lists the plugin, an
ablation with --plugin and a sweep whose search-space YAML lists it. The plugin's default diverges, so
the sweep's final run with the defaults fails: the failed-final-run path through real Ray and Optuna
(the sweep ends with exit 1 naming it, after its report)."""
from __future__ import annotations

import hashlib
import json
import re

import pandas as pd

import pytest

from bkdbench.leaderboard.store import read_rows

from helpers.cli import run_cli
from helpers.cluster import Cluster
from helpers.files import write_suite

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A label-smoothed CE whose default (no smoothing) diverges; where it is imported inside Ray, it says
so in a marker file."""
import os
from pathlib import Path

import torch.nn.functional as F
from pydantic import Field

from bkdbench.methods import Method, register
from bkdbench.methods.params import MethodParams

if os.environ.get("PLUG_MARKS") and os.environ.get("RAY_NODE_TAG"):
    mark = Path(os.environ["PLUG_MARKS"]) / f"{os.getpid()}.json"
    mark.write_text('{"node": "%s", "file": "%s"}' % (os.environ["RAY_NODE_TAG"], __file__))


class Params(MethodParams):
    smoothing: float = Field(0.0, ge=0, lt=1)


@register("plug-ray")
class Smooth(Method):
    Params = Params

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None):
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.params.smoothing)
        return loss * float("nan") if self.params.smoothing == 0 else loss
'''


def test_a_plugin_method_trains_on_the_second_node_in_a_suite_an_ablation_and_a_sweep(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    plugin = code / "plug_ray.py"
    plugin.write_text(PLUGIN)
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()[:16]
    marks = tmp_path / "marks"
    marks.mkdir()
    suites = tmp_path / "suites"
    suites.mkdir()
    suite = write_suite(suites / "plug.yaml", name="plug", datasets=["digits"], imbalance=[10], methods=[{"method": "plug-ray", "params": {"smoothing": 0.1}}],
                        seeds=1, epochs=2, plugins=["../code/plug_ray.py"])
    space = tmp_path / "plug-ray.yaml"
    space.write_text("method: plug-ray\nplugins: [code/plug_ray.py]\nparams:\n"
                     "  smoothing: {type: float, low: 0.05, high: 0.3}\n")
    results = tmp_path / "results"
    cluster = Cluster()
    cluster.env["PLUG_MARKS"] = str(marks)
    try:
        cluster.env["RAY_NODE_TAG"] = "head"
        cluster.start_head(cpus=0)  # no trial can run here
        cluster.env["RAY_NODE_TAG"] = "second"
        cluster.add_worker(cpus=1)
        env = {k: v for k, v in cluster.driver_env().items() if k not in ("RAY_NODE_TAG", "PLUG_MARKS")}
        common = ["--address", cluster.address, "--results", results]
        out = run_cli(["run", "--suite", suite, *common], env=env, folder=tmp_path, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        out = run_cli(["ablate", "plug-ray", "--plugin", plugin, "--grid", "smoothing=0.1,0.2", "--imbalance", "10",
                       "--seeds", "1", "--epochs", "2", *common], env=env, folder=tmp_path, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        out = run_cli(["sweep", "plug-ray", "--space", space, "--trials", "2", "--epochs", "2", "--final-seeds", "1",
                       "--concurrency", "1", *common], env=env, folder=tmp_path, timeout=600)
        sweep_out = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == 1, out.stdout + out.stderr  # the defaults' final run diverged
    finally:
        cluster.stop()

    rows, bad = read_rows(results / "leaderboard")
    assert bad == []
    assert set(rows.method) == {"plug-ray"}
    # the sweep's final runs: the tuned one (tagged with the sweep) finished; the defaults' (untagged: a
    # plain run any command may share) failed, named in the output with its reason
    assert set(rows[rows.sweep_id.notna()].status) == {"finished"}
    named = re.search(r"failed ([0-9a-f]{16}): ", sweep_out)
    assert named, sweep_out
    failed = rows.set_index("run_id").loc[named.group(1)]
    assert failed.status == "failed" and pd.isna(failed.sweep_id)
    assert json.loads(failed.params)["smoothing"] == 0.0  # the plugin's default
    assert "loss" in failed.error and "nan" in failed.error, failed.error
    assert f"failed {named.group(1)}: {failed.error}" in sweep_out, sweep_out
    assert f"1 run(s) failed: {named.group(1)}" in sweep_out and "test set (last epoch)" in sweep_out, sweep_out
    others = rows[rows.run_id != named.group(1)]
    # the suite's run (smoothing 0.1, which the ablation's 0.1 setting shares), the ablation's 0.2, the tuned final
    assert set(others.status) == {"finished"} and len(others) == 3
    found = [json.loads(p.read_text()) for p in marks.glob("*.json")]
    assert found, "the plugin was never imported inside Ray"
    assert {m["node"] for m in found} == {"second"}
    assert all(not m["file"].startswith(str(code)) for m in found), found  # the job's copy, not the test's file
