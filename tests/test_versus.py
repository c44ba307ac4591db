"""Δ = ours − published and the comparability rule, on hand-made leaderboard rows; the
``leaderboard --published`` command on a real leaderboard folder."""
from __future__ import annotations

import csv
import io
import json
import math

import pandas as pd
import pytest

from bkdbench.leaderboard.published_results import published_rows
from bkdbench.leaderboard.store import write_row
from bkdbench.leaderboard.versus import versus_published
from bkdbench.paths import leaderboard_dir
from helpers.cli import invoke_cli

T_975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (tables)


def row(method, top1, seed=0, *, dataset="cifar100", factor=100.0, model="resnet32", epochs=200, recipe="reference",
        run_id=None, teacher=None, profile="exp"):
    return {"run_id": run_id or f"{dataset}-{method}-{model}-{epochs}-{seed}", "dataset": dataset,
            "imbalance_factor": factor, "profile": profile, "method": method, "model": model, "epochs": epochs,
            "recipe": json.dumps({"name": recipe, "epochs": epochs}), "seed": seed, "data_seed": 0, "status": "finished",
            "top1": top1, "params": "{}", "teacher_run_id": teacher, "schema_version": 1}


@pytest.fixture(scope="module")
def published():
    return published_rows()


def by_label(result, label, dataset="cifar100"):
    found = result[(result["label"] == label) & (result["dataset"] == dataset)]
    assert len(found) == 1, result[["dataset", "label"]]
    return found.iloc[0]


def test_delta_and_interval_where_the_protocol_matches(published):
    rows = pd.DataFrame([row("ldam-drw", v, s) for s, v in enumerate([41.0, 42.0, 43.0])])
    got = by_label(versus_published(rows, published), "ldam-drw")
    half = T_975_2 * 1.0 / math.sqrt(3)  # std of 41, 42, 43 is 1
    assert got.comparable and got.published == 42.04  # Cao et al. Table 2, 100 - 57.96
    assert got.delta == pytest.approx(42.0 - 42.04)
    assert (got.delta_low, got.delta_high) == pytest.approx((42.0 - half - 42.04, 42.0 + half - 42.04))
    assert got.source == "cao2019"


@pytest.mark.parametrize("ours, why", [
    (dict(method="ce", recipe="cpu-short", epochs=10), "recipe cpu-short, 10 epochs (published 200)"),
    (dict(method="ce", model="resnet20"), "model resnet20, published resnet32"),
    (dict(method="bkd"), "no published number: not retrievable here"),
    (dict(method="dkd"), "no published value for this method here"),
    (dict(method="balanced-softmax", dataset="cifar10", factor=200.0), "another CIFAR-LT file set"),
])
def test_other_cells_say_why_they_are_not_comparable(published, ours, why):
    method = ours.pop("method")
    rows = pd.DataFrame([row(method, 40.0 + s, s, **ours) for s in range(2)])
    result = versus_published(rows, published)
    got = result.iloc[0]
    assert len(result) == 1 and not got.comparable and math.isnan(got.delta)
    assert why in got.why


def test_a_single_seed_gets_a_delta_but_no_interval(published):
    got = versus_published(pd.DataFrame([row("ce", 40.0)]), published).iloc[0]
    assert got.comparable and got.delta == pytest.approx(40.0 - 38.32) and math.isnan(got.delta_low)


def test_two_stage_methods_match_on_both_budgets(published):
    stage1 = [row("ce", 44.0, s, dataset="imagenet-lt", factor=256.0, model="resnext50_32x4d", epochs=90,
                  recipe="imagenet-lt", profile="natural", run_id=f"s1-{s}") for s in range(2)]
    crt = [row("crt", 49.0 + s, s, dataset="imagenet-lt", factor=256.0, model="resnext50_32x4d", epochs=10,
               recipe="imagenet-lt", profile="natural", teacher=f"s1-{s}") for s in range(2)]
    result = versus_published(pd.DataFrame(stage1 + crt), published)
    got = by_label(result, "crt", "imagenet-lt")
    assert got.comparable and got.delta == pytest.approx(49.5 - 49.6)  # Kang README: cRT All 49.6
    short = [dict(r, epochs=9, run_id=f"c9-{i}") for i, r in enumerate(crt)]
    got = by_label(versus_published(pd.DataFrame(stage1 + short), published), "crt", "imagenet-lt")
    assert not got.comparable and got.why == "recipe imagenet-lt, 90+9 epochs (published 90+10)"
    alone = versus_published(pd.DataFrame(crt), published).iloc[0]  # the stage-1 rows are elsewhere
    assert not alone.comparable and "stage-1 budget unknown" in alone.why


