"""The table of docs/performance.md's halving section, from the JSON files `sweep_halving.py` writes:
one row per method and sampler seed, halving against the full-budget search.

    python benchmarks/sweep_halving_table.py docs/evidence/sweep-halving-digits-*.json
"""
from __future__ import annotations

import json
import sys


def _rho(value) -> str:
    return "–" if value is None else f"{value:+.2f}"


def rows(paths: list[str]):
    for path in paths:
        loaded = json.loads(open(path).read())
        for result in [loaded] if "argv" in loaded else loaded.values():  # one result, or several by name
            yield from _rows(result)


def _rows(result: dict):
    argv = result["argv"]
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    data = argv[argv.index("--dataset") + 1] if "--dataset" in argv else "digits"
    for method, res in result["methods"].items():
        if "paired_test" not in res:
            continue  # halving only: no full-budget search to compare with
        sh, full, p = res["sh"], res["full"], res["paired_test"]
        lo, hi = p.get("difference_ci95", [None, None])
        steps = "; ".join(f"{r['low']}→{r['high']}: {_rho(r['spearman'])}" for r in sh["rank_agreement"]
                          if r["spearman"] is not None)
        yield (f"| {data}, {method}, {seed} | {sh['fraction']:.2f} | {p['mean_difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
               f"{'yes' if p.get('sh_within_full_ci95') else 'no'} | ρ {_rho(res['bottom_vs_full']['spearman'])} "
               f"(n {res['bottom_vs_full']['n']}) | {steps or '–'} | {sh['best_val_top1']:.0f} / {full['best_val_top1']:.0f} |")


def main() -> None:
    print("| data, method, sampler seed | epochs ÷ full | best test, halving − full, paired [95 % CI] | inside the full "
          "search's 95 % interval | bottom rung vs full budget, same configurations | promoted, rung to rung "
          "| best validation, halving / full |")
    print("|---|---|---|---|---|---|---|")
    for row in rows(sys.argv[1:]):
        print(row)


if __name__ == "__main__":
    main()
