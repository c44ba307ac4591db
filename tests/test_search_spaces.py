"""Search spaces (validated YAML), the sweep command's refusals of bad input (all before Ray starts),
and ASHA's grace period. Fast: no Ray, no training."""
from __future__ import annotations

import textwrap

import optuna
import pytest
from typer.testing import CliRunner

from bkdbench.methods import validate_params
from bkdbench.orchestrate.sweeps.driver import grace_period
from bkdbench.specs.search_spaces import HERE, SpaceError, load_space, space_names
from bkdbench.specs import make_spec
from helpers.cli import cli_app, run_cli
from helpers.files import assert_nothing_written, nothing_written, snapshot

SHIPPED = ["bkd", "breadcrumb", "cb-focal", "cb-sigmoid", "cbd", "dive", "dkd", "focal", "kd", "ldam-drw", "logit-adjust", "reweight-cb",
           "subset-kd"]


# ------------------------------------------------------------------------------------------------
# The shipped spaces
# ------------------------------------------------------------------------------------------------

def test_shipped_spaces_are_the_expected_ones():
    assert space_names() == sorted(SHIPPED)


@pytest.mark.parametrize("method", SHIPPED)
def test_every_shipped_space_loads_and_its_whole_range_validates(method):
    space, file = load_space(method)
    assert file == HERE / f"{method}.yaml"
    assert space.method == method
    assert len(space.description.split()) >= 10, "a shipped space says why its ranges are what they are"
    dists = space.optuna_space()
    assert set(dists) == set(space.params)
    # Not only the ends: points drawn from the distribution Optuna will sample must all be legal.
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(25):
        trial = study.ask(dists)
        validate_params(method, **{**space.fixed, **trial.params})
        study.tell(trial, 0.0)
    for name, param in space.params.items():
        if param.type != "categorical":
            assert param.low < param.high
            assert not param.log or param.low > 0


def test_bkd_description_says_why_the_ranges_were_chosen():
    space, _ = load_space("bkd")
    text = " ".join(space.description.split())
    alpha, temperature = space.params["alpha"], space.params["temperature"]
    assert (alpha.low, alpha.high, alpha.log) == (0.1, 10.0, True)
    assert (temperature.low, temperature.high, temperature.log) == (1.0, 10.0, False)
    assert "alpha" in text and "log-uniform" in text and "0.1 to 10" in text
    assert "1 to 10" in text
    assert "because" in text  # a reason, not only the numbers
    assert "multiplicative" in text  # ... the reason for the log scale


# ------------------------------------------------------------------------------------------------
# Bad files: SpaceError naming the file and the key
# ------------------------------------------------------------------------------------------------

