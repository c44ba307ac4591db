"""What a Ray Tune experiment's saved state says about its trials' checkpoints, read the way
``Tuner.restore`` reads it: the ``experiment_state-*.json`` files of a stage folder, each trial's
checkpoint manager (cloudpickled in that file) and the latest checkpoint it registered. A resume
test compares this, read right after the driver was killed, with the epochs each resumed run
trained (its history's ``session`` > 0)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def named_checkpoints(results: Path) -> dict[str, Optional[int]]:
    """For every trial under ``results/experiments/*/*`` (each stage's latest saved state): run id (a
    trial's ``run_id`` config) -> the epoch its restore would start at (the epoch reported with the
    latest registered checkpoint, plus one), or None when the state names no checkpoint or the
    named checkpoint folder is gone (Tune then trains the run from epoch 0)."""
    from ray import cloudpickle

    found: dict[str, Optional[int]] = {}
    for stage in sorted(Path(results, "experiments").glob("*/*")):
        states = sorted(stage.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        if not states:
            continue
        for trial, metadata in json.loads(states[-1].read_text())["trial_data"]:
            run_id = json.loads(trial)["config"]["run_id"]
            manager = json.loads(metadata)["checkpoint_manager"]
            latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
            alive = latest is not None and Path(latest.checkpoint.path).is_dir()
            found[run_id] = int(latest.metrics["epoch"]) + 1 if alive else None
    return found


def history_of(value) -> list[dict]:
    """A leaderboard row's ``history`` as a list of per-epoch dicts (a JSON string or a list)."""
    return json.loads(value) if isinstance(value, str) else list(value)


def resumed_at(history: list[dict]) -> Optional[int]:
    """The first epoch a run trained after a restart (its history's first entry of a later session),
    or None when it trained in one go."""
    later = [h["epoch"] for h in history if h.get("session", 0) > 0]
    return later[0] if later else None
