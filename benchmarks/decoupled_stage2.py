"""Which of protocol 2's three stage-2 changes moved cRT and LWS on digits-LT, each switched alone.

    python benchmarks/decoupled_stage2.py --imbalance 50,10 --seeds 5 --out stage2.json

Protocol 2 changed the decoupled classifiers' stage 2 (methods/decoupled.py) in three ways, each to
match Kang et al.'s code: (1) BatchNorm statistics of the frozen backbone are re-estimated on the
class-balanced batches (``bn_stats: re-estimate``, Kang's ``model.train()``); (2) an epoch is ⌊N/B⌋
full batches (Kang's ``epoch_steps = int(N / batch_size)``), where protocol 1 kept the last partial
batch; (3) LWS's scale multiplies the bias too. This script trains, per seed, one CE stage-1 model
(exactly the run the suite would cache) and then every combination of the three on it, so each
difference is paired on the same stage-1 model and the same stage-2 batch order:

- cRT: bn_stats × last batch (4 runs per seed); LWS: bn_stats × last batch × bias scaled (8).
- The mechanism of (1), with nothing trained: the stage-1 model's BatchNorm statistics re-estimated
  (train-mode forward passes, no gradient) over stage 2's 4 epochs of class-balanced batches, or of
  instance-balanced ones, then the test split evaluated with the stage-1 classifier unchanged.
- (1) is the method's own parameter. (2) and (3) are not parameters (they are what the authors' code
  does): the script sets the class attributes ``drop_last`` and the LWS ``restructure`` for its own
  runs only; nothing else differs.

Everything else is the suite's: ``digits``, the ``small`` recipe (40 stage-1 epochs, stage 2 is
round(0.1·40) = 4 epochs of lr 0.05, ×0.01 from epoch 3), ``cnn-small``, data seed 0, the every-class
validation split, last-epoch balanced test top-1. Writes ``--out`` (JSON: every run, each
configuration's mean ± sample std, and the paired effect of each change) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROTOCOL_2 = {"bn_stats": "re-estimate", "drop_last": True, "scale_bias": True}
PROTOCOL_1 = {  # the protocol-1 value of each change
    "bn_stats": "frozen",
    "drop_last": False,
    "scale_bias": False,
}


def configurations(method: str) -> list[dict]:
    axes = ["bn_stats", "drop_last"] + (["scale_bias"] if method == "lws" else [])
    out = []
    for values in itertools.product(*[(PROTOCOL_2[a], PROTOCOL_1[a]) for a in axes]):
        config = dict(zip(axes, values))
        config.setdefault("scale_bias", PROTOCOL_2["scale_bias"])  # cRT has no scale
        out.append(config)
    return out


def run_stage2(method: str, config: dict, factor: float, seed: int, stage1_state: dict) -> dict:
    from bkdbench.methods import decoupled
    from bkdbench.methods.registry import method_class
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    cls = method_class(method)
    saved = cls.drop_last, decoupled.LearnableWeightScaling.__dict__["restructure"]

    def restructure(_cls, model):
        model.fc = decoupled.ScaledLinear(model.fc, scale_bias=config["scale_bias"])

    cls.drop_last = config["drop_last"]
    decoupled.LearnableWeightScaling.restructure = classmethod(restructure)
    try:
        spec = make_spec("digits", factor, method, seed=seed, params={"bn_stats": config["bn_stats"]})
        result = train(spec, teacher_state=stage1_state)
    finally:
        cls.drop_last, decoupled.LearnableWeightScaling.restructure = saved
    return {"method": method, "imbalance": factor, "seed": seed, **config, "top1": result.metrics["top1"],
            "few": result.metrics["few"], "val_top1": result.metrics["val_top1"],
            "stage2_images": sum(h["images"] for h in result.history)}


def bn_only(factor: float, seed: int, stage1_state: dict) -> dict:
    """Test top-1 of the stage-1 model as it is, and after its BatchNorm statistics alone were
    re-estimated on stage 2's batches (class-balanced or instance-balanced), weights untouched."""
    import torch
    from bkdbench.data import DeviceLoader, normalize
    from bkdbench.specs import make_spec
    from bkdbench.specs.recipes import get_recipe
    from bkdbench.training.evaluate import classification_metrics, predict
    from bkdbench.training.train import build_model, device_splits, load_run_data

    spec = make_spec("digits", factor, "crt", seed=seed)  # stage 2's epochs, batch size and batch order
    data, cpu = load_run_data(spec, None), torch.device("cpu")
    info, batch = data.info, get_recipe(spec.recipe).batch_size
    train_x, train_y, splits = device_splits(data, cpu, True)
    out = {"imbalance": factor, "seed": seed}
    for name in ("none", "class-balanced", "instance"):
        model = build_model(spec, len(data.classes), info.channels, "linear", cpu, init=False)
        model.load_state_dict(stage1_state)
        loader = DeviceLoader(train_x, train_y, batch, info.mean, info.std, pad=info.pad, hflip=info.hflip,
                              sampler=name if name != "none" else "instance", seed=spec.order_seed, drop_last=True)
        model.train()
        with torch.no_grad():
            for _ in range(spec.epochs if name != "none" else 0):
                for x, _y in loader:
                    model(x)
        x, y = splits["test"]
        logits = predict(model.eval(), x, lambda b: normalize(loader.eval_batch(b), loader.mean, loader.std))
        out[name] = classification_metrics(logits, y, len(data.classes), data.shots)["top1"]
    return out


