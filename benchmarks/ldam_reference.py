"""bkdbench's CE and LDAM-DRW side by side with the authors' own ``cifar_train.py`` (kaidic/LDAM-DRW).

Both train ResNet-32 on the same pixels, the same long-tailed subsample and the same scaled schedule;
each code keeps its own random streams (initialisation, batch order, crops), so runs are compared as
distributions over seeds (mean ± std per code, and the difference with a Welch 95 % interval), not
pair by pair.

- **Data.** An image folder (``shared/data/cifar10-jpeg.tar.gz`` extracted) decoded by bkdbench. The
  authors' script reads CIFAR-10's python pickles, so its ``./data/cifar-10-batches-py`` is written
  from the same decoded uint8 arrays, in bkdbench's order. Its ``IMBALANCECIFAR10`` then draws the
  subsample itself (``rand_number`` 0), which is the 12,406 images of bkdbench's ``--split reference``
  at IF 100 (checked: the class counts are compared before training). Test: all 10,000 test images.
- **Schedule** (``--epochs`` E, default 10): the 200-epoch schedule scaled. SGD lr 0.1, momentum 0.9,
  weight decay 2e-4 on every parameter, batch 128, last partial batch kept; warm-up lr·(e+1)/w for the
  first w = E/5 epochs (a whole number of epochs, because the authors' rule is per epoch; 5/200 of 10
  epochs would be a quarter epoch); lr ×0.01 from epoch 0.8·E, ×0.0001 from 0.9·E; DRW's class-balanced
  weights (β 0.9999) from 0.8·E. bkdbench gets this as an in-process recipe ``ldam-check`` (the same
  ``Recipe`` fields a shipped recipe has).
- **Normalisation.** The authors' script normalises with its constants (mean 0.4914/0.4822/0.4465,
  std 0.2023/0.1994/0.2010); bkdbench's run here uses the same constants instead of the folder's own
  statistics, so both networks see identical inputs.
- **What is changed in the authors' code, and nothing else** (each substitution must match once):
  CUDA calls become CPU calls (``torch.cuda.FloatTensor`` → ``torch.FloatTensor``, ``.cuda()`` → the
  object itself); ``losses.py``'s uint8 mask becomes bool (torch.where has required a bool condition
  since torch 1.x); the four schedule constants above; the dataset's md5 check (the pickles are
  regenerated, so their hashes differ). ``-j 0`` loads in the main process. Its per-epoch scalars are
  read from its own ``SummaryWriter`` calls (``loss/train``, ``acc/test_val_top1``).

    python benchmarks/ldam_reference.py --reference PATH/TO/LDAM-DRW --data-dir /tmp/cifar10-jpeg \
        --seeds 0 1 2 --methods ldam-drw ce --jobs 2 --out results/ldam-reference.json

``--details`` only compares the pieces (loss, margins, weights at the switch, the cosine head, the
optimizer across the switch) on fixed inputs and exits. Core only (torch + bkdbench), no Ray.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # cifar_train.py's Normalize
KAIDIC_LOSS = {"ce": ("CE", "None"), "ldam-drw": ("LDAM", "DRW"), "drw": ("CE", "DRW")}


def schedule(epochs: int) -> dict:
    if epochs % 10:
        raise SystemExit("error: --epochs must be a multiple of 10 (warm-up E/5, switches at 0.8·E and 0.9·E)")
    return {"warm": epochs // 5, "m1": epochs * 8 // 10, "m2": epochs * 9 // 10}


def substitutions(epochs: int) -> dict[str, list[tuple[str, str]]]:
    s = schedule(epochs)
    return {
        "losses.py": [
            ("m_list = torch.cuda.FloatTensor(m_list)", "m_list = torch.FloatTensor(m_list)"),
            ("index = torch.zeros_like(x, dtype=torch.uint8)", "index = torch.zeros_like(x, dtype=torch.bool)"),
            ("index.type(torch.cuda.FloatTensor)", "index.type(torch.FloatTensor)"),
        ],
        "cifar_train.py": [
            ("idx = epoch // 160", f"idx = epoch // {s['m1']}"),
            ("    if epoch <= 5:\n        lr = args.lr * epoch / 5",
             f"    if epoch <= {s['warm']}:\n        lr = args.lr * epoch / {s['warm']}"),
            ("elif epoch > 180:", f"elif epoch > {s['m2']}:"),
            ("elif epoch > 160:", f"elif epoch > {s['m1']}:"),
        ],
    }


# ----------------------------------------------------------------------------- the authors' side

def write_pickles(root: Path, arrays) -> None:
    """CIFAR-10's python format from bkdbench's decoded arrays (N×C×H×W uint8 → rows of 3072 bytes,
    the red plane first, as in the original files), five training batches and the test batch."""
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)
    rows = lambda x: np.ascontiguousarray(x.reshape(len(x), -1))  # noqa: E731
    chunks = np.array_split(np.arange(len(arrays.train_y)), 5)
    for i, idx in enumerate(chunks, 1):
        entry = {"data": rows(arrays.train_x[idx]), "labels": arrays.train_y[idx].tolist()}
        (out / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    (out / "test_batch").write_bytes(pickle.dumps({"data": rows(arrays.test_x), "labels": arrays.test_y.tolist()}))
    (out / "batches.meta").write_bytes(pickle.dumps({"label_names": list(arrays.classes)}))


def patched_copy(reference: Path, dest: Path, epochs: int) -> None:
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns(".git"))
    for name, subs in substitutions(epochs).items():
        text = (dest / name).read_text()
        for old, new in subs:
            if text.count(old) != 1:
                raise SystemExit(f"error: {name}: expected {old!r} once, found it {text.count(old)} times "
                                 "(not the kaidic/LDAM-DRW code this script was written against)")
            text = text.replace(old, new)
        (dest / name).write_text(text)


RUNNER = r'''
import json, sys, runpy, torch, torchvision.datasets.cifar as cifar, tensorboardX
torch.set_num_threads(int(sys.argv[1]))
out = sys.argv[2]
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
cifar.check_integrity = lambda *a, **k: True  # regenerated pickles: their md5s differ
scalars = []
class Writer:
    def __init__(self, *a, **k): pass
    def add_scalar(self, tag, value, step): scalars.append([tag, float(value), int(step)]); json.dump(scalars, open(out, "w"))
    def close(self): pass
    def add_scalars(self, *a, **k): pass
tensorboardX.SummaryWriter = Writer
import losses  # the weights the authors' training loop gives its criterion, epoch by epoch
_init = losses.LDAMLoss.__init__
def _record(self, cls_num_list, max_m=0.5, weight=None, s=30):
    scalars.append(["drw_weights", None if weight is None else [float(w) for w in weight], -1])
    _init(self, cls_num_list, max_m=max_m, weight=weight, s=s)
losses.LDAMLoss.__init__ = _record
sys.argv = ["cifar_train.py"] + sys.argv[3:]
runpy.run_path("cifar_train.py", run_name="__main__")
'''


def run_kaidic(code: Path, pickles: Path, method: str, seed: int, epochs: int, threads: int, work: Path) -> dict:
    loss_type, rule = KAIDIC_LOSS[method]
    run_dir = work / f"kaidic-{method}-{seed}"
    run_dir.mkdir()
    (run_dir / "data").symlink_to(pickles)
    for item in code.iterdir():
        (run_dir / item.name).symlink_to(item)
    (run_dir / "runner.py").write_text(RUNNER)
    scalars = run_dir / "scalars.json"
    args = [sys.executable, "runner.py", str(threads), str(scalars), "--dataset", "cifar10", "--arch", "resnet32",
            "--loss_type", loss_type, "--train_rule", rule, "--imb_type", "exp", "--imb_factor", "0.01",
            "--rand_number", "0", "--epochs", str(epochs), "--seed", str(seed), "-j", "0", "--exp_str", str(seed)]
    tick = time.perf_counter()
    proc = subprocess.run(args, cwd=run_dir, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the authors' script failed ({method}, seed {seed}):\n{proc.stderr[-3000:]}")
    counts = next((line for line in proc.stdout.splitlines() if line.startswith("[")), "")
    rows = json.loads(scalars.read_text())
    test = [v for tag, v, _ in rows if tag == "acc/test_val_top1"]
    loss = [v for tag, v, _ in rows if tag == "loss/train"]
    weights = [v for tag, v, _ in rows if tag == "drw_weights"]
    return {"code": "authors", "method": method, "seed": seed, "class_counts": json.loads(counts),
            "test_top1": test, "train_loss": loss, "drw_weights": weights, "seconds": time.perf_counter() - tick}


# ----------------------------------------------------------------------------- bkdbench's side

BKD_CHILD = r'''
import dataclasses, json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from bkdbench.specs import recipes
from bkdbench.specs.runspec import make_spec
from bkdbench.training import train as T
warm, m1, m2, epochs = (int(v) for v in sys.argv[5:9])
recipes.RECIPES["ldam-check"] = recipes.Recipe("ldam-check", epochs=epochs, batch_size=128, lr=0.1, weight_decay=2e-4,
    warmup_frac=warm / epochs, warmup_stairs=warm, milestones_frac=(m1 / epochs, m2 / epochs), lr_decay=0.01)
load = T.load_run_data
def load_with_constants(spec, data_dir):  # the authors' Normalize constants, for identical inputs
    data = load(spec, data_dir)
    data.info = dataclasses.replace(data.info, mean=tuple(json.loads(sys.argv[9])), std=tuple(json.loads(sys.argv[10])))
    return data
T.load_run_data = load_with_constants
spec = make_spec("imagefolder", 100, sys.argv[3], seed=int(sys.argv[4]), model="resnet32", recipe="ldam-check",
                 data_dir=sys.argv[2], split="reference")
tick = time.perf_counter()
result = T.train(spec, data_dir=sys.argv[2], device="cpu")
from bkdbench.methods import build
m = build(spec.method, result.class_counts, epochs=spec.epochs)
weights = [None if m.cb_weights(torch.zeros(1), e) is None else m.cb_weights(torch.zeros(1), e).tolist()
           for e in range(spec.epochs)] if hasattr(m, "cb_epoch") else None
json.dump({"code": "bkdbench", "method": sys.argv[3], "seed": int(sys.argv[4]), "class_counts": result.class_counts,
           "test_top1": [h.get("test_top1") for h in result.history], "train_loss": [h["train_loss"] for h in result.history],
           "lr": [h["lr"] for h in result.history], "drw_weights": weights, "seconds": time.perf_counter() - tick},
          sys.stdout)
'''


def run_bkdbench(data_dir: Path, method: str, seed: int, epochs: int, threads: int) -> dict:
    s = schedule(epochs)
    args = [sys.executable, "-c", BKD_CHILD, str(threads), str(data_dir), method, str(seed),
            str(s["warm"]), str(s["m1"]), str(s["m2"]), str(epochs), json.dumps(MEAN), json.dumps(STD)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bkdbench failed ({method}, seed {seed}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the pieces, on fixed inputs

def details(code: Path, counts: list[int]) -> list[str]:
    """The authors' loss, margins and cosine layer against bkdbench's, on the same inputs (float64
    where both allow it); the DRW weights are compared in the real runs (``drw_weights``)."""
    import torch

    sys.path.insert(0, str(code))
    import losses  # noqa: E402  (the authors' losses.py, made to run on a CPU)
    from models.resnet_cifar import NormedLinear, resnet32  # noqa: E402

    from bkdbench.methods import build as build_method
    from bkdbench.models import create_model
    from bkdbench.models.heads import CosineLinear

    out, gen = [], torch.Generator().manual_seed(0)
    method = build_method("ldam-drw", counts, epochs=10)
    theirs = losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30)
    out.append(f"margins: max |Δ| {float((theirs.m_list.double() - method.margins).abs().max()):.2e} "
               f"(theirs float32, ours float64); largest {float(method.margins.max()):.4f}")
    cos = (torch.rand(256, len(counts), generator=gen) * 2 - 1).requires_grad_(True)
    y = torch.randint(0, len(counts), (256,), generator=gen)
    for epoch, weight in ((0, None), (method.cb_epoch, method.cb_weights(cos, method.cb_epoch).float())):
        ours_cos = cos.detach().clone().requires_grad_(True)
        a = losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30, weight=weight)(cos, y)
        b = method.loss(ours_cos, y, epoch=epoch)
        (ga,), (gb,) = torch.autograd.grad(a, cos), torch.autograd.grad(b, ours_cos)
        out.append(f"loss at epoch {epoch} ({'class-balanced weights' if weight is not None else 'no weights'}): "
                   f"{float(a.detach()):.6f} vs {float(b.detach()):.6f}; gradient max |Δ| {float((ga - gb).abs().max()):.2e}")
    x = torch.randn(64, 64, generator=gen)
    layer, ours = NormedLinear(64, len(counts)), CosineLinear(64, len(counts))
    with torch.no_grad():
        ours.weight.copy_(layer.weight)
    out.append(f"cosine layer, same weights: max |Δ| {float((layer(x) - ours(x)).abs().max()):.2e}; initial column norms "
               f"theirs {float(layer.weight.norm(dim=0).mean()):.3g}, ours {float(CosineLinear(64, 10).weight.norm(dim=0).mean()):.3g}")
    mine = create_model("resnet32", num_classes=len(counts), head="cosine")
    torch.manual_seed(0)
    ref = resnet32(num_classes=len(counts), use_norm=True)
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in mine.parameters())
    shapes = sorted(tuple(p.shape) for p in ref.parameters()) == sorted(tuple(p.shape) for p in mine.parameters())
    stds = [(float(a.std()), float(b.std())) for a, b in zip(
        [p for p in ref.parameters() if p.dim() == 4], [p for p in mine.parameters() if p.dim() == 4])]
    ratio = max(max(a / b, b / a) for a, b in stds)
    out.append(f"ResNet-32 with the cosine head: {n_ref:,} parameters vs {n_ours:,}; same shapes: {shapes}; "
               f"conv weight std ratio at most {ratio:.3f} (both Kaiming-normal, fan-in)")
    out += lockstep(ref, mine, theirs_loss=losses.LDAMLoss, method=method, counts=counts)
    return out


def lockstep(ref, mine, *, theirs_loss, method, counts, steps: int = 12) -> list[str]:
    """Both networks from the same weights through the same batches (random, 64 images): the authors'
    forward, loss and SGD step against bkdbench's ``train_step``, before the switch (no weights) and
    after it (the class-balanced weights), plain layout. The first steps agree to the last bit where
    the arithmetic is the same; later ones drift as float rounding grows along an SGD trajectory at lr
    0.1. The control measures that growth: the authors' code against itself on inputs one float32 ulp
    apart."""
    import copy

    import torch

    from bkdbench.training.train import train_step

    pairs = list(zip(ref.state_dict().items(), mine.state_dict().items()))
    assert all(a.shape == b.shape for (_, a), (_, b) in pairs)
    mine.load_state_dict({kb: va.clone() for (_, va), (kb, _) in pairs})  # the authors' weights, key by key
    twin = copy.deepcopy(ref)
    sgd = lambda m: torch.optim.SGD(m.parameters(), 0.1, momentum=0.9, weight_decay=2e-4)  # noqa: E731
    opts = [sgd(ref), sgd(mine), sgd(twin)]
    gen = torch.Generator().manual_seed(1)
    lines = []
    for epoch, weight in ((0, None), (method.cb_epoch, method.cb_weights(torch.zeros(1), method.cb_epoch).float())):
        criterion = theirs_loss(cls_num_list=counts, max_m=0.5, s=30, weight=weight)
        ours_vs, control = [], []
        for _ in range(steps):
            x = torch.randn(64, 3, 32, 32, generator=gen)
            y = torch.randint(0, len(counts), (64,), generator=gen)
            got = []
            for net, opt, inputs in ((ref, opts[0], x), (twin, opts[2], x * (1 + 2.0**-23))):
                net.train()
                loss = criterion(net(inputs), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                got.append(float(loss))
            mine.train()
            ours = float(train_step(mine, opts[1], method, x, y, epoch=epoch))
            ours_vs.append(abs(got[0] - ours))
            control.append(abs(got[0] - got[1]))
        when = "after" if weight is not None else "before"
        lines.append(f"lockstep {when} the switch, |Δ loss| per step: bkdbench vs authors "
                     f"{' '.join(f'{d:.0e}' for d in ours_vs)}; authors vs authors one ulp apart "
                     f"{' '.join(f'{d:.0e}' for d in control)}")
    return lines


# ----------------------------------------------------------------------------- the summary

def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means a − b and a 95 % interval (Welch; normal quantile when a side has one run)."""
    from scipy import stats

    d = statistics.fmean(a) - statistics.fmean(b)
    va = statistics.variance(a) / len(a) if len(a) > 1 else 0.0
    vb = statistics.variance(b) / len(b) if len(b) > 1 else 0.0
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    dof = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if len(a) > 1 else 0) + (vb**2 / (len(b) - 1) if len(b) > 1 else 0) or 1e-300)
    q = stats.t.ppf(0.975, dof)
    return d, d - q * se, d + q * se


