"""Checkpoints move between devices: the loader's device generator state is kept with the kind of
device it came from, and its host stream (the per-batch choices) apart from it, so a run checkpointed
on the CPU resumes on CUDA and back. What a CPU-only machine can show: an exact resume through a file
on the CPU, a checkpoint taken on CUDA (its generator state stood in for) finishing on the CPU, and the
CPU-to-CUDA direction's choice with a stand-in CUDA generator."""
from __future__ import annotations

import pytest
import torch

from bkdbench.specs import make_spec
from bkdbench.training.train import (CPU_RNG_BYTES, load_checkpoint, restore_loader_rng, save_checkpoint, train)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def straight_and_saved(tmp_path_factory, one_thread_for_module):
    """CBD's jittered teacher (the jitter order comes from the host stream): 4 epochs straight, and
    the checkpoint after epoch 2 written to a file and read back as a trial reads it."""
    spec = make_spec("digits", 10, "ce-cosine20", epochs=4, params={"color_jitter": True})
    straight = train(spec, device="cpu", evaluate_test=False)
    path = tmp_path_factory.mktemp("ckpt") / "state.pt"

    def report(metrics, make_checkpoint):
        if metrics["epoch"] == 1:
            save_checkpoint(make_checkpoint(), path)

    train(spec, device="cpu", evaluate_test=False, report=report)
    return spec, straight, load_checkpoint(path)


def test_the_checkpoint_keeps_each_stream_with_its_device(straight_and_saved):
    _, _, ckpt = straight_and_saved
    assert ckpt["loader_rng_device"] == "cpu" and ckpt["loader_rng"].numel() == CPU_RNG_BYTES
    version, internal, _ = ckpt["loader_host_rng"]
    assert version == 3 and len(internal) == 625  # Python's Mersenne Twister, read back with weights_only


def test_a_cpu_checkpoint_resumes_exactly_on_the_cpu(straight_and_saved):
    spec, straight, ckpt = straight_and_saved
    resumed = train(spec, device="cpu", evaluate_test=False, checkpoint=ckpt)
    for key, want in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[key], want), key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_a_cuda_checkpoint_finishes_on_the_cpu(straight_and_saved):
    """The generator state of a CUDA loader (seed and offset: 16 bytes) cannot drive a CPU generator;
    the stream restarts from the run's order seed and the epoch, everything else resumes."""
    spec, straight, ckpt = straight_and_saved
    from_cuda = {**ckpt, "loader_rng": torch.zeros(16, dtype=torch.uint8), "loader_rng_device": "cuda"}
    resumed = train(spec, device="cpu", evaluate_test=False, checkpoint=from_cuda)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    losses = [h["train_loss"] for h in resumed.history]
    want = [h["train_loss"] for h in straight.history]
    assert losses[:2] == want[:2]  # the checkpoint's own epochs, as saved
    assert losses[2] != want[2]  # other batches from here on
    assert resumed.history[3]["images"] == straight.history[3]["images"]


class _Generator:
    """A stand-in for a CUDA generator: records what the loader's restore did with it."""

    def __init__(self, kind: str):
        self.device, self.calls = torch.device(kind), []

    def set_state(self, state):
        self.calls.append(("set_state", state.numel()))

    def manual_seed(self, seed):
        self.calls.append(("manual_seed", seed))
        return self

    def initial_seed(self):
        return 7


@pytest.mark.parametrize("saved_on,resumed_on,want", [
    ("cpu", "cuda", ("manual_seed", 5 * 1_000_003 + 2)),  # CPU → CUDA: reseeded, never a CPU state
    ("cuda", "cuda", ("set_state", 16)),
    ("cpu", "cpu", ("set_state", CPU_RNG_BYTES)),
    (None, "cuda", ("manual_seed", 5 * 1_000_003 + 2)),  # an older checkpoint: its kind read from its size
])
def test_restore_picks_by_device_kind(saved_on, resumed_on, want):
    from types import SimpleNamespace

    state = torch.zeros(CPU_RNG_BYTES if saved_on in ("cpu", None) else 16, dtype=torch.uint8)
    loader = SimpleNamespace(generator=_Generator(resumed_on))
    ckpt = {"loader_rng": state, "epoch": 2, **({"loader_rng_device": saved_on} if saved_on else {})}
    restore_loader_rng(loader, ckpt, order_seed=5)
    assert loader.generator.calls == [want]