def paired(rows: list[dict], method: str, factor: float, change: str, base: dict) -> dict:
    """Effect of switching ``change`` from protocol 2 to protocol 1, the other settings at ``base``."""
    def pick(config):
        return {r["seed"]: r["top1"] for r in rows if r["method"] == method and r["imbalance"] == factor
                and all(r[k] == v for k, v in config.items())}
    a, b = pick({**base, change: PROTOCOL_1[change]}), pick({**base, change: PROTOCOL_2[change]})
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    half = math.nan
    if len(diffs) > 1:
        from scipy import stats
        half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return {"method": method, "imbalance": factor, "change": change, "others": base, "n": len(diffs),
            "mean_diff": mean, "sd_diff": sd, "ci_low": mean - half, "ci_high": mean + half}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imbalance", default="50,10")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("decoupled-stage2.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as each one-CPU trial of a suite: the suite's numbers exactly)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch
    torch.set_num_threads(args.threads)
    from bkdbench.specs import make_spec
    from bkdbench.training.train import train

    factors = [float(f) for f in args.imbalance.split(",")]
    rows, stage1, bn, tick = [], [], [], time.time()
    for factor, seed in itertools.product(factors, range(args.seeds)):
        ce = train(make_spec("digits", factor, "ce", seed=seed))
        stage1.append({"imbalance": factor, "seed": seed, "top1": ce.metrics["top1"], "few": ce.metrics["few"]})
        bn.append(bn_only(factor, seed, ce.state_dict))
        for method in ("crt", "lws"):
            for config in configurations(method):
                rows.append(run_stage2(method, config, factor, seed, ce.state_dict))
    summary = []
    for factor, method in itertools.product(factors, ("crt", "lws")):
        for config in configurations(method):
            sel = [r for r in rows if r["method"] == method and r["imbalance"] == factor
                   and all(r[k] == v for k, v in config.items())]
            summary.append({"method": method, "imbalance": factor, **config,
                            "top1_mean": statistics.fmean(r["top1"] for r in sel),
                            "top1_std": statistics.stdev(r["top1"] for r in sel) if len(sel) > 1 else math.nan,
                            "few_mean": statistics.fmean(r["few"] for r in sel), "n": len(sel)})
    effects = []
    for factor, method in itertools.product(factors, ("crt", "lws")):
        for change in (["bn_stats", "drop_last"] + (["scale_bias"] if method == "lws" else [])):
            others = [c for c in PROTOCOL_1 if c != change and (method == "lws" or c != "scale_bias")]
            for setting in (PROTOCOL_2, PROTOCOL_1):  # the other changes at protocol 2, then at protocol 1
                effects.append(paired(rows, method, factor, change, {c: setting[c] for c in others}))
    report = {"what": "benchmarks/decoupled_stage2.py", "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "seconds": round(time.time() - tick, 1), "seeds": args.seeds,
              "threads": args.threads, "stage1_ce": stage1, "bn_only": bn, "runs": rows, "summary": summary, "effects": effects}
    args.out.write_text(json.dumps(report, indent=1))
    print("| method | IF | bn_stats | last batch | bias scaled | top-1 | few |\n|---|---:|---|---|---|---:|---:|")
    for s in summary:
        print(f"| {s['method']} | {s['imbalance']:g} | {s['bn_stats']} | {'dropped' if s['drop_last'] else 'kept'} | "
              f"{'yes' if s['scale_bias'] else 'no'} | {s['top1_mean']:.2f} ± {s['top1_std']:.2f} | {s['few_mean']:.2f} |")
    print("\n| method | IF | change to protocol 1 | others at | Δ top-1 | 95% CI |\n|---|---:|---|---|---:|---|")
    for e in effects:
        others = ", ".join(f"{k}={v}" for k, v in e["others"].items())
        print(f"| {e['method']} | {e['imbalance']:g} | {e['change']} | {others} | {e['mean_diff']:+.2f} | "
              f"[{e['ci_low']:+.2f}, {e['ci_high']:+.2f}] |")
    print("\n| IF | stage-1 model | BN re-estimated on class-balanced batches | on instance batches |\n|---:|---:|---:|---:|")
    for factor in factors:
        sel = [b for b in bn if b["imbalance"] == factor]
        cells = [f"{statistics.fmean(b[k] for b in sel):.2f} ± {statistics.stdev(b[k] for b in sel):.2f}"
                 if len(sel) > 1 else f"{sel[0][k]:.2f}" for k in ("none", "class-balanced", "instance")]
        print(f"| {factor:g} | " + " | ".join(cells) + " |")
    print(f"\n{len(rows)} stage-2 runs and {len(stage1)} stage-1 runs in {report['seconds']} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
