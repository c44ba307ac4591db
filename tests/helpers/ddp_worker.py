"""A worker of a data-parallel ``train()`` run launched by ``torch.multiprocessing`` (gloo, CPU):
tests/test_distributed.py. Module-level so that ``spawn`` can import it in each child."""
from __future__ import annotations

import torch


def use_float64():
    """Train in float64 (inputs and model; the loss stays float32 as in every run): the rounding of
    float32 then no longer hides a wrong algorithm. Returns the function that undoes it."""
    import bkdbench.data.loader as loader
    import bkdbench.training.train as train

    normalize, build = loader.normalize, train.build_model

    def normalize64(x, mean, std):
        return normalize(x, mean, std).double()

    loader.normalize = train.normalize = normalize64
    train.build_model = lambda *a, **k: build(*a, **k).double()

    def undo():
        loader.normalize = train.normalize = normalize
        train.build_model = build

    return undo


def _drop_rank1_gradient(wrap):
    """``ddp.wrap_model`` whose DDP replaces rank 1's gradient by zeros before averaging."""
    import torch.distributed as dist

    def hook(state, bucket):
        buf = bucket.buffer()
        if dist.get_rank() == 1:
            buf.zero_()
        buf.div_(dist.get_world_size())
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

    def wrapped(model, distributed, device):
        step_model = wrap(model, distributed, device)
        step_model.register_comm_hook(None, hook)
        return step_model

    return wrapped


def run_worker(rank: int, world_size: int, init_file: str, spec_json: str, out: str, faults: list[str],
               teacher_file: str | None = None, float64: bool = False) -> None:
    """Train the spec on this rank once per entry of ``faults``; rank 0 saves each final state dict
    and history to ``out`` (a dict by fault). Faults, the negative controls: "" none; "duplicate":
    every rank trains rank 0's shard; "drop": rank 1's gradient is replaced by zeros before DDP
    averages. ``float64``: see ``use_float64``."""
    import torch.distributed as dist

    from bkdbench.data import shards
    from bkdbench.specs import RunSpec
    from bkdbench.training import distributed as ddp
    from bkdbench.training.train import train

    torch.set_num_threads(1)
    if float64:
        use_float64()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    saved, bounds, wrap = {}, shards.shard_bounds, ddp.wrap_model
    spec = RunSpec.model_validate_json(spec_json)
    teacher = torch.load(teacher_file, weights_only=True) if teacher_file else None
    try:
        for fault in faults:
            shards.shard_bounds = (lambda n, r, w: (0, n // w)) if fault == "duplicate" else bounds
            ddp.wrap_model = _drop_rank1_gradient(wrap) if fault == "drop" else wrap
            result = train(spec, distributed=ddp.Distributed(rank, world_size), evaluate_test=False,
                           teacher_state=teacher)
            saved[fault] = {"state": result.state_dict, "history": result.history, "workers": result.workers,
                            "device": result.device, "row_workers": result.to_row().get("workers")}
        if rank == 0:
            torch.save(saved, out)
    finally:
        shards.shard_bounds, ddp.wrap_model = bounds, wrap
        dist.destroy_process_group()
