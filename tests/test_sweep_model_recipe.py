"""`sweep --model/--recipe`: the search trials and final runs train that model on that recipe, the sweep
id holds them only when they differ from the dataset's (so earlier sweeps keep their ids and studies),
and an unknown name exits 2 before anything is written. Ray and Optuna's search are stood in for (the
real ones run in test_sweep.py and test_sweep_sh.py)."""
from __future__ import annotations

import contextlib

import optuna
import pytest
from typer.testing import CliRunner

from bkdbench.cli import app
from helpers.files import nothing_written


@pytest.fixture
def seen(monkeypatch):
    """Stands in for Ray, the search and the finals; records the spec and config each was given."""
    from bkdbench.orchestrate import ray_session
    from bkdbench.orchestrate.sweeps import driver as sweep

    seen: dict = {}
    monkeypatch.setattr(ray_session, "ray_session", lambda *a, **k: contextlib.nullcontext({}))

    def fake_search(cfg, space_def, base, root, **kwargs):
        seen.update(cfg=cfg, search_base=base)
        study = sweep.open_study(cfg.sweep_id, sweep.sweep_dir(root, cfg.sweep_id), None)
        study.add_trial(optuna.trial.create_trial(params={"gamma": 1.5}, value=61.0,
                                                  distributions={"gamma": optuna.distributions.FloatDistribution(0, 5)}))
        return study

    def fake_finals(base, best_params, root, sweep_id, seeds, outcome=None, **kwargs):
        seen.update(final_base=base)
        return {"tuned": [], "default": []}

    monkeypatch.setattr(sweep, "run_search", fake_search)
    monkeypatch.setattr(sweep, "run_finals", fake_finals)
    return seen


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
