"""``bkdbench report``: the page of a suite, a sweep and an ablation, built from rows with hand-checkable
numbers and opened from disk in headless Chromium (every image loads, the tables hold the expected
rows and values, no console errors, the screenshot is not blank); provenance in runs.json; old rows
without a history still report; bad input writes nothing."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from bkdbench.cli.app import app
from bkdbench.leaderboard.store import read_rows
from bkdbench.paths import leaderboard_dir
from helpers.browser import chromium, load_page
from helpers.report_rows import (ABLATION, SUITE_TOP1, SWEEP, SWEEP_TRIALS, ablation_top1, write_ablation_rows,
                                 write_suite_rows, write_sweep)

BROWSER = chromium()
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium here: `apt-get install chromium` (.ci/run does)")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-results")
    ids = {"suite": write_suite_rows(root), "ablation": write_ablation_rows(root), "sweep": write_sweep(root)}
    return root, ids


def report(root, out, *args):
    result = CliRunner().invoke(app, ["report", *args, "--results", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = out / "index.html"
    assert f"wrote {index.resolve()}" in " ".join(result.output.split())
    return index


def cell(mean: float, values, n: int) -> str:
    std = np.std(values, ddof=1)
    return f"{mean:.2f} ± {std:.2f} ({n})"


def screenshot_is_a_page(png: bytes) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    pixels = np.asarray(image, dtype=float)
    assert image.width == 1400 and image.height > 600, image.size
    assert pixels.std() > 20, f"screenshot looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 100).mean() > 0.01 and (pixels > 200).mean() > 0.3  # dark text and header on a light page


def check_page(page, images: int) -> None:
    assert page.errors == [], page.errors
    assert len(page.images) == images, [i["src"] for i in page.images]
    broken = [i["src"] for i in page.images if not (i["complete"] and i["naturalWidth"] > 100 and i["naturalHeight"] > 100)]
    assert broken == [], broken
    screenshot_is_a_page(page.screenshot)


@needs_browser
def test_suite_report_in_chromium(results, tmp_path):
    root, ids = results
    index = report(root, tmp_path / "suite", "--suite", "digits-lt")
    page = load_page(index, BROWSER)
    check_page(page, images=3)  # per-class accuracy, training curves, summary
    assert page.title == "bkdbench report — suite digits-lt"

    board = page.tables["leaderboard"]
    assert [r[0] for r in board] == ["bkd", "kd", "ce"]  # ranked by top-1, ablation and sweep rows left out
    for r in board:
        values = SUITE_TOP1[r[0]]
        assert r[1] == cell(np.mean(values), values, 3)  # top-1
        assert r[5] == cell(np.mean(values) - 1, values, 3)  # val top-1
        assert r[8] == "3" and r[9] == "3 run id(s)"

    comparisons = {r[2]: r for r in page.tables["comparisons"]}
    assert set(comparisons) == {"bkd", "kd"} and all(r[3] == "ce" for r in comparisons.values())
    diffs = np.subtract(SUITE_TOP1["kd"], SUITE_TOP1["ce"])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    kd = comparisons["kd"]
    assert kd[4] == "3" and kd[7] == f"{diffs.mean():+.2f}"
    assert kd[8] == f"[{diffs.mean() - half:+.2f}, {diffs.mean() + half:+.2f}]" and kd[9].startswith("A better")

    runs = {r[0]: r for r in page.tables["runs"]}
    assert set(runs) == {i for method in ids["suite"].values() for i in method}
    assert runs["bkd-s1"][12] == "abc123def456" and "testhost" in runs["bkd-s1"][14]
    assert runs["bkd-s1"][16] == ("bkdbench train --dataset digits --imbalance 10 --method bkd --seed 1 --data-seed 0 "
                                  "--model digits-cnn --recipe small --epochs 3")


def test_suite_report_files_and_provenance(results, tmp_path):
    """What the page links is there: the PNGs (real images of real size) and runs.json with every
    run's spec, provenance and history."""
    from PIL import Image

    root, ids = results
    out = tmp_path / "suite"
    index = report(root, out, "--suite", "digits-lt")
    html = index.read_text()
    assert "<img" in html and 'src="figures/' in html and "http://" not in html and "https://" not in html
    for name in ("per-class-digits-if10.png", "curves-digits-if10.png", "summary-top1.png"):
        with Image.open(out / "figures" / name) as image:
            assert image.width > 600 and image.height > 300, (name, image.size)
    runs = {r["run_id"]: r for r in json.loads((out / "runs.json").read_text())}
    assert set(runs) == {i for method in ids["suite"].values() for i in method}
    kd = runs["kd-s2"]
    assert kd["top1"] == 68.0 and kd["git_sha"] == "abc123def4567890" and kd["host"] == "testhost"
    assert kd["recipe"] == {"name": "small", "epochs": 3} and [h["epoch"] for h in kd["history"]] == [0, 1, 2]
    assert kd["command"].startswith("bkdbench train --dataset digits --imbalance 10 --method kd --seed 2")