BAD = {
    "malformed": ("method: bkd\nparams: {alpha: [\n", "malformed YAML"),
    "unknown-top-level-key": ("method: bkd\nsearch: tpe\nparams:\n  alpha: {type: float, low: 0.1, high: 1}\n",
                              "key 'search'"),
    "unknown-param-key": ("method: bkd\nparams:\n  alpha: {type: float, low: 0.1, high: 1, step: 0.1}\n",
                          "key 'params.alpha.step'"),
    "missing-high": ("method: bkd\nparams:\n  alpha: {type: float, low: 0.1}\n", "key 'params.alpha'"),
    "log-low-zero": ("method: bkd\nparams:\n  alpha: {type: float, low: 0.0, high: 1.0, log: true}\n",
                     "key 'params.alpha'"),
    "log-low-negative": ("method: bkd\nparams:\n  alpha: {type: float, low: -1.0, high: 1.0, log: true}\n",
                         "key 'params.alpha'"),
    "low-not-below-high": ("method: bkd\nparams:\n  alpha: {type: float, low: 2.0, high: 2.0}\n", "key 'params.alpha'"),
    "wrong-method": ("method: kd\nparams:\n  alpha: {type: float, low: 0.1, high: 1}\n", "key 'method'"),
    "no-method": ("params:\n  alpha: {type: float, low: 0.1, high: 1}\n", "key 'method'"),
    "no-params": ("method: bkd\nparams: {}\n", "key 'params'"),
    "param-the-method-lacks": ("method: bkd\nparams:\n  gamma: {type: float, low: 0.1, high: 1}\n",
                               "key 'params.gamma'"),
    "temperature-low-0": ("method: bkd\nparams:\n  temperature: {type: float, low: 0.0, high: 5.0}\n",
                          "key 'params.temperature'"),
    "beta-high-1": ("method: bkd\nparams:\n  beta: {type: float, low: 0.9, high: 1.0}\n", "key 'params.beta'"),
    "categorical-choice-out-of-range": ("method: bkd\nparams:\n  beta: {type: categorical, choices: [0.9, 1.5]}\n",
                                        "key 'params.beta'"),
    "categorical-without-choices": ("method: bkd\nparams:\n  beta: {type: categorical}\n", "key 'params.beta'"),
    "unknown-type": ("method: bkd\nparams:\n  alpha: {type: str, low: 0.1, high: 1}\n", "key 'params.alpha.type'"),
    "not-a-number": ("method: bkd\nparams:\n  alpha: {type: float, low: 0.1, high: ten}\n", "key 'params.alpha.high'"),
    "not-a-mapping": ("- method\n- bkd\n", "a search space is a mapping"),
    "empty": ("", "a search space is a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_file_is_a_space_error_naming_file_and_key(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space("bkd", str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_range_messages_say_what_is_allowed(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("method: bkd\nparams:\n  temperature: {type: float, low: 0.0, high: 5.0}\n")
    with pytest.raises(SpaceError, match=r"temperature must be > 0 \(got 0.0\)"):
        load_space("bkd", str(path))
    path.write_text("method: bkd\nparams:\n  beta: {type: float, low: 0.9, high: 1.0}\n")
    with pytest.raises(SpaceError, match=r"beta must be in \[0, 1\) \(got 1.0\)"):
        load_space("bkd", str(path))
    path.write_text("method: bkd\nparams:\n  gamma: {type: float, low: 0.1, high: 1}\n")
    with pytest.raises(SpaceError, match=r"unknown parameter 'gamma' \(allowed: alpha, temperature"):
        load_space("bkd", str(path))


def test_missing_files_and_methods_without_a_space(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space("bkd", str(tmp_path / "nope.yaml"))
    with pytest.raises(SpaceError, match=r"no search space for 'ce'; shipped: bkd, "):
        load_space("ce")


def test_a_users_space_with_fixed_parameters(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: bkd\nfixed: {cb_start: 0}\nparams:\n  alpha: {type: float, low: 0.5, high: 2}\n")
    space, file = load_space("bkd", str(path))
    assert file == path and space.fixed == {"cb_start": 0}
    assert set(space.optuna_space()) == {"alpha"}


@pytest.mark.parametrize("fixed", ["{gamma: 1}", "{temperature: -1}"])
def test_an_error_in_fixed_names_the_fixed_key(tmp_path, fixed):
    path = tmp_path / "fixed.yaml"
    path.write_text(f"method: bkd\nfixed: {fixed}\nparams:\n  alpha: {{type: float, low: 0.1, high: 1}}\n")
    with pytest.raises(SpaceError) as err:
        load_space("bkd", str(path))
    assert "key 'fixed" in str(err.value), str(err.value)


@pytest.mark.parametrize("param", ["cb_start: {type: float, low: 0.5, high: 2.0}",
                                   "renormalize: {type: float, low: 0.0, high: 1.0}"])
def test_a_range_with_illegal_interior_values_is_refused(tmp_path, param):
    path = tmp_path / "interior.yaml"
    path.write_text(f"method: bkd\nparams:\n  {param}\n")
    with pytest.raises(SpaceError):
        load_space("bkd", str(path))


# ------------------------------------------------------------------------------------------------
# ASHA's grace period
# ------------------------------------------------------------------------------------------------

def test_grace_period_waits_for_class_balanced_weighting():
    assert make_spec("digits", 10, "bkd", epochs=40).params["cb_start"] == 0.8  # digits' bkd default
    assert grace_period(make_spec("digits", 10, "bkd", epochs=40)) == round(0.8 * 40) + 1 == 33
    # Without deferred weighting the rung waits for the first ×0.01 drop (epoch round(0.8 · 40) = 32) all the same
    assert grace_period(make_spec("digits", 10, "bkd", epochs=40, params={"cb_start": 0})) == 33
    assert grace_period(make_spec("digits", 10, "bkd", epochs=40, params={"cb_start": 10})) == 33  # absolute epoch
    assert grace_period(make_spec("digits", 10, "ldam-drw", epochs=40)) == 33  # DRW: 0.8 by default
    assert grace_period(make_spec("digits", 10, "focal", epochs=40)) == 33  # no deferred weighting
    assert grace_period(make_spec("digits", 10, "bkd", epochs=3, params={"cb_start": 5})) == 3  # never past max_t


# ------------------------------------------------------------------------------------------------
# The command line: bad input ends with exit status 2 before Ray starts
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch, tmp_path):
    """`bkdbench sweep` in-process, with Ray and the search made unreachable: each case below must be
    refused before either."""
    import bkdbench.orchestrate.ray_session as ray_session
    import bkdbench.orchestrate.sweeps.driver as sweep

    def unreachable(*args, **kwargs):
        raise AssertionError("bad input reached Ray")

    monkeypatch.setattr(ray_session, "ray_session", unreachable)
    monkeypatch.setattr(sweep, "run_search", unreachable)
    monkeypatch.delenv("BKDBENCH_RESULTS", raising=False)
    app = cli_app("sweep")
    runner = CliRunner()
    results = tmp_path / "results"

    def invoke(*args):
        result = runner.invoke(app, ["sweep", *map(str, args), "--results", str(results)])
        return result.exit_code, " ".join(result.output.split())

    invoke.results = results
    return invoke


@pytest.mark.parametrize("args, expected", [
    (["bkd", "--sampler", "foo"], "unknown sampler 'foo'; choose one of: tpe, gp, cmaes, random"),
    (["bkd", "--scheduler", "foo"], "unknown scheduler 'foo'; choose one of: auto, asha, sh, none"),
    (["nope"], "unknown method 'nope'"),  # neither registered (plugins included) nor a space: the methods there are
    (["ce"], "no search space for 'ce'"),
    (["bkd", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["bkd", "--imbalance", "0.5"], "imbalance factor must be"),
    (["bkd", "--epochs", "0"], "epochs must be > 0"),
    (["bkd", "extra"], "unexpected argument 'extra'"),
])
def test_bad_sweep_input_exits_2_before_ray(cli, tmp_path, args, expected):
    with nothing_written(tmp_path):  # no study was even opened
        code, out = cli(*args)
    assert code == 2, out
    assert expected in out, out


def test_bad_space_file_exits_2_naming_file_and_key(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: bkd\nparams:\n  temperature: {type: float, low: 0.0, high: 5.0}\n")
    with nothing_written(tmp_path):
        code, out = cli("bkd", "--space", bad)
    assert code == 2
    assert f"{bad}: key 'params.temperature': bkd: temperature must be > 0" in out


def test_sweep_report_of_an_unknown_sweep_exits_2_naming_the_sweeps_folder(cli):
    code, out = cli("report", "nope")
    assert code == 2
    assert f"no finished sweep 'nope' in {cli.results / 'sweeps'}" in out
    code, out = cli("report")
    assert code == 2 and "usage: bkdbench sweep report SWEEP_ID" in out


def test_console_script_refuses_a_bad_space_file_before_starting_ray(tmp_path):
    """The real console script, in a subprocess: exit 2, one line naming the file and the key, and
    no Ray (no sweep folder, no ray.log) and no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        method: bkd
        params:
          alpha: {type: float, low: 0.1, high: 10.0, log: true}
          gamma: {type: float, low: 0.0, high: 5.0}
        """))
    before = snapshot(tmp_path)
    proc = run_cli(["sweep", "bkd", "--space", bad, "--results", tmp_path / "results"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"{bad}: key 'params.gamma': bkd: unknown parameter 'gamma'" in err
    assert "Traceback" not in proc.stderr
    assert_nothing_written(before, tmp_path)  # no sweep folder, no ray.log, no study journal
