"""summarise / paired_difference / labels against numbers worked out by hand."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from bkdbench.leaderboard.aggregate import (
    METRICS, check_metric, method_label, paired_difference, summarise, with_labels)


def row(method, seed, top1, dataset="cifar10", imbalance=100.0, data_seed=0, status="finished",
        finished_at="2025-01-01", **extra):
    return {"dataset": dataset, "imbalance_factor": imbalance, "method": method, "seed": seed,
            "data_seed": data_seed, "status": status, "top1": top1, "params": "{}",
            "sweep_id": None, "ablation_id": None,
            "finished_at": pd.Timestamp(finished_at, tz="UTC"), **extra}


@pytest.fixture
def frame():
    return pd.DataFrame([
        row("ce", 0, 10.0, finished_at="2024-06-01"),  # superseded by the re-run of seed 0 below
        row("ce", 0, 50.0, finished_at="2025-01-02"),
        row("ce", 1, 52.0),
        row("ce", 2, 57.0),
        row("ce", 3, None, status="failed"),  # failed runs never count
        row("bkd", 0, 55.0),
        row("bkd", 1, 54.0),
        row("bkd", 2, 60.0),
        row("ce", 0, 70.0, imbalance=10.0),  # a single seed
        row("ce", 0, 30.0, dataset="cifar100"),
        row("ce", 0, 34.0, dataset="cifar100", data_seed=1),  # another data seed is another replicate
    ])


def cell(summary, label, dataset="cifar10", imbalance=100.0):
    hit = summary[(summary["label"] == label) & (summary["dataset"] == dataset)
                  & (summary["imbalance_factor"] == imbalance)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_summarise_mean_std_n_by_hand(frame):
    summary = summarise(frame, "top1")
    assert list(summary.columns) == ["dataset", "imbalance_factor", "label", "mean", "std", "n"]
    ce = cell(summary, "ce")
    # 50, 52, 57: mean 53; squared deviations 9 + 1 + 16 = 26; sample variance 26 / 2 = 13.
    assert ce["n"] == 3 and ce["mean"] == pytest.approx(53.0) and ce["std"] == pytest.approx(math.sqrt(13))
    bkd = cell(summary, "bkd")
    # 55, 54, 60: mean 169/3; deviations -4/3, -7/3, 11/3 -> SS (16 + 49 + 121)/9 = 62/3, var 31/3.
    assert bkd["mean"] == pytest.approx(169 / 3) and bkd["std"] == pytest.approx(math.sqrt(31 / 3))
    single = cell(summary, "ce", imbalance=10.0)
    assert single["n"] == 1 and single["mean"] == 70.0 and math.isnan(single["std"])
    two_data_seeds = cell(summary, "ce", dataset="cifar100")
    assert two_data_seeds["n"] == 2 and two_data_seeds["mean"] == pytest.approx(32.0)
    assert len(summary) == 4


def test_summarise_ignores_rows_without_the_metric(frame):
    frame["ece"] = [None, 3.0, 5.0, None, None, 1.0, 2.0, 3.0, None, None, None]
    summary = summarise(frame, "ece")
    ce = cell(summary, "ce")
    assert ce["n"] == 2 and ce["mean"] == pytest.approx(4.0)
    assert set(summary["label"]) == {"ce", "bkd"} and len(summary) == 2


def test_unknown_metric_lists_the_known_ones(frame):
    with pytest.raises(ValueError, match="top1, top1_best_epoch, val_top1, many, medium, few, ece, nll"):
        summarise(frame, "accuracy")
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        paired_difference(frame, "bkd", "ce", metric="f1")
    assert check_metric("nll") == "nll" and len(METRICS) == 8


def test_paired_difference_by_hand(frame):
    result = paired_difference(frame, "bkd", "ce", dataset="cifar10", imbalance=100)
    assert len(result) == 1
    got = result.iloc[0]
    # Per-seed bkd - ce: 55-50=5, 54-52=2, 60-57=3 -> mean 10/3.
    assert got["diffs"] == [5.0, 2.0, 3.0] and got["n"] == 3
    mean = 10 / 3
    sd = math.sqrt(((5 - mean) ** 2 + (2 - mean) ** 2 + (3 - mean) ** 2) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # t quantile 4.3027 for 2 degrees of freedom
    assert got["mean_diff"] == pytest.approx(mean)
    assert got["sd_diff"] == pytest.approx(math.sqrt(7 / 3))
    assert got["ci_low"] == pytest.approx(mean - half) and got["ci_high"] == pytest.approx(mean + half)
    assert got["ci_low"] == pytest.approx(-0.4613, abs=1e-3) and got["ci_high"] == pytest.approx(7.1280, abs=1e-3)
    assert got["mean_a"] == pytest.approx(169 / 3) and got["mean_b"] == pytest.approx(53.0)
    assert result.attrs == {"a": "bkd", "b": "ce", "metric": "top1"}


def test_paired_difference_single_pair_has_no_interval():
    frame = pd.DataFrame([row("ce", 0, 50.0), row("bkd", 0, 53.5), row("bkd", 1, 99.0)])
    got = paired_difference(frame, "bkd", "ce").iloc[0]
    assert got["n"] == 1 and got["mean_diff"] == pytest.approx(3.5)
    assert math.isnan(got["ci_low"]) and math.isnan(got["ci_high"])


def test_paired_difference_groups_per_dataset_and_factor_high_to_low():
    frame = pd.DataFrame([row(m, s, v, imbalance=f) for m, s, v, f in [
        ("a", 0, 5.0, 10.0), ("b", 0, 1.0, 10.0), ("a", 1, 6.0, 10.0), ("b", 1, 1.0, 10.0),
        ("a", 0, 2.0, 100.0), ("b", 0, 1.0, 100.0)]])
    result = paired_difference(frame, "a", "b")
    assert list(result["imbalance_factor"]) == [100.0, 10.0]
    assert list(result["mean_diff"]) == pytest.approx([1.0, 4.5])


def test_paired_difference_rejects_unknown_and_ambiguous_names(frame):
    with pytest.raises(ValueError, match="no finished runs for 'focal'"):
        paired_difference(frame, "focal", "ce")
    ablation = pd.DataFrame([
        row("bkd", 0, 60.0, params='{"alpha":0.5}', ablation_id="ab"),
        row("bkd", 0, 61.0, params='{"alpha":1.0}', ablation_id="ab"),
        row("ce", 0, 50.0)])
    with pytest.raises(ValueError, match="several configurations"):
        paired_difference(ablation, "bkd", "ce")
    exact = paired_difference(ablation, "bkd (alpha=1)", "ce").iloc[0]
    assert exact["mean_diff"] == pytest.approx(11.0)


def test_labels_for_plain_tuned_and_ablation_rows():
    assert method_label({"method": "ce", "params": "{}"}) == "ce"
    assert method_label({"method": "bkd", "sweep_id": "s1", "params": '{"alpha":0.3}'}) == "bkd (tuned)"
    assert method_label({"method": "bkd", "ablation_id": "a1",
                         "params": '{"temperature":2,"alpha":0.5}'}) == "bkd (alpha=0.5, temperature=2)"
    assert method_label({"method": "bkd", "params": {"alpha": 0.5}}, varying=["alpha"]) == "bkd (alpha=0.5)"
    frame = pd.DataFrame([
        row("bkd", 0, 1.0, params='{"alpha":0.5,"temperature":2}', ablation_id="a1"),
        row("bkd", 0, 1.0, params='{"alpha":1.0,"temperature":2}', ablation_id="a1"),
        row("bkd", 0, 1.0, params='{"alpha":0.7}', sweep_id="s1"),
        row("ce", 0, 1.0),
    ])
    # temperature is the same in every bkd ablation row, so only alpha tells them apart.
    assert list(with_labels(frame)["label"]) == ["bkd (alpha=0.5)", "bkd (alpha=1)", "bkd (tuned)", "ce"]
    summary = summarise(frame)
    assert sorted(summary["label"]) == ["bkd (alpha=0.5)", "bkd (alpha=1)", "bkd (tuned)", "ce"]


def test_groups_made_from_each_sets_counts_label_rows_only_within_a_cell():
    frame = pd.DataFrame([
        row("subset-kd", 0, 80.0, imbalance=50.0, params='{"groups":"0,1|2,3,4|5,6,7,8,9"}'),
        row("subset-kd", 0, 95.0, imbalance=10.0, params='{"groups":"0,1,2|3,4,5,6,7|8,9"}'),
        row("bkd", 0, 90.0, imbalance=50.0, params='{"alpha":0.5}'),
        row("bkd", 0, 96.0, imbalance=10.0, params='{"alpha":1.0}'),
    ])
    # One rule per imbalance factor is one configuration; an ordinary parameter still shows.
    assert list(with_labels(frame)["label"]) == ["subset-kd", "subset-kd", "bkd (alpha=0.5)", "bkd (alpha=1)"]
    two_in_one_cell = pd.concat([frame, pd.DataFrame([
        row("subset-kd", 0, 70.0, imbalance=50.0, params='{"groups":"0,1,2,3,4|5,6,7,8,9"}')])], ignore_index=True)
    labels = list(with_labels(two_in_one_cell)["label"])
    assert labels[0] == "subset-kd (groups=0,1|2,3,4|5,6,7,8,9)" and labels[4] == "subset-kd (groups=0,1,2,3,4|5,6,7,8,9)"


def test_the_retrain_command_of_a_reference_split_row_asks_for_that_split():
    """The command a report shows trains the row's own run again: the default split is every-class,
    so a reference-split row needs --split reference (else it names another run)."""
    from bkdbench.leaderboard.tables import retrain_command
    from bkdbench.specs import make_spec

    base = {"dataset": "digits", "profile": "exp", "imbalance_factor": 10.0, "method": "ce", "seed": 1, "data_seed": 0,
            "model": "cnn-small", "recipe": json.dumps({"name": "small"}), "epochs": 3, "params": "{}"}
    for split in ("every-class", "reference"):
        command = retrain_command({**base, "split": split})
        assert ("--split reference" in command) == (split == "reference"), command
        spec = make_spec("digits", 10, "ce", seed=1, epochs=3, split=split)
        assert spec.split == split
    assert make_spec("digits", 10, "ce", seed=1, epochs=3).split == "every-class"
