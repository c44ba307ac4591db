"""The shipped table of published results: its schema, a handful of values checked against the source
text quoted here (not against the file), and ``bkdbench published`` in every format and on bad input."""
from __future__ import annotations

import csv
import io
import re

import pytest
import yaml

from bkdbench.leaderboard.published_results import (
    SOURCE_CLASSES, PublishedError, load_table, published_rows, select, table_names)
from helpers.cli import invoke_cli, run_cli

# --- the sources' own words, copied from their pages (the test parses these, never the YAML) ------

# facebookresearch/classifier-balancing README, "Results and Models", ImageNet_LT, classifier learning.
KANG_README = """
  | Classifier             | Many  | Medium |  Few   |  All   | Model  |
  | Joint                  | 65.9  |  37.5  |\t7.7\t  |  44.4  | ResNeXt50|
  | cRT                    | 61.8  |  46.2  | 27.4  |  49.6  | [ResNeXt50](...)|
  | Tau-normalization      | 59.1  |  46.9  | 30.7  |  49.4  | ResNeXt50|
  | LWS                    | 60.2  |  47.2  | 30.3  |  49.9  | [ResNeXt50](...)|
"""
KANG_METHODS = {"Joint": "ce", "cRT": "crt", "Tau-normalization": "tau-norm", "LWS": "lws"}

# jiawei-ren/BalancedMetaSoftmax-Classification README, "Experiment Results" (HTML rows).
BALMS_README = """
<td align="left">ImageNet-LT</td> <td align="left">ResNet-10</td> <td align="left">Softmax</td> <td align="center">34.8</td>
<td align="left">ImageNet-LT</td> <td align="left">ResNet-10</td> <td align="left">BALMS</td> <td align="center">41.6</td>
<td align="left">Places-LT</td> <td align="left">ResNet-152</td> <td align="left">BALMS</td> <td align="center">38.3</td>
<td align="left">CIFAR-100 (IF 200)</td> <td align="left">ResNet-32</td> <td align="left">Balanced Softmax (end-to-end)</td> <td align="center">46.7</td>
"""
BALMS_CELLS = {("ImageNet-LT", "Softmax"): ("imagenet-lt", "natural", "resnet10", "ce"),
               ("ImageNet-LT", "BALMS"): ("imagenet-lt", "natural", "resnet10", "balms"),
               ("Places-LT", "BALMS"): ("places-lt", "natural", "resnet152", "balms"),
               ("CIFAR-100 (IF 200)", "Balanced Softmax (end-to-end)"): ("cifar100", 200.0, "resnet32", "balanced-softmax")}

# MCG-NJU/SSD-LT README: "The experimental results for stage III on the ImageNet-LT dataset should be like:"
SSD_README = """
|                   | Many| Medium | Few | Overall |
| hard classifier |     71.1 |    46.2    | 15.3 | 51.6 |
| soft classifier | 67.3 | 53.1 | 30.0 | 55.4 |
"""

# BagofTricks-LT documents/trick_gallery.md, Re-weighting table: top-1 ERROR, columns CIFAR-10-LT-100,
# CIFAR-10-LT-50, CIFAR-100-LT-100, CIFAR-100-LT-50.
BAG_GALLERY = """
| Baseline | 30.12 | 24.81 | 61.76 | 57.65 |
| Focal loss | 30.88 | 24.12 | 62.59 | 59.46 |
| ClassBalanceCE | 29.80 | 22.91 | 61.50 | 57.98 |
| BalancedSoftmaxCE | **23.63** | 20.07 | **56.82** | **54.55** |
"""
BAG_METHODS = {"Baseline": "ce", "Focal loss": "focal", "ClassBalanceCE": "reweight-cb",
               "BalancedSoftmaxCE": "balanced-softmax"}
BAG_COLUMNS = [("cifar10", 100.0), ("cifar10", 50.0), ("cifar100", 100.0), ("cifar100", 50.0)]


@pytest.fixture(scope="module")
def rows():
    return published_rows()


def entry(rows, dataset, imbalance, model, method, source):
    found = rows[(rows["dataset"] == dataset) & rows["imbalance"].map(lambda v: v == imbalance)
                 & (rows["model"] == model) & (rows["method"] == method) & (rows["source"] == source)]
    assert len(found) == 1, (dataset, imbalance, model, method, source, len(found))
    return found.iloc[0]


def test_the_kang_readme_values(rows):
    checked = 0
    for line in KANG_README.strip().splitlines()[1:]:
        name, many, medium, few, top1 = [c.strip() for c in line.strip().strip("|").split("|")][:5]
        row = entry(rows, "imagenet-lt", "natural", "resnext50_32x4d", KANG_METHODS[name], "kang2020-readme")
        assert (row.top1, row.many, row.medium, row.few) == tuple(map(float, (top1, many, medium, few)))
        assert row.epochs == 90  # feat_uniform.yaml: "resnext50_uniform_e90"
        checked += 1
    assert checked == 4
    assert entry(rows, "imagenet-lt", "natural", "resnext50_32x4d", "crt", "kang2020-readme").stage2_epochs == 10


def test_the_balms_readme_values(rows):
    cells = re.findall(r'<td align="left">([^<]+)</td> <td align="left">([^<]+)</td> <td align="left">([^<]+)</td> '
                       r'<td align="center">([\d.]+)</td>', BALMS_README)
    assert len(cells) == 4
    for dataset, _backbone, method, top1 in cells:
        ours = BALMS_CELLS[(dataset, method)]
        row = entry(rows, *ours, "ren2020-readme")
        assert row.top1 == float(top1)
        assert row.source_class == "official repository"
    # Its CIFAR numbers are on another long-tailed file set: shown, never given a delta.
    assert entry(rows, "cifar100", 200.0, "resnet32", "balanced-softmax", "ren2020-readme").not_comparable


