"""No host synchronisation inside a training step, for every registered method and both augmentations,
proved on the CPU: a torch function mode sees every tensor call a step makes (the batch's making in
the loader included) and counts those that would make the host wait for a GPU -- reading a value
(``item``, ``tolist``, ``float()``/``int()``/``bool()`` of a tensor, ``.cpu()``, ``.numpy()``),
data-dependent shapes (``nonzero``, boolean-mask indexing, ``unique``, ``bincount``, ``masked_select``,
``repeat_interleave`` without ``output_size``) and host data copied to the device in the step
(``torch.tensor(..., device=...)``). Zero per step is the rule (docs/performance.md); what happens
once per epoch (the epoch's loss, evaluation) is outside the step and not counted.

Methods come from ``bkdbench.methods.names()``, so a newly registered method is covered by itself."""
from __future__ import annotations

import traceback
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bkdbench.methods import names

DATA_SYNCS = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "equal",
              "allclose", "is_nonzero"}
VALUE_SYNCS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__"}
FACTORIES = {"tensor", "as_tensor"}  # host data: with device= they copy it there (pageable memory: a sync)


def _is_mask(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_is_mask(i) for i in index)
    return False


def sync_kind(func, args, kwargs) -> str | None:
    """What kind of host sync this call makes on a GPU, or None."""
    name = getattr(func, "__name__", "")
    if name in VALUE_SYNCS or name in DATA_SYNCS:
        return name
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_mask(args[1]):
        return f"boolean-mask {name}"
    if name == "repeat_interleave" and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor) \
            and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where(condition)"
    if name in FACTORIES and kwargs.get("device") is not None:
        return f"{name}(host data, device=...)"
    return None


def _where() -> str:
    """The innermost bkdbench frame of the current stack (what the failure message names)."""
    for frame in reversed(traceback.extract_stack()):
        if "/bkdbench/" in frame.filename and "/tests/" not in frame.filename:
            return f"{frame.filename.split('/bkdbench/', 1)[1]}:{frame.lineno}"
    return "?"


class SyncCounter(TorchFunctionMode):
    """Counts syncing calls while ``armed`` (inside a step); ``steps`` counts the steps seen."""

    def __init__(self):
        super().__init__()
        self.armed, self.steps, self.calls = False, 0, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.armed:
            kind = sync_kind(func, args, kwargs)
            if kind:
                self.calls[f"{kind} at {_where()}"] += 1
        return func(*args, **kwargs)

    def arm(self, fn):
        def armed(*args, **kwargs):
            was, self.armed = self.armed, True
            try:
                return fn(*args, **kwargs)
            finally:
                self.armed = was
        return armed


def test_the_counter_sees_each_kind_of_sync():
    x = torch.randn(6)
    with SyncCounter() as counter:
        counter.armed = True
        float(x[0]), int(x[1] > 0), bool(x.sum() > 0), x[0].item(), x.tolist(), x.cpu(), x.numpy()
        x.nonzero(), x[x > 0], torch.tensor([1.0], device=x.device), torch.bincount(torch.tensor([1, 2]))
        x[x < 0] = 0
        torch.repeat_interleave(x, torch.tensor([1] * 6))
        fine = x[torch.tensor([0, 2])].sum() + torch.where(x > 0, x, -x)  # gathers and selects never sync
        torch.repeat_interleave(x, torch.tensor([1] * 6), output_size=6)
    kinds = {call.split(" at ")[0] for call in counter.calls}
    assert kinds == {"__float__", "__int__", "__bool__", "item", "tolist", "cpu", "numpy", "nonzero",
                     "boolean-mask __getitem__", "boolean-mask __setitem__", "tensor(host data, device=...)",
                     "bincount", "repeat_interleave without output_size"}, kinds
    assert fine.shape == (6,)


