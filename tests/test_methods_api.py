"""Public surface of bkdbench.methods: names, builds, parameter validation and error messages."""

import json

import pytest
import torch

from bkdbench.methods import Method, MethodError, build, names, register, validate_params

COUNTS = [500, 200, 80, 20, 5]
ALL = ["balanced-sigmoid", "balanced-softmax", "bkd", "breadcrumb", "cb-focal", "cb-sigmoid", "cbd", "cbd-linear", "ce", "ce-cosine20", "crt",
       "dive", "dkd", "drw", "focal", "full-ft", "kd", "ldam", "ldam-drw", "lift", "linear-probe",
       "logit-adjust", "logit-adjust-posthoc", "lws", "reweight-cb", "reweight-inv", "sigmoid", "ssd-lt", "ssd-lt-stage1",
       "ssd-lt-stage2", "subset-kd", "tau-norm", "zero-shot"]


def test_names_lists_exactly_the_registered_methods():
    assert names() == ALL


def test_unknown_method_lists_valid_names():
    with pytest.raises(MethodError) as err:
        build("bdk", COUNTS)
    assert "bdk" in str(err.value) and all(n in str(err.value) for n in ALL)
    assert isinstance(err.value, ValueError)


def test_unknown_parameter_lists_allowed_ones():
    with pytest.raises(MethodError, match=r"unknown parameter 'temprature'.*temperature"):
        build("bkd", COUNTS, temprature=2.0)
    with pytest.raises(MethodError, match="ce: unknown parameter 'gamma'"):
        validate_params("ce", gamma=1.0)


@pytest.mark.parametrize("name,param,value", [
    ("bkd", "alpha", -1), ("kd", "temperature", 0), ("bkd", "beta", 1), ("drw", "beta", -0.1),
    ("focal", "gamma", -1), ("ldam", "max_m", 0), ("ldam-drw", "s", 0), ("logit-adjust", "tau", -1),
    ("drw", "cb_start", -1), ("bkd", "cb_start", 2.5), ("bkd", "temperature", float("nan")),
])
def test_out_of_range_values_name_method_and_parameter(name, param, value):
    with pytest.raises(MethodError) as err:
        build(name, COUNTS, **{param: value})
    message = str(err.value)
    assert message.startswith(f"{name}: {param}") and repr(value) in message


def test_range_message_states_the_allowed_range():
    with pytest.raises(MethodError, match=r"^bkd: temperature must be > 0 \(got -1.0\)$"):
        validate_params("bkd", temperature=-1.0)
    with pytest.raises(MethodError, match=r"beta must be in \[0, 1\)"):
        validate_params("reweight-cb", beta=1.0)


def test_bad_choice_for_ablation_knob():
    with pytest.raises(MethodError, match="kd_weighting"):
        build("bkd", COUNTS, kd_weighting="label")


def test_validate_params_fills_defaults_with_plain_values():
    assert validate_params("bkd") == {
        "alpha": 1.0, "temperature": 2.0, "beta": 0.9999, "cb_start": 0.0,
        "ce_weighting": "instance", "kd_weighting": "class-balanced", "renormalize": True}
    assert validate_params("kd", alpha=0.5) == {
        "alpha": 0.5, "temperature": 2.0, "beta": 0.9999, "cb_start": 0.8, "weighted_ce": False}
    assert validate_params("drw") == {"beta": 0.9999, "cb_start": 0.8}
    assert validate_params("ldam-drw") == {"max_m": 0.5, "s": 30.0, "beta": 0.9999, "cb_start": 0.8}
    assert validate_params("focal") == {"gamma": 1.0}
    assert validate_params("logit-adjust-posthoc") == {"tau": 1.0}
    assert validate_params("ce") == {}
    cb = validate_params("drw", cb_start=160)
    assert cb["cb_start"] == 160.0 and type(cb["cb_start"]) is float
    for name in ALL:
        json.dumps(validate_params(name))


def test_method_attributes():
    for name in ALL:
        m = build(name, COUNTS)
        assert isinstance(m, Method) and m.name == name
        assert m.head == ("cosine" if name.startswith("ldam") or name in ("cbd", "ce-cosine20") else "linear")
        decoupled = name in ("crt", "lws", "tau-norm", "ssd-lt-stage2")  # stage-2 methods: class-balanced, stage 1 as "teacher"
        assert m.sampler == ("class-balanced" if decoupled or name in ("cbd", "cbd-linear") else "instance")
        assert m.needs_teacher == (name in ("kd", "bkd", "subset-kd", "cbd", "cbd-linear", "dive", "dkd", "ssd-lt") or decoupled)
        assert m.stage1 == decoupled
        assert m.teacher_method == {"dive": "balanced-softmax", "ssd-lt": "ssd-lt-stage2", "ssd-lt-stage2": "ssd-lt-stage1",
                                    "cbd": "ce-cosine20"}.get(name, "ce")
        assert m.uses_features == (name in ("cbd", "cbd-linear", "breadcrumb"))
        assert m.views == (2 if name == "ssd-lt-stage1" else 1) and m.trains == (name not in ("tau-norm", "zero-shot"))
        assert torch.equal(m.class_counts, torch.tensor(COUNTS))
    assert build("drw", COUNTS, epochs=50).cb_epoch == 40
    assert build("ldam-drw", COUNTS, epochs=50, cb_start=10).cb_epoch == 10
    assert not hasattr(build("ce", COUNTS), "cb_epoch")


def test_distillation_without_teacher_is_an_error():
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    for name in ("kd", "bkd"):
        with pytest.raises(MethodError, match="teacher_logits"):
            build(name, COUNTS).loss(z, y)


def test_bad_class_counts_and_epochs():
    with pytest.raises(MethodError, match="at least one"):
        build("ce", [10, 0, 3])
    with pytest.raises(MethodError, match="epochs"):
        build("drw", COUNTS, epochs=0)


def test_register_rejects_a_second_class_under_a_taken_name():
    class Impostor(Method):
        pass

    with pytest.raises(MethodError, match="already registered"):
        register("ce")(Impostor)
    assert names() == ALL
