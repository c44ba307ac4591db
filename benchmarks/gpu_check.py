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
  90-epoch ImageNet-LT run (``--no-resnet50`` skips it);
- a 10-epoch CIFAR-100-LT IF100 BKD student through the real ``train()`` (its CE teacher first), on a
  CIFAR-100 folder of random pixels written in the real file layout (speed does not depend on the
  pixels; the accuracy means nothing), with its projection to the recipe's 200 epochs
  (``--no-train`` skips it);
- the 13 CUDA tests (12 losses without host syncs, host-gathered batches equal to device-resident
  ones), their counts in the JSON; skipped without a GPU (``--no-tests`` leaves them out).
Evaluation is timed as ``train()`` evaluates (float32), on the second of two identical passes.
Prints the figures and writes one JSON file (``--out``, default ``results/bench/gpu-check-*.json``).

Imports: torch, torchvision, numpy, pydantic and bkdbench's core modules (``bkdbench.bench`` and what
it imports), never Ray, Optuna, typer or rich; the script checks that and says so in the JSON. A bare
GPU machine (torch, torchvision, numpy, pandas, pyarrow, pyyaml, pytest) lacks only pydantic: carry its
wheels (benchmarks/README.md, "On a bare GPU machine"). Needs Python >= 3.10 and torch >= 2.11.
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
    parser.add_argument("--no-train", action="store_true", help="skip the BKD student through train()")
    parser.add_argument("--no-tests", action="store_true", help="skip running the CUDA tests")
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
    if not args.no_train:
        result["bkd_student_train"] = bkd_student(device, quick=args.quick,
                                                  progress=lambda msg: print(f"  {msg}", flush=True))
    if not args.no_tests:
        result["cuda_tests"] = cuda_tests()
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


def bkd_student(device: str, *, quick: bool, progress) -> dict:
    """A BKD student of CIFAR-100-LT IF100 (ResNet-32, the reference recipe cut to 10 epochs) through
    ``train()``, its CE teacher trained first the same way. ``quick``: digits IF10, 1 epoch."""
    import tempfile

    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    epochs = 1 if quick else 10
    with tempfile.TemporaryDirectory() as folder:
        if quick:
            student, data_dir = make_spec("digits", 10, "bkd", epochs=epochs), None
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from cifar_files import write_cifar100  # the real python-pickle layout, random pixels

            write_cifar100(Path(folder))
            student, data_dir = make_spec("cifar100", 100, "bkd", epochs=epochs), Path(folder)
        out, state = {}, None
        for role, spec in (("teacher", student.teacher), ("student", student)):
            progress(f"train(): {role} {spec.label()}, {epochs} epochs")
            tick = time.perf_counter()
            result = train(spec, device=device, data_dir=data_dir, teacher_state=state if role == "student" else None)
            out[role] = {"wall_seconds": time.perf_counter() - tick, "train_seconds": result.train_seconds,
                         "seconds_per_epoch": result.train_seconds / epochs,
                         "images_per_second": result.images_per_second, "device": result.device,
                         "epoch_seconds": [h["seconds"] for h in result.history]}
            state = result.state_dict
    per_epoch_wall = out["student"]["wall_seconds"] / epochs  # training, evaluation and set-up, per epoch
    out["projection_200_epochs"] = {"seconds": per_epoch_wall * 200, "how": f"200 × the student's wall time per "
                                    f"epoch over its {epochs} epochs (training, evaluation every epoch, set-up)"}
    out["dataset"] = "digits IF10" if quick else "cifar100 folder of random pixels, IF100"
    out["epochs"] = epochs
    return out


def cuda_tests() -> dict:
    """The CUDA tests' outcome (they skip without a GPU): pytest's summary line and counts."""
    import re
    import subprocess

    files = ["tests/test_methods_numerics.py::test_cuda_loss_matches_cpu_without_host_syncs",
             "tests/test_imagenet_aug.py::test_host_gathered_batches_equal_device_resident_ones"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                          cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ,
                                                                       "PYTHONPATH": str(REPO)})
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"command": "python -m pytest -q " + " ".join(files), "exit_status": proc.returncode,
            "summary": summary, "counts": counts, "failures": failures}


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
    if "bkd_student_train" in r:
        b = r["bkd_student_train"]
        print(f"  BKD student through train() ({b['dataset']}, {b['epochs']} epochs): teacher "
              f"{b['teacher']['wall_seconds']:.0f} s, student {b['student']['wall_seconds']:.0f} s "
              f"({b['student']['images_per_second']:.0f} images/s); 200 epochs (projected): "
              f"{b['projection_200_epochs']['seconds'] / 60:.1f} min")
    if "cuda_tests" in r:
        print(f"  CUDA tests: {r['cuda_tests']['summary']}")
    for note in r.get("notes", []):
        print(f"  note: {note}")


if __name__ == "__main__":
    sys.exit(main())
