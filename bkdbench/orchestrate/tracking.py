"""Mirrors of every run in the tools people already use: TensorBoard always, MLflow or Weights & Biases
on request (``--tracking mlflow[:URI]`` / ``--tracking wandb[:PROJECT]``).

The leaderboard stays the source of truth; a tracker is a copy. A tracker that fails while a run
trains is switched off with a warning and the run carries on. Ray-free and torch-free: a
``RunTracker`` wraps the ``report(metrics, make_checkpoint)`` callback that ``train`` calls each
epoch, wherever it runs (``bkdbench train`` in process, or a Ray trial). The CLI validates the
choice before any work (``parse_tracking``) and hands it to Ray trials in ``BKDBENCH_TRACKING``.

What each run logs: parameters = its spec (dataset, imbalance, model, method and each method
parameter, recipe, epochs, seeds); per-epoch metrics ``train_loss``, ``lr``, ``val_top1``,
``test_top1`` (on the epochs that evaluate; step = epoch); the final row's metrics as
``final/<name>`` (top1, many, medium, few, val_top1, ece, nll, top1_best_epoch, train_seconds);
tags = its run id, label, suite/sweep/ablation id and the git commit of the code.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..paths import experiments_dir
from ..provenance import git_sha
from ..storage import Location, mirror

ENV = "BKDBENCH_TRACKING"
KINDS = ("mlflow", "wandb")
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # module to import -> pip extra
FINAL = ("top1", "many", "medium", "few", "val_top1", "ece", "nll", "top1_best_epoch", "train_seconds",
         "images_per_second")
EPOCH = ("train_loss", "lr", "val_top1", "test_top1")
GROUP_TAGS = ("suite", "sweep_id", "ablation_id")


class TrackingError(ValueError):
    """A --tracking value that cannot work: unknown tracker, missing extra, unusable target."""


@dataclass(frozen=True)
class Tracking:
    kind: str  # mlflow | wandb
    target: Optional[str] = None  # MLflow tracking URI; W&B project
    directory: Optional[str] = None  # W&B: the folder its run files go in (absolute)

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls) -> Optional["Tracking"]:
        text = os.environ.get(ENV)
        return cls(**json.loads(text)) if text else None

    def describe(self) -> str:
        if self.kind == "mlflow":
            return f"MLflow at {self.target}"
        return f"W&B project {self.target} ({os.environ.get('WANDB_MODE') or 'online'}, files in {self.directory})"


def parse_tracking(text: Optional[str]) -> Optional[Tracking]:
    """``mlflow``, ``mlflow:URI``, ``wandb`` or ``wandb:PROJECT`` → a Tracking whose paths are absolute
    (Ray trials run in other folders); TrackingError when the value or its extra is wrong."""
    if not text:
        return None
    kind, _, target = text.partition(":")
    if kind not in KINDS:
        raise TrackingError(f"unknown tracker {kind!r} in --tracking {text!r}; choose mlflow[:URI] or wandb[:PROJECT]")
    if importlib.util.find_spec(EXTRAS[kind]) is None:
        raise TrackingError(f"--tracking {kind} needs the {kind} client: pip install 'bkdbench[{EXTRAS[kind]}]'")
    if kind == "mlflow":
        return Tracking("mlflow", _absolute_uri(target or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"))
    mode = os.environ.get("WANDB_MODE", "online")
    if mode not in ("offline", "disabled", "dryrun") and not _wandb_key():
        raise TrackingError("--tracking wandb needs a W&B login (`wandb login` or WANDB_API_KEY), "
                            "or WANDB_MODE=offline to keep the runs on this machine for `wandb sync`")
    return Tracking("wandb", target or os.environ.get("WANDB_PROJECT") or "bkdbench",
                    str(Path(os.environ.get("WANDB_DIR") or ".").resolve()))


def _absolute_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` or a bare folder relative to here, made absolute; other URIs as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri and not uri.startswith("databricks"):
        return Path(uri).resolve().as_uri()
    return uri


def _wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def prepare(tracking: Optional[Tracking]) -> None:
    """Reach the tracker once from the driver before any run starts: an MLflow SQL store is created
    and migrated here, not by concurrent trials. TrackingError when it cannot be reached."""
    if tracking is None or tracking.kind != "mlflow":
        return
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking.target).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001  (any client error is the same answer: unusable)
        raise TrackingError(f"cannot reach MLflow at {tracking.target}: {type(exc).__name__}: {exc}") from None


def tensorboard_dir(results: "Location | str", tags: dict) -> Path:
    """``<results>/experiments/tensorboard/<suite, sweep or ablation id, or 'runs'>`` on this machine."""
    group = next((tags[k] for k in GROUP_TAGS if tags.get(k)), "runs")
    return mirror(experiments_dir(results)) / "tensorboard" / str(group)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", text).strip("-")


def spec_params(spec) -> dict:
    """The spec as flat tracker parameters: method parameters as ``param.<name>``, the recipe as
    ``recipe.<name>``."""
    data = json.loads(spec.canonical_json())
    out = {k: v for k, v in data.items() if k not in ("params", "teacher", "teachers") and not isinstance(v, dict)}
    out.update({f"param.{k}": v for k, v in sorted(spec.params.items())})
    out["teacher_run_id"] = ",".join(t.run_id for t in spec.all_teachers) or None
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in out.items() if v is not None}


class RunTracker:
    """One run's mirrors. ``wrap(report)`` logs each epoch, ``finish(row)`` the final metrics;
    ``replay(history)`` logs the epochs of a run trained elsewhere (a packed trial)."""

    def __init__(self, spec, tags: dict, tracking: Optional[Tracking], tensorboard: Optional[Path],
                 resumed: bool = False):
        self.spec, self.tags = spec, {k: v for k, v in tags.items() if v}
        self.label = spec.label()
        self.names = {"run_id": spec.run_id, "label": self.label, "git_sha": git_sha() or "unknown", **self.tags}
        self._sinks = []
        if tensorboard is not None:
            self._open(_TensorBoard, Path(tensorboard) / f"{_slug(self.label)}-{spec.run_id}", resumed)
        if tracking is not None:
            self._open(_MLflow if tracking.kind == "mlflow" else _Wandb, tracking, resumed)

    def _open(self, kind, where, resumed: bool) -> None:
        try:
            self._sinks.append(kind(self, where, resumed))
        except Exception as exc:  # noqa: BLE001  (a mirror never stops a run)
            warnings.warn(f"{kind.__name__.strip('_')} tracking is off for {self.spec.run_id}: {exc}", stacklevel=2)

    def _each(self, method: str, *args) -> None:
        for sink in list(self._sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"{type(sink).__name__.strip('_')} tracking stopped for {self.spec.run_id}: {exc}",
                              stacklevel=2)
                self._sinks.remove(sink)

    def epoch(self, metrics: dict) -> None:
        values = {k: float(metrics[k]) for k in EPOCH if metrics.get(k) is not None}
        self._each("epoch", int(metrics["epoch"]), values)

    def wrap(self, report):
        def tracked(metrics: dict, make_checkpoint) -> None:
            self.epoch(metrics)
            if report is not None:
                report(metrics, make_checkpoint)
        return tracked

    def replay(self, history: list[dict]) -> None:
        for metrics in history:
            self.epoch(metrics)

    def finish(self, row: Optional[dict], status: str = "finished") -> None:
        final = {k: float(row[k]) for k in FINAL if row and isinstance(row.get(k), (int, float))
                 and math.isfinite(float(row[k]))}
        self._each("finish", final, status)
        self._sinks = []


class _TensorBoard:
    def __init__(self, run: RunTracker, folder: Path, resumed: bool):
        from tensorboardX import SummaryWriter

        if not resumed and folder.is_dir():  # a retrained run starts its curves afresh
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(logdir=str(folder), flush_secs=10)
        if not resumed:
            names = "  \n".join(f"{k}: {v}" for k, v in run.names.items())
            self.writer.add_text("run", f"{names}  \nspec: `{run.spec.canonical_json()}`", 0)

    def epoch(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, final: dict, status: str) -> None:
        for key, value in final.items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        self.writer.close()


class _MLflow:
    def __init__(self, run: RunTracker, tracking: Tracking, resumed: bool):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking.target)
        experiment = "bkdbench/" + next((run.tags[k] for k in GROUP_TAGS if run.tags.get(k)), "runs")
        self.experiment_id = self._experiment(experiment)
        tags = {f"bkdbench.{k}": str(v) for k, v in run.names.items()}
        tags["mlflow.source.git.commit"] = run.names["git_sha"]
        previous = self._unfinished(run.spec.run_id) if resumed else None
        self.run_id = previous or self.client.create_run(self.experiment_id, run_name=run.label, tags=tags).info.run_id
        if previous is None:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in spec_params(run.spec).items()])

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001  (another trial created it meanwhile)
            return self.client.get_experiment_by_name(name).experiment_id

    def _unfinished(self, run_id: str) -> Optional[str]:
        """A restarted trial continues the MLflow run its first attempt opened."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`bkdbench.run_id` = '{run_id}' "
                                       "and attributes.status = 'RUNNING'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def epoch(self, step: int, values: dict) -> None:
        self._log(values, step)

    def finish(self, final: dict, status: str) -> None:
        self._log({f"final/{k}": v for k, v in final.items()}, 0)
        self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")


class _Wandb:
    def __init__(self, run: RunTracker, tracking: Tracking, resumed: bool):
        import wandb

        Path(tracking.directory).mkdir(parents=True, exist_ok=True)
        group = next((run.tags[k] for k in GROUP_TAGS if run.tags.get(k)), None)
        self.run = wandb.init(project=tracking.target, dir=tracking.directory, name=run.label, group=group,
                              config={**spec_params(run.spec), "bkdbench": run.names},
                              tags=[f"{k}:{v}"[:64] for k, v in run.names.items() if k != "label"],
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))

    def epoch(self, step: int, values: dict) -> None:
        self.run.log({**values, "epoch": step}, step=step)

    def finish(self, final: dict, status: str) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in final.items()})
        self.run.finish(exit_code=0 if status == "finished" else 1)