def test_best_epoch_metric_and_shot_splits(published):
    rows = pd.DataFrame([dict(row("ce", 40.0, s), top1_best_epoch=39.0 + s, many=60.0) for s in range(2)])
    best = versus_published(rows, published, "top1_best_epoch").iloc[0]
    assert best.delta == pytest.approx(39.5 - 38.32)
    many = versus_published(rows, published, "many").iloc[0]  # Cao et al. give no shot splits
    assert not many.comparable and many.why == "no published many"
    with pytest.raises(ValueError, match="no published value"):
        versus_published(rows, published, "ece")


def test_cli_leaderboard_published(tmp_path):
    board = leaderboard_dir(tmp_path)
    for r in [row("ldam-drw", v, s) for s, v in enumerate([41.0, 42.0, 43.0])] + [row("ce", 30.0, 0, recipe="cpu-short", epochs=10)]:
        write_row(board, {k: v for k, v in r.items() if k != "schema_version"})
    shown = invoke_cli(["leaderboard", "--published", "--results", tmp_path])
    assert shown.returncode == 0, shown.stderr
    assert "-0.04" in shown.stdout and "not comparable: recipe cpu-short, 10 epochs (published 200)" in shown.stdout
    table = list(csv.DictReader(io.StringIO(invoke_cli(["leaderboard", "--published", "--format", "csv",
                                                     "--results", tmp_path]).stdout)))
    ldam = next(r for r in table if r["label"] == "ldam-drw")
    assert float(ldam["delta"]) == pytest.approx(-0.04) and ldam["comparable"] == "True"
    markdown = invoke_cli(["leaderboard", "--published", "--format", "markdown", "--results", tmp_path]).stdout
    assert "| ldam-drw | 100 | 42.00 ± 1.00 (3) | 42.04 | -0.04 |" in markdown
    bad = invoke_cli(["leaderboard", "--published", "--metric", "ece", "--results", tmp_path])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no published value" in bad.stderr


def test_the_report_has_the_published_section(tmp_path):
    from bkdbench.leaderboard.report import write_report
    from bkdbench.leaderboard.store import read_rows

    board = leaderboard_dir(tmp_path / "results")
    for r in [row("ldam-drw", v, s) for s, v in enumerate([41.0, 42.0, 43.0])] + [row("ce", 30.0, 0, recipe="cpu-short", epochs=10)]:
        write_row(board, {k: v for k, v in r.items() if k != "schema_version"})
    rows, _ = read_rows(board)
    page = write_report(rows, tmp_path / "report", title="t", scope="s", command="c").read_text()
    section = page.split("Beside the published results", 1)[1]
    assert "<td>-0.04</td>" in section and "42.04" in section
    assert "not comparable: recipe cpu-short, 10 epochs (published 200)" in section


def test_a_suite_names_its_published_table_and_run_ends_with_the_comparison(tmp_path):
    from bkdbench.cli.console import console
    from bkdbench.cli.run import _show_leaderboard
    from bkdbench.specs.suites import SuiteError, load_suite

    assert load_suite("cifar-lt", check_names=False).published == "cifar-lt"
    assert load_suite("imagenet-lt", check_names=False).published == "large-lt"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndatasets: [digits]\nimbalance: [10]\nmethods: [ce]\npublished: nope\n")
    with pytest.raises(SuiteError, match="unknown published table 'nope'; choose one of: cifar-lt, large-lt"):
        load_suite(str(bad), check_names=False)
    board = leaderboard_dir(tmp_path)
    for r in [row("ldam-drw", v, s) for s, v in enumerate([41.0, 42.0, 43.0])]:
        write_row(board, {**{k: v for k, v in r.items() if k != "schema_version"}, "suite": "cifar-lt"})
    with console.capture() as captured:
        _show_leaderboard(tmp_path, "cifar-lt", "cifar-lt")
    text = captured.get()
    assert "ours beside the published" in text and "42.04" in text and "-0.04" in text
