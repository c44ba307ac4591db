"""One run on several workers (training/distributed.py, data/shards.py): shards, and the equivalence
of a 2-worker gloo run with a 1-worker run of the same global batch, seed and BatchNorm treatment.

Tolerances (worst tensor of the final state dict, max |Δ| / max |w|):
- float64 (``use_float64``): 1e-6. There the algorithm alone decides: measured 2e-8 after 2 epochs.
- float32 (every real run): 3e-2. Measured 6e-3 after 2 epochs (14 steps): the 2 workers add the
  batch in another order (per-shard convolution sums, DDP's average, BatchNorm's statistics combined
  from two halves); float32 rounding of ~1e-7 per op grows through 14 SGD steps, most in small
  BatchNorm biases and convolution weights whose gradients are sums of cancelling terms.
- The negative controls (a duplicated shard, rank 1's gradient dropped) differ by 0.3 to 1.3 in the
  same measure, in float64 as in float32: more than 10× the float32 tolerance, 10⁵× the float64 one.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from bkdbench.data.loader import DeviceLoader, random_crop_flip
from bkdbench.data.shards import crop_flip_rows, num_batches, shard_bounds
from bkdbench.specs import make_spec
from bkdbench.training.distributed import Distributed, GlobalBatchNorm, convert_batchnorm
from bkdbench.training.train import train
from helpers.ddp_worker import run_worker, use_float64

pytestmark = pytest.mark.usefixtures("one_thread_for_module")


# ---------------------------------------------------------------- shards (no process group)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_are_disjoint_and_cover_the_batch(world):
    for n in [world, world + 1, 19, 64, 127]:
        rows = [list(range(*shard_bounds(n, r, world))) for r in range(world)]
        assert sum(rows, []) == list(range(n))  # contiguous, in order, disjoint, covering
        assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_num_batches_skips_only_a_tail_smaller_than_the_world():
    assert num_batches(403, 64, False, 2) == 7  # tail of 19: kept, split 9 / 10
    assert num_batches(129, 64, False, 2) == 2  # tail of 1 < 2 workers: skipped
    assert num_batches(129, 64, True, 2) == 2
    assert num_batches(128, 64, False, 4) == 2


def test_crop_flip_rows_are_the_rows_of_the_whole_batch_crop_flip():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    whole = random_crop_flip(x, 2, True, torch.Generator().manual_seed(3))
    for lo, hi in [(0, 5), (5, 10), (3, 7)]:
        part = crop_flip_rows(x[lo:hi], 2, True, torch.Generator().manual_seed(3), lo, hi, 10)
        assert torch.equal(part, whole[lo:hi])


def _loader(rank=0, world=1, **kw):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (103, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (103,), generator=g)
    return DeviceLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, pad=2, hflip=True, seed=7,
                        rank=rank, world_size=world, **kw)


def _second_view(raw, generator):
    return random_crop_flip(raw, 1, True, generator)


@pytest.mark.parametrize("kw", [{}, {"sampler": "class-balanced"}, {"second_view": _second_view},
                                {"color_jitter": True}], ids=["crop-flip", "class-balanced", "two-views", "jitter"])
@pytest.mark.parametrize("world", [2, 3])
def test_the_shards_of_all_workers_are_what_one_worker_trains_on(kw, world):
    """Every rank's loader (same seed) yields its slice; the slices, put together, are exactly one
    worker's batches (images after augmentation, labels, second views), for two epochs: the
    generators of all ranks stay in step."""
    one = _loader(**kw)
    ranks = [_loader(r, world, **kw) for r in range(world)]
    assert all(len(r) == len(one) for r in ranks)  # the tail (103 % 16 = 7 ≥ world) is kept
    for _ in range(2):
        for whole, *parts in zip(one, *ranks):
            for i, tensor in enumerate(whole):
                assert torch.equal(torch.cat([p[i] for p in parts]), tensor)
    assert all(torch.equal(r.generator.get_state(), one.generator.get_state()) for r in ranks)


def test_global_batchnorm_without_a_process_group_is_batchnorm():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    conv = convert_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), torch.device("cpu"))
    conv.load_state_dict(plain.state_dict())
    assert isinstance(conv[1], GlobalBatchNorm) and conv.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(6, 3, 9, 9)
    assert torch.allclose(plain(x), conv(x)) and torch.allclose(plain[1].running_var, conv[1].running_var)


def test_distributed_arguments_are_checked():
    with pytest.raises(ValueError):
        Distributed(rank=2, world_size=2)
    assert not Distributed().active and Distributed(1, 2).active


# ---------------------------------------------------------------- 2 gloo workers vs 1 worker


def _worst(one: dict, two: dict) -> tuple[float, str]:
    """The worst tensor: max |Δ| / max |w| over the floating-point entries of the state dict."""
    return max(((one[k] - two[k]).abs().max().item() / max(one[k].abs().max().item(), 1e-12), k)
               for k in one if one[k].is_floating_point())


def _two_workers(tmp_path, spec, faults, float64=False) -> dict:
    out = tmp_path / f"out-{float64}.pt"
    mp.start_processes(run_worker, args=(2, str(tmp_path / f"init-{float64}"), spec.model_dump_json(), str(out),
                                         faults, None, float64), nprocs=2, start_method="spawn")
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def spec():
    # 403 training images, global batch 64: 6 even batches (32 / 32) and a tail of 19 (9 / 10),
    # so the shard weighting of unequal shards is exercised; 2 epochs cross an epoch boundary.
    return make_spec("digits", 10, epochs=2)


def test_two_workers_end_where_one_worker_ends_float64(tmp_path, spec):
    undo = use_float64()
    try:
        one = train(spec, evaluate_test=False)
    finally:
        undo()
    two = _two_workers(tmp_path, spec, ["", "duplicate", "drop"], float64=True)
    worst, name = _worst(one.state_dict, two[""]["state"])
    assert worst < 1e-6, f"2 workers differ from 1 in {name}: {worst:.2e}"
    for fault in ("duplicate", "drop"):  # the negative controls: the test sees a wrong shard or gradient
        worst, name = _worst(one.state_dict, two[fault]["state"])
        assert worst > 1e-2, f"{fault}: only {worst:.2e} ({name})"
    ok = two[""]
    assert ok["workers"] == 2 and ok["row_workers"] == 2 and ok["device"] == "cpu"
    assert [h["images"] for h in ok["history"]] == [h["images"] for h in one.history]  # every image, once
    for a, b in zip(one.history, ok["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_top1"] == a["val_top1"]


def test_two_workers_end_where_one_worker_ends_float32(tmp_path, spec):
    one = train(spec, evaluate_test=False)
    two = _two_workers(tmp_path, spec, [""])
    worst, name = _worst(one.state_dict, two[""]["state"])
    assert worst < 3e-2, f"2 workers differ from 1 in {name}: {worst:.2e}"
    assert one.to_row().get("workers") is None  # one worker: the row as before (no workers value)
