"""`sweep --model/--recipe`: the search trials and final runs train that model on that recipe, the sweep
id holds them only when they differ from the dataset's (so earlier sweeps keep their ids and studies),
and an unknown name exits 2 before anything is written. Ray and Optuna's search are stood in for (the
real ones run in test_sweep.py and test_sweep_sh.py)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bkdbench.cli import app
from helpers.files import nothing_written
from helpers.sweeps import stand_in_search


@pytest.fixture
def seen(monkeypatch):
    return stand_in_search(monkeypatch)


def _sweep(results, *extra):
    return CliRunner().invoke(app, ["sweep", "focal", "--dataset", "digits", "--imbalance", "10", "--trials", "1",
                                    "--results", str(results), *extra])


def test_model_and_recipe_reach_the_trials_and_the_sweep_id(tmp_path, seen):
    plain = _sweep(tmp_path / "a")
    assert plain.exit_code == 0, plain.output
    default_cfg = seen["cfg"]
    assert default_cfg.model is None and default_cfg.recipe is None  # the dataset's own: not in the id
    default_model = seen["search_base"].model

    chosen = _sweep(tmp_path / "b", "--model", "resnet8", "--recipe", "cpu-short", "--epochs", "36")
    assert chosen.exit_code == 0, chosen.output
    for key in ("search_base", "final_base"):
        spec = seen[key]
        assert (spec.model, spec.recipe, spec.epochs) == ("resnet8", "cpu-short", 36)
    assert default_model != "resnet8"
    assert (seen["cfg"].model, seen["cfg"].recipe) == ("resnet8", "cpu-short")
    assert seen["cfg"].sweep_id != default_cfg.sweep_id
    assert "(resnet8, recipe cpu-short, 36 epochs)" in " ".join(chosen.output.split())

    # naming the dataset's own model is the default sweep, with its id
    again = _sweep(tmp_path / "c", "--model", default_model)
    assert again.exit_code == 0, again.output
    assert seen["cfg"].sweep_id == default_cfg.sweep_id


@pytest.mark.parametrize("args,message", [(["--model", "resnet-nope"], "resnet-nope"),
                                          (["--recipe", "recipe-nope"], "recipe-nope")])
def test_an_unknown_model_or_recipe_exits_2_with_nothing_written(tmp_path, args, message):
    with nothing_written(tmp_path):
        result = _sweep(tmp_path / "r", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