@needs_browser
def test_ablation_report_in_chromium(results, tmp_path):
    root, _ = results
    page = load_page(report(root, tmp_path / "ablation", "--ablation", ABLATION), BROWSER)
    check_page(page, images=4)  # + the α × T heat map
    board = {r[0]: r for r in page.tables["leaderboard"]}
    assert len(board) == 4
    for alpha in (0.5, 1.0):
        for temperature in (2.0, 4.0):
            values = [ablation_top1(alpha, temperature, s) for s in range(2)]
            assert board[f"bkd (alpha={alpha:g}, temperature={temperature:g})"][1] == cell(np.mean(values), values, 2)
    effects = {(r[0], r[1]): r for r in page.tables["section"]}  # the marginal effects
    assert effects[("alpha", "1")][2].startswith(f"{np.mean([ablation_top1(1.0, t, s) for t in (2, 4) for s in (0, 1)]):.2f}")
    assert effects[("temperature", "2")][3] == "4"


@needs_browser
def test_sweep_report_in_chromium(results, tmp_path):
    root, ids = results
    page = load_page(report(root, tmp_path / "sweep", "--sweep", SWEEP), BROWSER)
    check_page(page, images=6)  # + validation accuracy over α × T, objective over trials, importances
    assert [r[0] for r in page.tables["leaderboard"]] == ["bkd (tuned)", "bkd"]
    (comparison,) = page.tables["comparisons"]
    assert comparison[2:4] == ["bkd (tuned)", "bkd"] and comparison[9].startswith("no clear difference")
    (sweep_part,) = [k for k in page.tables if k.startswith("section:s-sweep-")]
    trials = page.tables[sweep_part]  # the sweep's best trials, by validation accuracy
    assert [r[0] for r in trials] == ["1", "2", "0", "3"] and trials[0][3] == "66.5"
    assert len(trials) == len(SWEEP_TRIALS)
    assert {r[0] for r in page.tables["runs"]} == set(ids["sweep"]["tuned"] + ids["sweep"]["default"])


def test_the_sweep_section_says_which_trials_its_validation_split_cannot_order(results, tmp_path):
    root, _ = results
    text = " ".join(report(root, tmp_path / "noise", "--sweep", SWEEP).read_text().split())
    # the best, 66.5 % on 100 images: sqrt(0.665 · 0.335 / 100) = 4.720 points, 2·sqrt(2)·4.720 = 13.35:
    # 63, 61 and 58 (3.5, 5.5 and 8.5 below) are all inside
    assert ("validation noise (100 images): the best scored 66.5 % ± 4.7 (one standard error) and 3 of the other 3 "
            "lie within 13.3 points of it") in text


def test_rows_without_history_still_read_and_report(tmp_path):
    """A row written before the history column existed reads back (history null) and the page says
    why it has no curves."""
    from bkdbench.leaderboard.store import write_row
    from helpers.report_rows import row

    board = leaderboard_dir(tmp_path)
    path = write_row(board, row("old-1", "ce", 0, 61.0))
    pq.write_table(pq.read_table(path).drop_columns(["history"]), path)  # as the store wrote it before
    assert "history" not in pq.read_schema(path).names
    rows, skipped = read_rows(board)
    assert skipped == [] and rows.loc[0, "run_id"] == "old-1" and rows["history"].isna().all()
    index = report(tmp_path, tmp_path / "out")
    assert "no finished runs with a per-epoch history for digits at IF 10" in index.read_text()


@pytest.mark.parametrize("args, message", [
    (["--suite", "digits-lt", "--sweep", SWEEP], "choose one of --suite, --sweep and --ablation"),
    (["--sweep", "no-such-sweep"], "no finished sweep 'no-such-sweep'"),
])
def test_bad_input_writes_nothing(results, tmp_path, args, message):
    root, _ = results
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["report", *args, "--results", str(root), "--out", str(out)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not out.exists()
