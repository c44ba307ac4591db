"""Orchestration: running specs and recording them; Ray Tune suites, Optuna sweeps, ablations.

Only the modules that schedule trials import Ray; ``execute`` is the Ray-free glue that the
single-run CLI and every Ray trial share.
"""
