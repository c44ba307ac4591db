"""GPU check: bkdbench's training throughput on one GPU, in a few minutes, with only torch + torchvision.

    python benchmarks/gpu_check.py                      # the GPU (cuda), about 3-5 minutes
    python benchmarks/gpu_check.py --device cpu --quick # seconds: checks that the script runs

Measures, in one process, on CIFAR-shaped synthetic data with ResNet-32 at batch 128:
- the reference-style pipeline (DataLoader, 4 workers, PIL transforms per image, fp32) against
  bkdbench's (device-resident data, batched augmentation, bf16 autocast, channels_last) on the same
  GPU, alternated, with the ratio;
- bkdbench with torch.compile (compilation time reported apart; skipped, with a note, if it fails);
- a BKD student with its teacher's forward, and the estimated time of a 200-epoch CIFAR-100-LT IF100
  BKD run (training + evaluation every epoch);
- 16 packed BKD students against one, with both packing strategies (``loop`` and ``grouped``);
- ResNet-50 at 224 px on synthetic ImageNet-sized stores (the large benchmarks' augmentation on the
  device, batch 256, bf16): training and evaluation images/s, and the projected wall time of a
  90-epoch ImageNet-LT run (``--no-resnet50`` skips it).
Prints the figures and writes one JSON file (``--out``, default ``results/bench/gpu-check-*.json``).

Imports: torch, torchvision, numpy, pydantic and bkdbench's core modules (``bkdbench.bench`` and what
it imports), never Ray, Optuna, typer or rich; the script checks that and says so in the JSON.
Needs Python >= 3.10 and torch >= 2.11.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "optuna", "typer", "rich")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default when available), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs, in seconds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--no-resnet50", action="store_true", help="skip the ResNet-50 at 224 px figure")
    parser.add_argument("--pack", type=int, default=None, help="packed students (default 16; 2 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))  # run from a checkout: bkdbench need not be installed
    try:
        import torch

        from bkdbench.bench import config_for, run_bench, write_bench
    except ImportError as exc:
        print(f"gpu_check: cannot import {exc.name!r}: it needs torch, torchvision, numpy and pydantic "
              f"(pip install {exc.name})", file=sys.stderr)
        return 2
    forbidden = sorted(m for m in FORBIDDEN if m in sys.modules)
    if forbidden:
        print(f"gpu_check: {', '.join(forbidden)} got imported; the core must not need them", file=sys.stderr)
        return 2

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible here; pass --device cpu to check the script", file=sys.stderr)
        return 2
    overrides = {"compare_strategies": True, "compile": False if (args.no_compile or args.quick) else None,
                 "pack": args.pack}
    config = config_for("quick" if args.quick else "gpu", **overrides)
    tick = time.perf_counter()
    result = run_bench(config, device=device, progress=lambda msg: print(f"  {msg}", flush=True),
                       command=" ".join(["python benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]))
    if not args.no_resnet50:
        from bkdbench.bench.imagenet import model_throughput

        small = dict(model="resnet10", image_size=32, batch=4, steps=1, warmup=1, rounds=1, images=16) if args.quick else {}
        result["resnet50_224"] = model_throughput(device, progress=lambda msg: print(f"  {msg}", flush=True), **small)
    result["kind"] = "gpu_check"
    result["forbidden_modules_imported"] = sorted(m for m in FORBIDDEN if m in sys.modules)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        result["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version()}
    result["wall_seconds"] = time.perf_counter() - tick
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        path = args.out
    else:
        path = write_bench(result, REPO / "results" / "bench", prefix="gpu-check")
    _print(result)
    print(f"wrote {path}")
    return 0


def _print(r: dict) -> None:
    print(f"\n{r['device']}  torch {r['torch_version']}  torchvision {r['torchvision_version']}  "
          f"({r['config']['model']}, batch {r['config']['batch_size']}, {r['config']['images']} images/epoch)")
    for name, p in r["pipelines"].items():
        lo, hi = p["images_per_second_range"]
        print(f"  {name:16s} {p['images_per_second']:9.0f} images/s [{lo:.0f}-{hi:.0f}]  "
              f"{p['seconds_per_epoch']:7.2f} s/epoch  peak {p['peak_memory_mb']:.0f} MB")
    print(f"  bkdbench / reference: {r['ratio']:.2f}x  (per-round {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})")
    for key in ("compile_speedup", "packed_vs_separate", "packed_loop_vs_separate", "packed_grouped_vs_separate"):
        if key in r:
            print(f"  {key}: {r[key]['median']:.2f}x  (per-round {r[key]['range'][0]:.2f}-{r[key]['range'][1]:.2f})")
    if "compile_seconds" in r:
        print(f"  compilation: {r['compile_seconds']:.0f} s")
    if "bkd_200_epochs_estimate" in r:
        print(f"  200-epoch CIFAR-100-LT IF100 BKD student (estimate): {r['bkd_200_epochs_estimate']['seconds'] / 60:.1f} min")
    if "resnet50_224" in r:
        m = r["resnet50_224"]
        print(f"  {m['model']} at {m['image_size']} px, batch {m['batch']}: {m['train_images_per_second']:.0f} training "
              f"images/s, {m['eval_images_per_second']:.0f} evaluation images/s; 90-epoch ImageNet-LT run "
              f"(projected): {m['projection']['hours']:.1f} h")
    for note in r.get("notes", []):
        print(f"  note: {note}")


if __name__ == "__main__":
    sys.exit(main())
