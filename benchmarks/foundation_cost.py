"""Foundation suites' GPU cost, projected from a measured step (docs/foundation.md).

    python benchmarks/foundation_cost.py                       # the GPU, about a minute
    python benchmarks/foundation_cost.py --device cpu --quick  # clip-tiny, seconds: checks that it runs

Builds ``clip-vit-b16`` with random weights (no hub needed; the arithmetic is the same as with the
OpenAI weights), times LIFT training steps (adapters + cosine head, backbone frozen) and full
fine-tuning steps at LIFT's batch 128 under bf16 autocast, and evaluation forwards, on synthetic 32 px
CIFAR-shaped batches resized on the device as in training. Prints images/s and peak memory, and the
projected hours of the suites' foundation runs (training images × epochs / train rate + evaluation
images / eval rate per epoch). Writes one JSON file (``--out``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

# (name, training images, evaluated images per epoch (val + test), classes, epochs)
SUITES = {"cifar100-lt-foundation": (10847, 10000 + 2000, 100, 10),
          "imagenet-lt-foundation": (115846, 50000 + 20000, 1000, 10)}


def measure(model_name: str, method: str, batch: int, steps: int, device: torch.device) -> dict:
    from bkdbench.methods import build
    from bkdbench.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, 100, 3, weights="none").to(device)
    m = build(method, [100] * 100, epochs=10)
    m.use_classnames([f"class {i}" for i in range(100)])
    params = [p for p in model.parameters() if p.requires_grad] + m.attach(model)
    params = [p for p in {id(p): p for p in params}.values() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = m.loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def evaluate():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    out = {}
    for name, fn in (("train", step), ("eval", evaluate)):
        fn()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        tick = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        out[f"{name}_images_per_second"] = batch * steps / (time.perf_counter() - tick)
        if device.type == "cuda":
            out[f"{name}_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="clip-tiny, few steps: checks that it runs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    model, batch, steps = ("clip-tiny", 32, 3) if args.quick else ("clip-vit-b16", 128, 20)
    figures = {method: measure(model, method, batch, steps, device) for method in ("lift", "full-ft")}
    projection = {}
    for suite, (train_n, eval_n, _, epochs) in SUITES.items():
        hours = {}
        for method, f in figures.items():
            seconds = epochs * (train_n / f["train_images_per_second"] + eval_n / f["eval_images_per_second"])
            hours[method] = round(seconds / 3600, 3)
        projection[suite] = hours
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "model": model,
              "batch": batch, "steps": steps, "torch": torch.__version__, "figures": figures,
              "projected_hours_per_run": projection}
    print(json.dumps(result, indent=2))
    out = Path(args.out or f"results/bench/foundation-cost-{result['device'].replace(' ', '_')}-{int(time.time())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    assert all(math.isfinite(v) for f in figures.values() for v in f.values())


if __name__ == "__main__":
    main()
