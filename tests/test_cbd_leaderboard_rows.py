"""CBD's extra teachers are no CE seeds (issue "Numbers a reviewer can trust", §5).

CBD with K = 2 teachers trains, for student seed s, the CE runs of seeds s and s + 1000. The first
is the suite's own CE run; the second is trained only as a teacher (an untagged row). Without
``--suite``, ``bkdbench leaderboard`` must show CE with the 3 seeds asked for, not 6.
"""
from __future__ import annotations

import io

import pandas as pd
import typer
from typer.testing import CliRunner

from bkdbench.cli.results import register
from bkdbench.leaderboard.store import extra_teacher_ids, read_rows, write_row
from bkdbench.paths import leaderboard_dir


def _row(run_id, method, seed, top1, **extra):
    return {"run_id": run_id, "dataset": "digits", "imbalance_factor": 10.0, "data_seed": 0, "model": "cnn-small",
            "epochs": 30, "method": method, "seed": seed, "status": "finished", "top1": top1, "params": "{}", **extra}


def _board(tmp_path):
    board = leaderboard_dir(tmp_path)
    cbd = '{"alpha":0.4,"feature_weight":100.0,"teachers":2}'
    for s in (0, 1, 2):
        write_row(board, _row(f"ce{s}", "ce", s, 50.0 + s))  # the CE seeds (trained by `bkdbench train`: untagged)
        write_row(board, _row(f"ce{s + 1000}", "ce", s + 1000, 90.0))  # CBD's second teachers: untagged
        write_row(board, _row(f"cbd{s}", "cbd", s, 60.0, params=cbd, teacher_run_id=f"ce{s},ce{s + 1000}"))
    # a class-subset teacher listed second by a subset-kd row keeps its own (distinct) label
    write_row(board, _row("sub1", "ce", 0, 70.0, params='{"classes":"3,4"}'))
    write_row(board, _row("skd0", "subset-kd", 0, 61.0, teacher_run_id="sub0,sub1"))
    # a CE run that a suite asked for stays, even if some CBD run also used it as its second teacher
    write_row(board, _row("ce7", "ce", 7, 55.0, suite="mine"))
    write_row(board, _row("cbd-other", "cbd", 9, 60.0, params=cbd, teacher_run_id="ce9,ce7"))
    return tmp_path


def _csv(tmp_path, *args) -> pd.DataFrame:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["leaderboard", "--results", str(tmp_path), "--format", "csv", *args])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout))


def test_extra_teacher_ids(tmp_path):
    rows, _ = read_rows(leaderboard_dir(_board(tmp_path)))
    assert extra_teacher_ids(rows) == {"ce1000", "ce1001", "ce1002"}


def test_leaderboard_without_suite_counts_only_the_ce_seeds(tmp_path):
    _board(tmp_path)
    for args in ((), ("--method", "ce")):
        table = _csv(tmp_path, *args).set_index("label")
        # seeds 0, 1, 2 and the suite's seed 7: mean (50 + 51 + 52 + 55) / 4; the 90.0 teachers are out
        assert table.loc["ce", "n"] == 4 and table.loc["ce", "mean"] == 52.0
        assert "ce (classes=3,4)" in table.index
    assert _csv(tmp_path, "--method", "cbd").set_index("label").loc["cbd", "n"] == 4
