"""``bkdbench sweep``: Optuna searches a method's parameters on Ray Tune, judged on the balanced
validation split only; the best configuration is then re-run with several seeds and tested.

Honesty rules built in: search trials train with ``evaluate_test=False`` (the test images are
never evaluated); a trial that ASHA stops early is told to Optuna as PRUNED, not COMPLETE with a
truncated score (Ray's OptunaSearch would do the latter). A search trial reports to Tune only on its
recipe's evaluation epochs (every ``eval_every`` and the last), so ASHA and Optuna never see a missing
validation score, and ASHA counts time in epochs trained (``EPOCHS_DONE``). Rungs (``grace_period``):
the first comes one epoch after class-balanced weighting switches on and, unless the search space sets
``asha_before_lr_drop``, one epoch after the first learning-rate drop; it is rounded up to an
evaluation epoch, so every rung (g, 3g, 9g, ...) falls on one.
With ``--pack K`` one Ray trial asks Optuna for K configurations, trains them as one pack (shared
batches and teacher forward), still with ``evaluate_test=False``, and tells each configuration its own
validation score as its own Optuna trial; ASHA is off for packs, since it would stop or keep all K
students on one number (``sweeps/packed.py``).
The study lives in the sweep folder (JournalStorage, file backend) or an RDB given by URL, so an
interrupted sweep resumes and a finished one can be extended with more trials. With object storage
the journal is a driver-local copy, fetched at the start and uploaded after the search.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from ...methods.registry import resolve_cb_epoch
from ...specs.search_spaces import SearchSpace
from ...specs import RunSpec, make_spec, with_pretrained
from ...storage import Location, push
from .packed import PackedOptunaSearch, per_config_events, search_pack_trial
from ..runner import _Events, Interrupted, plan_runs, run_plan, set_listener
from .study import (METRIC, JournalUpload, PrunedAwareOptunaSearch, counted_trials, enqueue_defaults, journal_location, make_sampler,
                    mark_interrupted_trials, open_study, study_storage)
from .trial import EPOCHS_DONE, search_report, search_spec  # noqa: F401  (EPOCHS_DONE: for callers)
from ..trial import FINISHED

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI reports progress itself

SCHEDULERS = ("auto", "asha", "sh", "none")  # auto: sh for a method whose schedule defers a part, else asha


@dataclass(frozen=True)
class SweepConfig:
    method: str
    dataset: str
    imbalance: float
    space_file: str
    space_hash: str
    sampler: str = "tpe"
    scheduler: str = "asha"
    seed: int = 0
    epochs: Optional[int] = None
    data_seed: int = 0
    split: str = "every-class"  # RunSpec.split of every trial and final run
    val_per_class: Optional[int] = None  # RunSpec.val_per_class: another validation split is another search
    data_key: Optional[str] = None  # RunSpec.data_key: another image folder is another search
    pretrained: Optional[str] = None  # RunSpec.pretrained: other starting weights are another search
    plugins: Optional[str] = None  # RunSpec.plugins, joined: an edited plugin method is another search
    rungs: Optional[tuple[int, ...]] = None  # successive halving (scheduler "sh"): the rungs' budgets in epochs
    eta: Optional[int] = None  # successive halving: the best 1/eta of a rung move up
    brackets: Optional[int] = None  # successive halving: Hyperband's first B brackets (None: one)
    model: Optional[str] = None  # RunSpec.model where --model chose another than the dataset's
    recipe: Optional[str] = None  # RunSpec.recipe where --recipe chose another than the dataset's

    @property
    def sweep_id(self) -> str:
        """Same search, same id (the trial count is not part of it, so more trials extend a sweep)."""
        identity = {k: v for k, v in asdict(self).items() if k != "space_file"}  # the content hash counts, not the path
        if identity["split"] == "reference":  # as every sweep made before the field existed: same id
            del identity["split"]
        for later in ("data_key", "pretrained", "plugins", "val_per_class", "rungs", "eta", "brackets", "model", "recipe"):  # None: as before these fields existed
            if identity[later] is None:
                del identity[later]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.method}-{self.dataset}-if{self.imbalance:g}-{digest}"


def space_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def sweep_dir(results: "Location | str", sweep_id: str) -> Location:
    return Location(results) / "sweeps" / sweep_id


def search_trial(config: dict, *, base: str, results: str, data_dir: Optional[str] = None,
                 sweep_id: Optional[str] = None) -> None:
    """One search trial: the base spec with the sampled parameters, validation only."""
    from ...training.train import TrainingDiverged, train  # noqa: F401  (TrainingDiverged propagates: FAIL)
    from ..execute import teacher_state_for
    from ..tracking import RunTracker, Tracking, tensorboard_dir
    from ..trial import use_resources

    # threads, the GPU share's memory cap, and the device (NoCudaDevice fails the trial at once)
    device = use_resources({"resources": {"cpu": config.get("_cpus", 1), "gpu": config.get("_gpus", 0)}})
    spec = search_spec(base, config)
    report = search_report(spec, tune.report)

    # Mirrored like every run (TensorBoard, --tracking), tagged as a search trial of its sweep; a trial
    # that ASHA stops is killed with its tracker run still open.
    tags = {"sweep_id": sweep_id, "sweep_role": "search"} if sweep_id else {"sweep_role": "search"}
    tracker = RunTracker(spec, tags, Tracking.from_env(), tensorboard_dir(results, tags))
    try:
        result = train(spec, report=tracker.wrap(report), evaluate_test=False, device=device,
                       teacher_state=teacher_state_for(spec, results), data_dir=Path(data_dir) if data_dir else None)
    except TrainingDiverged as exc:
        tracker.finish(None, status="failed")
        raise exc  # the trial errors: Optuna records FAIL (a report without the metric would stop Tune)
    tracker.finish({"val_top1": result.metrics.get("val_top1"), "train_seconds": result.train_seconds})


def grace_period(spec: RunSpec, space: Optional[SearchSpace] = None) -> int:
    """ASHA's first rung, in epochs trained: the latest of
    - one epoch after class-balanced weighting switches on (``cb_start``; the latest value the space
      searches, when it searches it), so no trial is judged before its method is active;
    - one epoch after the recipe's first learning-rate drop (step schedule), unless ``space`` sets
      ``asha_before_lr_drop``: validation accuracy jumps at the ×0.01 drop and the order of
      configurations there is not the order they end in;
    rounded up to an evaluation epoch (a multiple of the recipe's ``eval_every``; the last epoch always
    evaluates), so that this rung and every later one (×3) falls on an epoch with a validation score.
    Read from the parameters, not a method built for made-up class counts (class-subset KD's groups
    name real classes, and an image folder's class count is not known here)."""
    from ...specs.recipes import get_recipe

    starts = [spec.params.get("cb_start")]
    if space is not None and "cb_start" in space.params:
        starts += space.params["cb_start"].probe_values() + [space.params["cb_start"].high]
    rung = max([1] + [resolve_cb_epoch(c, spec.epochs) + 1 for c in starts if c is not None])
    recipe = get_recipe(spec.recipe)
    if recipe.schedule == "step" and not (space is not None and space.asha_before_lr_drop):
        rung = max(rung, recipe.milestones(spec.epochs)[1] + 1)
    every = recipe.eval_every
    rung = -(-rung // every) * every  # the next evaluation epoch
    return min(spec.epochs, rung)


def run_search(cfg: SweepConfig, space: SearchSpace, base: RunSpec, results: Path, *, trials: int,
               concurrency: int, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
               storage_url: Optional[str] = None, data_dir: Optional[Path] = None, on_event=None,
               pack: int = 1, workers: int = 1) -> optuna.Study:
    """Run search trials until the study holds ``trials`` completed or pruned ones; ``pack`` > 1
    trains that many configurations per Ray trial (no scheduler then); ``workers`` > 1 trains each
    trial's run on that many Ray Train workers (``sweeps/workers.py``; resources then per worker)."""
    if cfg.scheduler == "sh":
        if workers > 1:
            raise ValueError("successive halving trains one configuration per Ray trial: use --workers-per-trial 1")
        from .halving import run_halving

        return run_halving(cfg, space, base, results, trials=trials, concurrency=concurrency,
                           cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, storage_url=storage_url,
                           data_dir=data_dir, on_event=on_event, pack=pack, budgets=list(cfg.rungs), eta=cfg.eta,
                           brackets=cfg.brackets or 1)
    packed = pack > 1
    if packed and cfg.scheduler != "none":
        raise ValueError("packed search trials run without early stopping: use scheduler 'none' with pack > 1")
    if packed and workers > 1:
        raise ValueError("several workers per trial train one configuration each: use pack 1 with workers > 1")
    folder = sweep_dir(results, cfg.sweep_id)
    study = open_study(cfg.sweep_id, folder, storage_url)
    mark_interrupted_trials(study)
    remaining = trials - counted_trials(study)
    if remaining <= 0:
        return study
    sampler = make_sampler(cfg.sampler, cfg.seed, resumed=len(study.trials))  # a resume proposes new configurations
    distributions = space.optuna_space()
    enqueue_defaults(study, distributions, base.params)  # a new study's first trial
    searcher_args = dict(space=distributions, metric=METRIC, mode="max", sampler=sampler,
                         study_name=cfg.sweep_id, storage=study_storage(folder, storage_url))
    trial_fn, samples, events = search_trial, remaining, on_event
    if packed:
        searcher = PackedOptunaSearch(**searcher_args, pack=pack, budget=remaining)
        trial_fn, samples, events = search_pack_trial, math.ceil(remaining / pack), per_config_events(on_event)
    else:
        searcher = PrunedAwareOptunaSearch(**searcher_args)
    scheduler = None
    if cfg.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=EPOCHS_DONE, max_t=base.epochs,
                                  grace_period=grace_period(base, space), reduction_factor=3)
    resources, extra, callbacks = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}, {}, [_Events()]
    if not storage_url and not folder.is_local:
        callbacks.append(JournalUpload(folder))  # the bucket's journal keeps up with finished trials
    if workers > 1:
        from .workers import FreeStoppedGroups, search_trial_workers
        from ..workers import TRAIN_RUNS, concurrent_trials, driver_resources

        callbacks.append(FreeStoppedGroups())  # an ASHA-stopped trial's workers (sweeps/workers.py)
        trial_fn, extra = search_trial_workers, {"workers": workers, "train_storage": str(folder / TRAIN_RUNS)}
        concurrency = min(concurrency, concurrent_trials(workers, resources))
        resources = driver_resources(resources)  # the workers' CPUs and GPUs are Ray Train's (workers.py)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, base=base.canonical_json(), results=str(Location(results)),
                             data_dir=str(data_dir) if data_dir else None,
                             **({} if packed else {"sweep_id": cfg.sweep_id}), **extra),
        resources,
    )
    set_listener(events)
    attempt = sum(name.startswith("search-") for name in folder.list()) + 1
    tune_path, tune_fs = folder.tune_storage()
    tuner = tune.Tuner(
        trainable,
        param_space={"_cpus": cpus_per_trial, "_gpus": gpus_per_trial},
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                    scheduler=scheduler, num_samples=samples, metric=METRIC, mode="max",
                                    reuse_actors=workers == 1),  # a multi-worker trial's actor only waits on fit()
        run_config=tune.RunConfig(name=f"search-{attempt}", storage_path=tune_path, storage_filesystem=tune_fs,
                                  verbose=0, callbacks=callbacks),
    )
    try:
        grid = tuner.fit()
    finally:
        if not storage_url:
            push(journal_location(folder))  # object storage: the driver-local journal goes back
    unfinished = [r for r in grid if not (r.metrics or {}).get(FINISHED) and r.error is None
                  and not (r.metrics or {}).get("diverged")
                  and not (not packed and _stopped_by_scheduler(r, base.epochs))]  # no scheduler stops a pack
    study = open_study(cfg.sweep_id, folder, storage_url)
    if unfinished and counted_trials(study) < trials:
        raise Interrupted(f"{trials - counted_trials(study)} search trial(s) of {cfg.sweep_id} did not run")
    return study