def test_the_ssd_lt_readme_soft_head(rows):
    soft = next(line for line in SSD_README.splitlines() if line.startswith("| soft"))
    many, medium, few, top1 = map(float, soft.strip("| ").split("|")[1:5])
    row = entry(rows, "imagenet-lt", "natural", "resnext50_32x4d", "ssd-lt", "li2021-readme")
    assert (row.top1, row.many, row.medium, row.few) == (top1, many, medium, few) == (55.4, 67.3, 53.1, 30.0)


def test_the_bag_of_tricks_errors_become_accuracies(rows):
    checked = 0
    for line in BAG_GALLERY.strip().splitlines():
        name, *errors = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        for (dataset, factor), error in zip(BAG_COLUMNS, errors):
            found = rows[(rows["dataset"] == dataset) & rows["imbalance"].map(lambda v: v == factor)
                         & (rows["method"] == BAG_METHODS[name]) & (rows["source"] == "bagoftricks-gallery")]
            for row in found.itertuples():
                assert row.top1 == pytest.approx(100 - float(error), abs=1e-9)
                assert row.reported == f"error {error}"
                assert row.not_comparable  # Cui et al.'s files, not Cao's construction
                checked += 1
    assert checked == 10


def test_bkd_cells_say_they_were_not_found_and_hold_no_number(rows):
    bkd = rows[rows["method"] == "bkd"]
    assert len(bkd) == 6
    assert bkd["top1"].isna().all() and bkd["note"].str.contains("not retrievable").all()


def test_schema_of_every_shipped_table(rows):
    from bkdbench.data import dataset_names
    from bkdbench.methods import names
    from bkdbench.models import model_names

    assert set(table_names()) == {"cifar-lt", "large-lt"}
    assert set(rows["source_class"]) <= set(SOURCE_CLASSES)
    assert rows["url"].str.startswith("https://").all()
    assert set(rows["dataset"]) <= set(dataset_names())
    assert set(rows["model"]) <= set(model_names())
    outside = rows[~rows["method"].isin(names())]
    assert set(outside["method"]) == {"balms"}  # a method bkdbench lacks says so
    assert outside["note"].str.contains("not a bkdbench method").all()
    values = rows[["top1", "many", "medium", "few"]].stack().dropna()
    assert ((values >= 0) & (values <= 100)).all()


@pytest.mark.parametrize("change, message", [
    (lambda t: t["entries"][0].update(top1=None), "must say why"),
    (lambda t: t["entries"][0].update(source="nowhere"), "unknown source 'nowhere'"),
    (lambda t: t["entries"][0].update(top1=140.0), "less than or equal to 100"),
    (lambda t: t["entries"][0].update(colour="red"), "Extra inputs"),
    (lambda t: next(iter(t["sources"].values())).update({"class": "blog"}), "Input should be"),
])
def test_a_malformed_table_is_one_clear_error(tmp_path, change, message):
    from bkdbench.leaderboard.published_results import HERE

    table = yaml.safe_load((HERE / "cifar-lt.yaml").read_text())
    change(table)
    (tmp_path / "cifar-lt.yaml").write_text(yaml.safe_dump(table))
    with pytest.raises(PublishedError, match=re.escape(message)):
        load_table("cifar-lt", tmp_path)


def test_select_by_dataset_and_imbalance(rows):
    part = select(rows, "cifar100", 100)
    assert set(part["dataset"]) == {"cifar100"} and set(part["imbalance"]) == {100.0}
    assert len(select(rows, "imagenet-lt", "natural")) == 7
    with pytest.raises(PublishedError, match="datasets with some: cifar10, cifar100"):
        select(rows, "svhn")


def test_cli_csv_has_the_columns_and_the_sourced_cells(tmp_path):
    result = run_cli(["published", "--dataset", "cifar100", "--imbalance", "100", "--format", "csv"], folder=tmp_path)
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {"dataset", "imbalance", "model", "method", "top1", "source", "citation"} <= set(table[0])
    ldam = [r for r in table if r["method"] == "ldam-drw"]
    assert [(r["top1"], r["source_class"]) for r in ldam] == [("42.04", "original paper")]
    assert "NeurIPS 2019" in ldam[0]["citation"] and ldam[0]["url"] == "https://arxiv.org/abs/1906.07413"
    assert {r["dataset"] for r in table} == {"cifar100"} and {r["imbalance"] for r in table} == {"100.0"}
    assert list(tmp_path.iterdir()) == []  # a read-only command writes nothing


def test_cli_table_markdown_latex(tmp_path):
    shown = invoke_cli(["published", "--dataset", "cifar100", "--imbalance", "100"])
    assert shown.returncode == 0 and "ldam-drw" in shown.stdout and "42.04" in shown.stdout
    assert "not retrievable here" in shown.stdout  # the BKD cell says why it is empty
    markdown = invoke_cli(["published", "--dataset", "imagenet-lt", "--format", "markdown"]).stdout
    assert "| imagenet-lt | natural | resnext50_32x4d | 90+10 | crt | 49.6 | 61.8 | 46.2 | 27.4 |" in markdown
    latex = invoke_cli(["published", "--dataset", "cifar10", "--format", "latex"]).stdout
    assert r"\toprule" in latex and "ldam-drw & 77.03" in latex.replace(r"\_", "_")


@pytest.mark.parametrize("args, message", [
    (["--dataset", "svhn"], "no published results for dataset 'svhn'"),
    (["--format", "xml"], "unknown format 'xml'"),
    (["--imbalance", "lots"], "--imbalance takes a number or natural"),
    (["--table", "nope"], "unknown published table 'nope'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = invoke_cli(["published", *args], folder=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
