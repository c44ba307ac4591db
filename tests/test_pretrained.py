"""``--pretrained FILE``: a run starts from a state dict's weights (all but a classifier of another
shape), carries the file's content key in its run id, and a file that does not fit is refused
before any work with one line and nothing written."""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

from bkdbench.models import create_model
from bkdbench.models.pretrained import PretrainedError, check_fits, file_key, load_into
from bkdbench.specs import make_spec, with_pretrained
from bkdbench.training.train import build_model
from helpers.cli import invoke_cli, run_cli
from helpers.files import assert_nothing_written, snapshot


def saved(path, model_name, num_classes, channels=3, seed=123, wrap=None):
    torch.manual_seed(seed)
    state = create_model(model_name, num_classes, channels).state_dict()
    torch.save({wrap: state} if wrap else state, path)
    return state


def test_the_key_is_the_files_sha256(tmp_path):
    path = tmp_path / "w.pt"
    saved(path, "resnet8", 10)
    assert file_key(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_backbone_loaded_and_a_classifier_of_other_shape_left_as_initialised(tmp_path, monkeypatch, wrap):
    path = tmp_path / "w.pt"
    source = saved(path, "resnet10", 1000, wrap=wrap)  # ImageNet's classes, as for Places-LT
    monkeypatch.setenv("BKDBENCH_PRETRAINED", str(path))
    spec = make_spec("cifar10", 10, "ce", model="resnet10", epochs=1)
    scratch = build_model(spec, 10, 3, "linear", torch.device("cpu"))
    started = build_model(with_pretrained(spec, file_key(path)), 10, 3, "linear", torch.device("cpu"))
    state = started.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert len(backbone) > 50
    for k in backbone:
        assert torch.equal(state[k], source[k]), k
    assert not torch.equal(scratch.state_dict()["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
    for k in ("fc.weight", "fc.bias"):  # a fresh classifier: exactly the seeded initialisation of a scratch run
        assert state[k].shape[0] == 10 and torch.equal(state[k], scratch.state_dict()[k])
    assert sorted(check_fits(path, "resnet10", 10)) == ["fc.bias", "fc.weight"]
    assert check_fits(path, "resnet10", 1000) == []


def test_the_same_classes_take_the_classifier_too(tmp_path):
    path = tmp_path / "w.pt"
    source = saved(path, "resnet8", 10)
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3)
    assert load_into(model, file_key(path), path) == []
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def test_another_architecture_or_content_is_refused_naming_keys(tmp_path):
    path = tmp_path / "w.pt"
    saved(path, "resnet8", 10)
    with pytest.raises(PretrainedError, match=r"does not fit this model: the file has other shapes for conv1.weight "
                       r"\(16, 3, 3, 3\) \(the model's \(64, 3, 7, 7\)\), .* and \d+ more"):
        check_fits(path, "resnet10", 10)  # the CIFAR family's ResNet-8 for an ImageNet ResNet-10
    partial = tmp_path / "partial.pt"
    state = saved(partial, "resnet10", 10)
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(PretrainedError, match=r"the file lacks layer4\."):
        check_fits(partial, "resnet10", 10)
    wider = tmp_path / "wide.pt"
    saved(wider, "resnet10", 10, channels=1)
    with pytest.raises(PretrainedError, match=r"has other shapes for conv1.weight \(64, 1, 7, 7\) \(the model's \(64, 3, 7, 7\)\)"):
        check_fits(wider, "resnet10", 10)
    other = tmp_path / "other.pt"
    saved(other, "resnet8", 10, seed=5)
    with pytest.raises(PretrainedError, match="has content key .*, the run was made for"):
        load_into(create_model("resnet8", 10, 3), file_key(path), other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="is not a PyTorch state dict"):
        check_fits(junk, "resnet8", 10)


def test_run_ids_carry_the_key_and_teachers_start_from_it_too():
    spec = make_spec("digits", 10, "bkd", epochs=2)
    key = "0123456789abcdef"
    started = with_pretrained(spec, key)
    assert started.run_id != spec.run_id and with_pretrained(spec, None).run_id == spec.run_id
    assert started.teacher.pretrained == key and started.teacher.run_id != spec.teacher.run_id
    assert "pretrained" not in spec.canonical_json()  # scratch runs keep the ids they had


def test_cli_trains_from_the_file_and_refuses_a_misfit_with_nothing_written(tmp_path):
    weights = tmp_path / "w.pt"
    spec = make_spec("digits", 10, "ce", epochs=1)
    saved(weights, spec.model, 3, channels=1)  # digits' model, 3 classes instead of 10
    args = ["train", "--dataset", "digits", "--imbalance", 10, "--epochs", 1, "--threads", 1]
    bad = tmp_path / "bad.pt"
    saved(bad, "resnet8", 10)
    before = snapshot(tmp_path)
    for path, message in ((bad, "does not fit this model"), (tmp_path / "none.pt", "does not exist")):
        result = invoke_cli([*args, "--pretrained", path, "--results", tmp_path / "results"], folder=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert_nothing_written(before, tmp_path)
    result = run_cli([*args, "--pretrained", weights, "--results", tmp_path / "results"], folder=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keep their initialisation" in result.stdout + result.stderr
    rows = pd.read_parquet(tmp_path / "results" / "leaderboard")
    assert list(rows.pretrained) == [file_key(weights)]
    assert rows.run_id.iloc[0] == with_pretrained(spec, file_key(weights)).run_id != spec.run_id


def test_a_sweep_from_other_weights_or_another_folder_is_another_sweep(tmp_path):
    from dataclasses import replace

    from bkdbench.orchestrate.sweeps.driver import SweepConfig

    base = SweepConfig(method="bkd", dataset="digits", imbalance=10.0, space_file="x.yaml", space_hash="abc")
    ids = {base.sweep_id, replace(base, pretrained="0123456789abcdef").sweep_id,
           replace(base, data_key="fedcba9876543210").sweep_id, replace(base, model="resnet8").sweep_id,
           replace(base, recipe="cpu-short").sweep_id}
    assert len(ids) == 5
    # the fields are left out when None, so every sweep made before them keeps its id (and its study)
    assert base.sweep_id == replace(base, space_file="elsewhere.yaml").sweep_id
    before = {"method": "bkd", "dataset": "digits", "imbalance": 10.0, "space_hash": "abc", "sampler": "tpe",
              "scheduler": "asha", "seed": 0, "epochs": None, "data_seed": 0, "split": "every-class"}
    assert base.sweep_id.endswith(hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8])