def choose_scheduler(requested: str, base: RunSpec, space: Optional[SearchSpace] = None, *, pack: int = 1,
                     workers: int = 1) -> tuple[str, str]:
    """The scheduler a sweep runs and why. ``auto``: successive halving over compressed schedules
    ("sh") when the method's schedule switches a part on late (``Method.deferred_part``, also for the
    latest ``cb_start`` a space searches), since early stopping cannot judge such a run before then;
    ASHA otherwise (no early stopping for packs, no halving for multi-worker trials)."""
    from ...methods import method_class

    if requested != "auto":
        return requested, "as asked"
    params = dict(base.params)
    if space is not None and "cb_start" in space.params:
        params["cb_start"] = max((space.params["cb_start"].high, *space.params["cb_start"].probe_values()),
                                 key=lambda c: resolve_cb_epoch(c, base.epochs))
    part = method_class(base.method).deferred_part(params, base.epochs)
    if part and workers == 1:
        return "sh", f"{part}: early stopping cannot judge a run before then, a compressed schedule can"
    if pack > 1:
        return "none", "packs run without early stopping" + (f" ({part}; no halving with several workers)" if part else "")
    if part:
        return "asha", f"{part}, but successive halving does not run multi-worker trials"
    return "asha", "no part of the schedule switches on late, so early stopping can judge every epoch"


