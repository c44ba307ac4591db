"""Numerical robustness of bkdbench.methods: extreme logits, low precision, CUDA without host syncs."""

import numpy as np
import pytest
import torch

from bkdbench.methods import build

COUNTS = [500, 200, 80, 20, 5]
ALL = ["ce", "reweight-inv", "reweight-cb", "drw", "focal", "ldam", "ldam-drw",
       "kd", "bkd", "balanced-softmax", "logit-adjust", "logit-adjust-posthoc"]


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(scale=2.0, size=(7, 5)))
    zt = torch.tensor(rng.normal(scale=2.0, size=(7, 5)))
    cos = torch.tensor(rng.uniform(-1, 1, size=(7, 5)))
    y = torch.tensor([0, 1, 2, 3, 4, 4, 3])
    return z, zt, cos, y


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_finite_for_extreme_logits(gamma, dtype):
    z = torch.tensor([[100.0, -100.0, 0.0], [100.0, -100.0, 0.0], [-100.0, 100.0, 100.0]], dtype=dtype)
    y = torch.tensor([0, 1, 0])  # certain and right, certain and wrong, certain and wrong
    z.requires_grad_(True)
    loss = build("focal", [10, 5, 1], gamma=gamma).loss(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_float32_and_bfloat16_agree_with_float64(batch, name):
    z, zt, cos, y = batch
    inputs = cos if name.startswith("ldam") else z
    m = build(name, COUNTS)
    ref = m.loss(inputs, y, epoch=199, teacher_logits=zt)
    f32 = m.loss(inputs.float(), y, epoch=199, teacher_logits=zt.float())
    bf16 = m.loss(inputs.bfloat16(), y, epoch=199, teacher_logits=zt.bfloat16())
    assert f32.dtype == torch.float32 and f32.item() == pytest.approx(ref.item(), rel=1e-5)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    assert bf16.item() == pytest.approx(ref.item(), rel=0.05)  # bf16 rounds the inputs to ~3 digits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_cuda_loss_matches_cpu_without_host_syncs(batch, name):
    z, zt, cos, y = batch
    inputs = cos if name.startswith("ldam") else z
    m = build(name, COUNTS)
    ref = m.loss(inputs, y, epoch=199, teacher_logits=zt)
    x, t, yy = inputs.cuda().float(), zt.cuda().float(), y.cuda()
    m.loss(x, yy, epoch=199, teacher_logits=t)  # first calls copy the per-class constants over (once per run)
    m.eval_logits(x)
    x.requires_grad_(True)
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync in the training step now raises
    try:
        loss = m.loss(x, yy, epoch=199, teacher_logits=t)
        loss.backward()
        m.eval_logits(x.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
