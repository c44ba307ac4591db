"""A pack checkpoint resumes with the strategy it was taken with: a ``loop`` pack restarted where
``auto`` means ``grouped`` (a GPU) keeps its checkpoint and ends bit for bit where the uninterrupted
``loop`` pack ends, instead of being dropped (orchestrate/packed_trial.py ``resume_point``)."""
from __future__ import annotations

import pytest
import torch

from bkdbench.orchestrate.packed_trial import resume_point
from bkdbench.specs import make_spec
from bkdbench.training.packed import train_packed

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_point():
    ckpt = {"run_ids": ["a", "b"], "strategy": "loop"}
    assert resume_point(ckpt, ["a", "b"], "grouped") == (ckpt, "loop")
    assert resume_point(ckpt, ["a"], "grouped") == (None, "grouped")  # another pack (a member failed)
    assert resume_point(None, ["a", "b"], "grouped") == (None, "grouped")
    assert resume_point({"run_ids": ["a", "b"]}, ["a", "b"], "grouped")[1] == "grouped"  # no strategy recorded


def test_a_loop_checkpoint_resumes_as_loop_where_auto_means_grouped():
    specs = [make_spec("digits", 10, m, epochs=3) for m in ("ce", "focal")]
    straight = train_packed(specs, device="cpu", strategy="loop")
    saved = {}

    def report(metrics, make_checkpoint):
        if metrics[0]["epoch"] == 0:
            saved["ckpt"] = make_checkpoint()

    train_packed(specs, device="cpu", strategy="loop", report=report)
    resume, strategy = resume_point(saved["ckpt"], [s.run_id for s in specs], "grouped")
    assert resume is saved["ckpt"] and strategy == "loop"
    resumed = train_packed(specs, device="cpu", strategy=strategy, checkpoint=resume)
    for a, b in zip(resumed, straight):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        for key, want in b.state_dict.items():
            assert torch.equal(a.state_dict[key], want), key
    with pytest.raises(ValueError, match="another strategy"):  # what dropping it used to hide
        train_packed(specs, device="cpu", strategy="grouped", checkpoint=saved["ckpt"])