def _stopped_by_scheduler(result, epochs: int) -> bool:
    # A trial ASHA stopped reported at least one epoch and then ended without FINISHED.
    return bool(result.metrics) and "epoch" in result.metrics and result.metrics["epoch"] < epochs - 1


def final_specs(base: RunSpec, params: dict, seeds: int, data_dir: Optional[Path] = None) -> list[RunSpec]:
    """The configuration re-run for the test set with seeds 0..seeds-1 (from the base's weights)."""
    return [with_pretrained(make_spec(base.dataset, base.imbalance_factor, base.method, seed=s, data_seed=base.data_seed,
                                      profile=base.profile, model=base.model, recipe=base.recipe, epochs=base.epochs,
                                      params=params, data_dir=data_dir, image_size=base.image_size, split=base.split,
                                      val_per_class=base.val_per_class),
                            base.pretrained)
            for s in range(seeds)]


def run_finals(base: RunSpec, best_params: dict, results: Path, sweep_id: str, seeds: int,
               outcome: Optional[dict] = None, **kwargs) -> dict:
    """Re-run the best configuration (tagged with the sweep id) and the defaults, ``seeds`` each;
    returns their run ids. ``outcome`` (a dict) receives each trained run's outcome (``run_plan``)."""
    defaults = final_specs(base, {}, seeds, kwargs.get("data_dir"))
    tuned = final_specs(base, best_params, seeds, kwargs.get("data_dir"))
    default_ids = {s.run_id for s in defaults}
    outcome = {} if outcome is None else outcome
    for specs, tags in ((defaults, {}), ([s for s in tuned if s.run_id not in default_ids], {"sweep_id": sweep_id})):
        plan = plan_runs(specs, results)
        if plan.todo:
            outcome.update(run_plan(plan, results, name=f"{sweep_id}-final", tags=tags, **kwargs))
    return {"tuned": [s.run_id for s in tuned], "default": [s.run_id for s in defaults]}


def save_sweep_record(results: "Location | str", cfg: SweepConfig, record: dict) -> Location:
    path = sweep_dir(results, cfg.sweep_id) / "sweep.json"
    path.write_text(json.dumps({"config": asdict(cfg), "sweep_id": cfg.sweep_id, **record}, indent=2, sort_keys=True))
    return path


def load_sweep_record(results: "Location | str", sweep_id: str) -> dict:
    try:
        return json.loads((sweep_dir(results, sweep_id) / "sweep.json").read_text())
    except FileNotFoundError:
        sweeps = Location(results) / "sweeps"
        known = [name for name in sweeps.list() if (sweeps / name / "sweep.json").exists()]
        raise ValueError(f"no finished sweep {sweep_id!r} in {sweeps}"
                         + (f"; known: {', '.join(known)}" if known else "")) from None