def summary(runs: list[dict]) -> str:
    lines = ["| method | code | seeds | last-epoch test top-1 | per seed | first re-weighted epoch's train loss |",
             "|---|---|---:|---:|---|---:|"]
    by = {}
    for r in runs:
        by.setdefault((r["method"], r["code"]), []).append(r)
    for (method, code), rs in sorted(by.items()):
        top = [r["test_top1"][-1] for r in rs]
        std = statistics.stdev(top) if len(top) > 1 else float("nan")
        m1 = schedule(len(rs[0]["test_top1"]))["m1"]
        loss = statistics.fmean(r["train_loss"][m1] for r in rs)
        lines.append(f"| {method} | {code} | {len(rs)} | {statistics.fmean(top):.2f} ± {std:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in top)} | {loss:.3f} |")
    lines.append("")
    for method in sorted({m for m, _ in by}):
        if (method, "bkdbench") in by and (method, "authors") in by:
            a = [r["test_top1"][-1] for r in by[(method, "bkdbench")]]
            b = [r["test_top1"][-1] for r in by[(method, "authors")]]
            d, lo, hi = welch(a, b)
            lines.append(f"{method}: bkdbench − authors = {d:+.2f} points, 95 % interval [{lo:+.2f}, {hi:+.2f}]")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True, help="a checkout of kaidic/LDAM-DRW")
    p.add_argument("--data-dir", type=Path, required=True, help="the CIFAR-10 JPEG folder (train/, test/)")
    p.add_argument("--methods", nargs="+", default=["ldam-drw"], choices=sorted(KAIDIC_LOSS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each gets threads = cores // jobs)")
    p.add_argument("--out", type=Path, default=Path("results/ldam-reference.json"))
    p.add_argument("--details", action="store_true", help="compare the pieces on fixed inputs, then exit")
    p.add_argument("--summarize", nargs="+", type=Path, help="print the table of earlier --out files, then exit")
    args = p.parse_args(argv)
    if args.summarize:
        runs = [r for f in args.summarize for r in json.loads(f.read_text())["runs"]]
        print(summary(runs))
        return
    schedule(args.epochs)
    for path in (args.reference / "cifar_train.py", args.data_dir / "train"):
        if not path.exists():
            raise SystemExit(f"error: {path} not found")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    from bkdbench.data import dataset_info

    arrays = dataset_info("imagefolder", args.data_dir).load(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="ldam-reference-") as tmp:
        work = Path(tmp)
        patched_copy(args.reference, work / "code", args.epochs)
        if args.details:
            from bkdbench.data.longtail import longtail_indices

            kept = longtail_indices(arrays.train_y, 100, "exp", 0)
            counts = np.bincount(arrays.train_y[kept], minlength=10).tolist()
            print("\n".join(details(work / "code", counts)))
            return
        write_pickles(work / "pickles", arrays)
        jobs = [(code, m, s) for s in args.seeds for m in args.methods for code in ("authors", "bkdbench")]

        def one(job):
            code, m, s = job
            if code == "authors":
                return run_kaidic(work / "code", work / "pickles", m, s, args.epochs, threads, work)
            return run_bkdbench(args.data_dir, m, s, args.epochs, threads)

        runs = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for r in pool.map(one, jobs):
                runs.append(r)
                print(f"{r['code']:>8} {r['method']:>8} seed {r['seed']}: test top-1 per epoch "
                      f"{' '.join(f'{t:.2f}' for t in r['test_top1'])} ({r['seconds']:.0f} s)", flush=True)
    counts = {tuple(r["class_counts"]) for r in runs}
    if len(counts) != 1:
        raise SystemExit(f"error: the two codes trained on different class counts: {sorted(counts)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    args.out.write_text(json.dumps({"runs": runs, "epochs": args.epochs, "schedule": schedule(args.epochs),
                                    "class_counts": list(counts.pop()), "torch": torch.__version__,
                                    "machine": platform.processor() or platform.machine(), "threads": threads}, indent=1))
    print(summary(runs))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
