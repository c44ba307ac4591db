"""Shared helpers of the tests, one module per kind of thing (``from helpers.cli import run_cli``):

- ``cli``: the ``bkdbench`` console script in a subprocess (environment, run to the end, start in a
  session of its own, kill that session) and an in-process Typer app of one command group;
- ``ray_tmp``: private Ray temp folders, and the Ray sessions started in them;
- ``processes``: waiting, killing by PID, /proc scanning, the Ray processes of a driver;
- ``files``: suite files, leaderboard row files, PNGs, and the one check that nothing was written;
- ``sweeps``: the Optuna study of a sweep and the "never reads the test split" set-up;
- ``cluster``: multi-node Ray clusters of ``ray start`` processes on this machine;
- ``storage``: a digits suite end to end on an object store;
- ``tune_state``: the checkpoints a Tune experiment's saved state names (what a restore starts from).
"""
