"""Two data-parallel workers × 1 thread against one worker × 2 threads, on CPU (gloo).

The training step of ``train()`` (ResNet-32 by default, the cifar10-jpeg-lt suite's model; CE;
crop-with-padding and flip on the device-resident loader; channels_last) on synthetic 32×32 uint8
images, global batch 128:

- ``1×2``: one process, 2 torch threads, the whole batch.
- ``2×1``: two gloo processes (torch.multiprocessing), 1 thread each, 64 images each, DDP with
  global-batch BatchNorm (training/distributed.py), as ``--workers-per-trial 2`` trains.
- ``2×1 per-worker BN``: DDP with plain BatchNorm (``sync_batchnorm=False``): one gradient
  all-reduce per step, no BatchNorm all-reduces.
- ``2×1 local``: the same two processes, each training its 64 images alone (no DDP, plain
  BatchNorm): the compute the two workers do, without their communication.
- all-reduce alone, in the two processes: one of the gradient's size (DDP buckets it, ~1.9 MB for
  ResNet-32) and one small one (a BatchNorm layer's statistics; ResNet-32 has 31 such layers, each
  with one all-reduce forward and one backward).

    python benchmarks/ddp_cpu.py [--model resnet32] [--steps 30] [--rounds 3]

Prints one line per measurement (medians over the rounds of per-step medians) and the ratios.
Core only (torch + bkdbench's core), no Ray.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

IMAGES, CLASSES, BATCH = 2048, 10, 128


def _setup(model_name: str, rank: int, world: int, distributed: bool, sync_bn: bool = True):
    from bkdbench.data import DeviceLoader
    from bkdbench.methods import build as build_method
    from bkdbench.models import create_model
    from bkdbench.training import distributed as ddp

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (IMAGES,), generator=g)
    counts = torch.bincount(labels, minlength=CLASSES).tolist()
    method = build_method("ce", counts, epochs=1, batch_size=BATCH)
    torch.manual_seed(0)
    model = create_model(model_name, CLASSES, 3, head=method.head)
    d = ddp.Distributed(rank, world, sync_batchnorm=sync_bn)
    if distributed and sync_bn:
        model = ddp.convert_batchnorm(model, torch.device("cpu"))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step_model = ddp.wrap_model(model, d, torch.device("cpu")) if distributed else model
    # Local mode: each of the two processes trains its own half of the batch, alone.
    loader = DeviceLoader(images, labels, BATCH if distributed or world == 1 else BATCH // world,
                          [0.5] * 3, [0.25] * 3, pad=4, hflip=True, seed=0,
                          rank=rank if distributed else 0, world_size=world if distributed else 1)
    return model, step_model, optimizer, method, loader, d


def _time_steps(model_name: str, steps: int, rank: int, world: int, distributed: bool, barrier=None,
                sync_bn: bool = True) -> float:
    """Median seconds per training step after 3 warm-up steps."""
    from bkdbench.training import distributed as ddp
    from bkdbench.training.train import train_step

    model, step_model, optimizer, method, loader, d = _setup(model_name, rank, world, distributed, sync_bn)
    model.train()
    times = []
    it = iter(loader)
    for i in range(steps + 3):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x = x.contiguous(memory_format=torch.channels_last)
        if barrier is not None:
            barrier()
        tick = time.perf_counter()
        if distributed:
            ddp.set_shard_size(step_model, d, len(y), loader.global_batch)
        loss = train_step(step_model, optimizer, method, x, y, epoch=0)
        float(loss)
        if i >= 3:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _time_all_reduce(numel: int, repeats: int = 50) -> float:
    import torch.distributed as dist

    buf = torch.randn(numel)
    for _ in range(5):
        dist.all_reduce(buf)
    times = []
    for _ in range(repeats):
        dist.barrier()
        tick = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _worker(rank: int, world: int, init: str, model_name: str, steps: int, out: str) -> None:
    import torch.distributed as dist

    from bkdbench.models import create_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        ddp_step = _time_steps(model_name, steps, rank, world, True, barrier=dist.barrier)
        local_step = _time_steps(model_name, steps, rank, world, False, barrier=dist.barrier)
        plain_bn_step = _time_steps(model_name, steps, rank, world, True, barrier=dist.barrier, sync_bn=False)
        params = sum(p.numel() for p in create_model(model_name, CLASSES, 3).parameters())
        grad_ar = _time_all_reduce(params)
        small_ar = _time_all_reduce(2 * (2 * 64 + 1))  # a BatchNorm layer's slots: world × (2C + 1), C ≤ 64
        if rank == 0:
            torch.save({"ddp": ddp_step, "local": local_step, "plain_bn": plain_bn_step, "grad_ar": grad_ar, "small_ar": small_ar,
                        "params": params}, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    one, two = [], []
    for r in range(args.rounds):  # alternated: the machine's load drifts
        torch.set_num_threads(2)
        one.append(_time_steps(args.model, args.steps, 0, 1, False))
        out = os.path.join(folder, f"r{r}.pt")
        mp.start_processes(_worker, args=(2, os.path.join(folder, f"init{r}"), args.model, args.steps, out),
                           nprocs=2, start_method="spawn")
        two.append(torch.load(out, weights_only=True))
    med = statistics.median
    t1, t2 = med(one), med(t["ddp"] for t in two)
    local, grad_ar, small_ar = med(t["local"] for t in two), med(t["grad_ar"] for t in two), med(t["small_ar"] for t in two)
    print(f"model {args.model}, global batch {BATCH}, {args.steps} steps × {args.rounds} rounds, torch {torch.__version__}")
    print(f"1 worker × 2 threads : {t1 * 1e3:7.1f} ms/step  {BATCH / t1:7.0f} img/s  (rounds: {', '.join(f'{BATCH / t:.0f}' for t in one)})")
    rounds2 = ", ".join(f"{BATCH / t['ddp']:.0f}" for t in two)
    print(f"2 workers × 1 thread : {t2 * 1e3:7.1f} ms/step  {BATCH / t2:7.0f} img/s  (rounds: {rounds2})")
    plain = med(t["plain_bn"] for t in two)
    print(f"2×1, per-worker BN   : {plain * 1e3:7.1f} ms/step  {BATCH / plain:7.0f} img/s  (DDP, BatchNorm not synchronised)")
    print(f"2 × 1, no DDP (local): {local * 1e3:7.1f} ms/step  {BATCH / local:7.0f} img/s  (64 images each, no communication)")
    print(f"all-reduce, gradient ({two[0]['params'] * 4 / 1e6:.2f} MB): {grad_ar * 1e3:.2f} ms; small (BatchNorm stats): {small_ar * 1e3:.3f} ms "
          f"× 62 per step ≈ {62 * small_ar * 1e3:.1f} ms")
    print(f"2×1 / 1×2 throughput: {t1 / t2:.2f}×; communication and sync per step (2×1 − local): {(t2 - local) * 1e3:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
