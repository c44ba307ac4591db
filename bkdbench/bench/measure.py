"""Measuring ``bkdbench bench``'s pipelines: timed windows (images per second and per CPU second,
peak memory), their summaries, per-round ratios, and what machine the figures came from."""
from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_mb(pid: int) -> float:
    """Proportional set size (shared pages split between the processes that share them, so forked
    loader workers are not counted twice); the resident set where PSS is not available."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    return 0.0


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of other processes (the reference's loader workers)."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return out


@dataclass
class Windows:
    images_per_second: list[float] = field(default_factory=list)
    images_per_cpu_second: list[float] = field(default_factory=list)
    memory_mb: float = 0.0


def window(pipe, steps: int, device: torch.device, record: Windows) -> float:
    """Time ``pipe.run(steps)``; a pipeline's ``before_window()`` / ``after_window()`` (if it has
    them) run untimed around it (a loader whose workers must not run between windows)."""
    if hasattr(pipe, "before_window"):
        pipe.before_window()
    try:
        return _timed(pipe, steps, device, record)
    finally:
        if hasattr(pipe, "after_window"):
            pipe.after_window()


def _timed(pipe, steps: int, device: torch.device, record: Windows) -> float:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    workers = _cpu_seconds(pipe.worker_pids())
    cpu, tick = time.process_time(), time.perf_counter()
    seen = pipe.run(steps)
    sync(device)
    seconds = time.perf_counter() - tick
    # CPU seconds this process and the pipeline's loader workers spent: with one torch thread, a
    # figure that other processes on the machine hardly move (with two, threads spin while waiting)
    workers_after = _cpu_seconds(pipe.worker_pids())
    cpu = time.process_time() - cpu + sum(v - workers.get(pid, 0.0) for pid, v in workers_after.items())
    record.images_per_cpu_second.append(seen / cpu if cpu > 0 else math.nan)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # memory of this whole process (every pipeline) and the pipeline's loader workers, at the window's end
        memory = _resident_mb(os.getpid()) + sum(_resident_mb(p) for p in pipe.worker_pids())
    record.memory_mb = max(record.memory_mb, memory)
    ips = seen / seconds
    record.images_per_second.append(ips)
    return ips


def summary(record: Windows, images: int, description: str, **extra) -> dict:
    v = record.images_per_second
    med = statistics.median(v)
    c = record.images_per_cpu_second
    return {
        "images_per_second": med, "images_per_second_range": [min(v), max(v)], "windows": v,
        "seconds_per_epoch": images / med, "peak_memory_mb": record.memory_mb,
        "images_per_cpu_second": statistics.median(c), "images_per_cpu_second_range": [min(c), max(c)],
        "description": description, **extra,
    }


def ratio(num: list[float], den: list[float]) -> dict:
    per_round = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(per_round), "range": [min(per_round), max(per_round)], "per_round": per_round,
            "of_medians": statistics.median(num) / statistics.median(den)}


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu_model": cpu, "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python_version": platform.python_version()}


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
