"""Places-LT and iNaturalist 2018 trained end to end through ``train`` from generated trees in their real
formats (list names, path layouts, Places' leading ``/``, iNat's validation carved from its train list
and its val list reported as test): 10-class copies of the registered benchmarks (the real ones have
365 and 8,142 classes), ResNet-8 at 28 px with the large benchmarks' device-side augmentation. The
images carry a class colour under per-image noise (splitlist_files.py), so the classes are learnable:
each run must beat the binomial bound of guessing on its test split, not only produce a number. Here
(one thread, 8 epochs) Places-LT scored 60 % and iNat18 50 % against a bound of 19.9 %; every test
image of a class has nearly its colour, so a class is learned whole or not at all (top-1 moves in steps
of 10). One more (slow) runs the Places-LT tree through `bkdbench run` and Ray, the benchmark registered
by a plugin file and the 28-px crop set in the suite file."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bkdbench.data.large import register as splitdata
from bkdbench.data.large.inat18 import INAT18
from bkdbench.data.large.lists import inat_val_count
from bkdbench.data.large.places_lt import PLACES_LT
from bkdbench.data.longtail import longtail_counts
from splitlist_files import write_inat18, write_places_lt
from helpers.learning import chance_bound

COUNTS = longtail_counts(40, 10, 10.0, "exp")  # 40 .. 4 training images a class
TEST = 10  # per class: 100 test images, guessing stays under chance_bound(10, 100) = 19.9 %


def _train(name, benchmark, root, tmp_path, monkeypatch):
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BKDBENCH_DECODE_WORKERS", "1")
    splitdata.register_benchmark(replace(benchmark, name=name, num_classes=len(COUNTS)))
    spec = make_spec(name, "natural", "ce", model="resnet8", recipe="cpu-short", epochs=8, data_dir=root,
                     image_size=28)
    return spec, train(spec, data_dir=root, device="cpu")


@pytest.mark.usefixtures("one_thread")
def test_places_lt_lists_train_and_learn(tmp_path, monkeypatch):
    root = tmp_path / "places"
    lines = write_places_lt(root, COUNTS, val_per_class=4, test_per_class=TEST)
    assert lines["train"][0].startswith("/data_256/s/scene000/") and lines["test"][0].startswith("/val_256/Places365_val_")
    spec, result = _train("places-lt-10", PLACES_LT, root, tmp_path, monkeypatch)
    assert spec.imbalance_factor == 10.0 and result.class_counts == list(COUNTS)  # the lists' own profile
    m = result.metrics
    assert len(m["per_class_acc"]) == 10 and [h["epoch"] for h in result.history] == list(range(8))
    assert m["top1"] > chance_bound(10, 10 * TEST), m["top1"]  # learned, on the 100 test-list images
    assert math.isfinite(m["val_top1"])


@pytest.mark.usefixtures("one_thread")
def test_inat18_lists_train_and_learn_with_validation_carved_from_train(tmp_path, monkeypatch):
    root = tmp_path / "inat"
    write_inat18(root, COUNTS, val_per_class=TEST)
    spec, result = _train("inat18-10", INAT18, root, tmp_path, monkeypatch)
    held = [inat_val_count(n) for n in COUNTS]  # min(3, max(1, n // 10)): 40 -> 3, 4 -> 1
    assert held[0] == 3 and held[-1] == 1
    assert result.class_counts == [n - k for n, k in zip(COUNTS, held)]  # the carved images left training
    m = result.metrics
    assert np.isfinite(m["val_top1"]) and len(m["per_class_acc"]) == 10
    assert m["top1"] > chance_bound(10, 10 * TEST), m["top1"]  # the val list, reported as test


PLACES_PLUGIN = '''"""Places-LT cut to the test's 10 classes, registered in the driver and in every Ray worker."""
from dataclasses import replace

from bkdbench.data.large.places_lt import PLACES_LT
from bkdbench.data.large.register import register_benchmark

register_benchmark(replace(PLACES_LT, name="places-lt-10", num_classes=10))
'''


@pytest.mark.slow
def test_places_lt_lists_through_ray_learn_and_write_their_row(tmp_path):
    """The same Places-LT tree through `bkdbench run` (a suite file, its plugin, a Ray trial): the
    worker decodes the lists into the store and trains; the row holds the lists' profile and beats
    the bound of guessing."""
    import pandas as pd

    from helpers.cli import cli_env, run_cli
    from helpers.files import write_suite

    root = tmp_path / "places"
    write_places_lt(root, COUNTS, val_per_class=4, test_per_class=TEST)
    (tmp_path / "places10.py").write_text(PLACES_PLUGIN)
    suite = write_suite(tmp_path / "places10.yaml", datasets=["places-lt-10"], imbalance=["natural"], methods=["ce"],
                        seeds=[0], model="resnet8", recipe="cpu-short", epochs=8, image_size=28,
                        plugins=["places10.py"])
    result = run_cli(["run", "--suite", suite, "--data-dir", root, "--results", tmp_path / "results"],
                     folder=tmp_path, env=cli_env(BKDBENCH_DECODE_WORKERS=1), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "results" / "leaderboard")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row.dataset, row.model, row.status, row.epochs) == ("places-lt-10", "resnet8", "finished", 8)
    assert list(row.class_counts) == list(COUNTS) and row.imbalance_factor == 10.0
    assert row.top1 > chance_bound(10, 10 * TEST), row.top1  # learned, on the 100 test-list images
    stores = list((tmp_path / "cache" / "splitlist").iterdir())  # checked and decoded at 28 px only, not
    assert len(stores) == 1 and stores[0].name.startswith("places-lt-10-")  # also at the default 224
