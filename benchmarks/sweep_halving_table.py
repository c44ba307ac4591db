"""The tables of docs/performance.md's halving section, from the JSON files `sweep_halving.py` writes:
one row per method and sampler seed, halving against the full-budget search; then the halving-only
sweeps (`--sh-only`), rank agreement and the best configuration alone.

    python benchmarks/sweep_halving_table.py docs/evidence/sweep-halving-digits-*.json
"""
from __future__ import annotations

import json
import sys


def _rho(value) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _results(path: str) -> list[dict]:
    loaded = json.loads(open(path).read())
    return [loaded] if "argv" in loaded else list(loaded.values())  # one result, or several by name


def rows(paths: list[str]):
    for path in paths:
        for result in _results(path):
            yield from _rows(result)


def _where(result: dict) -> tuple[str, int]:
    argv = result["argv"]
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    return (argv[argv.index("--dataset") + 1] if "--dataset" in argv else "digits"), seed


def _rows(result: dict, halving_only: bool = False):
    data, seed = _where(result)
    for method, res in result["methods"].items():
        if halving_only:
            if "paired_test" not in res:
                yield _halving_only_row(data, method, seed, res["sh"])
            continue
        if "paired_test" not in res:
            continue  # halving only: no full-budget search to compare with
        sh, full, p = res["sh"], res["full"], res["paired_test"]
        lo, hi = p.get("difference_ci95", [None, None])
        steps = "; ".join(f"{r['low']}→{r['high']}: {_rho(r['spearman'])}" for r in sh["rank_agreement"]
                          if r["spearman"] is not None)
        yield (f"| {data}, {method}, {seed} | {sh['fraction']:.2f} | {p['mean_difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
               f"{'yes' if p.get('sh_within_full_ci95') else 'no'} | ρ {_rho(res['bottom_vs_full']['spearman'])} "
               f"(n {res['bottom_vs_full']['n']}) | {steps or '–'} | {sh['best_val_top1']:.0f} / {full['best_val_top1']:.0f} |")


def _halving_only_row(data: str, method: str, seed: int, sh: dict) -> str:
    steps = "; ".join(f"{r['low']}→{r['high']}: {_rho(r['spearman'])} (n {r['n']})" for r in sh["rank_agreement"])
    best = ", ".join(f"{k} {v:.3g}" for k, v in sh["best_params"].items())
    tests = " / ".join(f"{v:.1f}" for _, v in sorted(sh["test_top1_by_seed"].items(), key=lambda kv: int(kv[0])))
    return f"| {data}, {method}, {seed} | {sh['fraction']:.2f} | {steps} | {best} ({sh['best_val_top1']:.1f}) | {tests or '–'} |"


def main() -> None:
    print("| data, method, sampler seed | epochs ÷ full | best test, halving − full, paired [95 % CI] | inside the full "
          "search's 95 % interval | bottom rung vs full budget, same configurations | promoted, rung to rung "
          "| best validation, halving / full |")
    print("|---|---|---|---|---|---|---|")
    for row in rows(sys.argv[1:]):
        print(row)
    only = [row for path in sys.argv[1:] for result in _results(path) for row in _rows(result, halving_only=True)]
    if only:
        print("\n| data, method, sampler seed | epochs ÷ full | promoted, rung to rung (Spearman) | best configuration "
              "(validation at the full budget) | its test top-1 by final seed |")
        print("|---|---|---|---|---|")
        print("\n".join(only))


if __name__ == "__main__":
    main()