def _teacher_state(spec, cache: dict):
    """The teacher weights ``spec`` needs (its teachers trained first, recursively), as run_and_record
    passes them: one state, a list for several teachers, None for none."""
    from bkdbench.training.train import train

    states = []
    for teacher in spec.all_teachers:
        if teacher.run_id not in cache:
            cache[teacher.run_id] = train(teacher, teacher_state=_teacher_state(teacher, cache),
                                          evaluate_test=False).state_dict
        states.append(cache[teacher.run_id])
    if not states:
        return None
    return states if spec.teachers else states[0]


@pytest.fixture(scope="module")
def teachers():
    return {}


def _count_steps(monkeypatch, run):
    """Run ``run()`` with every loader batch and every ``train_step`` counted."""
    from bkdbench.data.loader import DeviceLoader
    from bkdbench.training import train as train_module

    counter = SyncCounter()
    real_step, real_iter = train_module.train_step, DeviceLoader.__iter__

    def counted_step(*args, **kwargs):
        counter.steps += 1
        return counter.arm(real_step)(*args, **kwargs)

    def counted_iter(loader):
        batches = real_iter(loader)
        take = counter.arm(lambda: next(batches))
        while True:
            try:
                yield take()
            except StopIteration:
                return

    monkeypatch.setattr(train_module, "train_step", counted_step)
    monkeypatch.setattr(DeviceLoader, "__iter__", counted_iter)
    with counter:
        result = run()
    return counter, result


@pytest.mark.parametrize("method", names())
def test_no_host_sync_in_any_step_of_any_method(method, teachers, monkeypatch, one_thread):
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    from bkdbench.methods import method_class

    epochs = 2
    foundation = getattr(method_class(method), "foundation", False)  # CLIP's code path, at its smoke size
    spec = make_spec("digits", 10, method, epochs=epochs, **(dict(model="clip-tiny", weights="none") if foundation else {}))
    state = _teacher_state(spec, teachers)
    counter, result = _count_steps(monkeypatch, lambda: train(spec, teacher_state=state, evaluate_test=False))
    if counter.steps == 0:
        pytest.skip(f"{method} trains nothing (a post-hoc method)")
    assert counter.steps >= 3 * epochs, counter.steps  # enough steps that one sync per step would show
    per_step = {call: n for call, n in counter.calls.items() if n > epochs}  # once per epoch is allowed
    assert not per_step, f"{method}: host syncs in {counter.steps} steps: {dict(counter.calls)}"


@pytest.mark.parametrize("augmentation", ["crop-flip", "imagenet"])
@pytest.mark.parametrize("extras", ["plain", "color-jitter", "second-view"])
def test_no_host_sync_in_the_augmentations(augmentation, extras, one_thread):
    """Both augmentations of DeviceLoader (CIFAR's pad-crop-flip, ImageNet's random-resized crop,
    flip and colour jitter), with CBD's SimCLR jitter and SSD-LT's second view on top."""
    from bkdbench.data.augment import moco_v2_view
    from bkdbench.data.loader import DeviceLoader

    # 73 px stores, 64 px crops: large enough for MoCo v2's blur in the second view (BLUR_MIN_SIZE)
    images = torch.randint(0, 256, (64, 3, 73, 73), dtype=torch.uint8)
    labels = torch.arange(64) % 4
    loader = DeviceLoader(images, labels, 16, (0.5,) * 3, (0.25,) * 3, pad=4, hflip=True, seed=0,
                          augmentation=augmentation, image_size=64, device=torch.device("cpu"),
                          color_jitter=extras == "color-jitter",
                          second_view=moco_v2_view if extras == "second-view" else None)
    counter = SyncCounter()
    with counter:
        for _epoch in range(2):
            batches = iter(loader)
            while True:
                counter.armed = True
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                finally:
                    counter.armed = False
                counter.steps += 1
                side = 64 if augmentation == "imagenet" else 73
                assert batch[0].shape == (16, 3, side, side) and len(batch) == (3 if extras == "second-view" else 2)
    assert counter.steps == 8
    per_batch = {call: n for call, n in counter.calls.items() if n > 2}  # once per epoch (the order) is allowed
    assert not per_batch, f"host syncs in {counter.steps} batches: {dict(counter.calls)}"
