"""The bench layer: ``bkdbench bench``'s pipelines (``pipelines``), timing (``measure``), presets
(``config``) and the run that writes the JSON (``run``). It uses the core (data, models, methods,
training) and never Ray, Optuna, typer or rich: ``benchmarks/gpu_check.py`` imports it on GPU machines."""
from bkdbench.bench.config import PRESETS, BenchConfig, config_for
from bkdbench.bench.pipelines import synthetic_cifar
from bkdbench.bench.run import run_bench, write_bench

__all__ = ["PRESETS", "BenchConfig", "config_for", "run_bench", "synthetic_cifar", "write_bench"]
