"""The Optuna side of a sweep: the objective's name, samplers, the study's storage (a journal in the
sweep folder, or an RDB URL), and the searcher that tells Optuna the truth about pruned and failed
trials. ``driver`` and ``packed`` both build on it."""
from __future__ import annotations

from typing import Optional

import numpy as np
import optuna
from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from ...storage import Location, pull, push
from ..trial import FINISHED

METRIC = "val_top1"  # sweeps optimise balanced validation top-1, never a test number
SAMPLERS = ("tpe", "gp", "cmaes", "random")
DEFAULTS = "defaults"  # user attribute of the trial that trains the method's default parameters


def enqueue_defaults(study: optuna.Study, distributions: dict, params: dict) -> dict:
    """A new study's first trial: the method's defaults (those inside the space; the sampler picks
    the rest), so the search's best on validation is never a configuration the defaults beat there.
    A 16-trial TPE search of BKD on the CIFAR-10 CPU recipe sampled nothing near them (α 1, T 2) and
    chose one that scored 4.7 points below them on 2,000 validation images and 4.6 on the test set.
    A study that holds trials already (a resume, a sweep begun before this) is left as it is.
    Returns the parameters enqueued."""
    if study.get_trials(deepcopy=False):
        return {}
    inside = {k: v for k, v in params.items() if k in distributions and _contains(distributions[k], v)}
    if inside:
        study.enqueue_trial(inside, user_attrs={DEFAULTS: True})
    return inside


def _contains(distribution, value) -> bool:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high


def make_sampler(name: str, seed: int, resumed: int = 0):
    """The sweep's sampler. A driver that resumes a study holding ``resumed`` trials seeds it from
    (seed, resumed): seeded as the first driver was, it proposed that driver's configurations again
    (TPE's random start-up replays its generator), and they were trained twice; a resumed 16-trial
    CIFAR-10 sweep retrained its 4 finished configurations so. A first driver keeps ``seed`` itself."""
    if resumed:
        seed = int(np.random.SeedSequence([seed, resumed]).generate_state(1)[0])
    if name == "tpe":  # constant liar: parallel trials do not all pile onto the same point
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def open_study(sweep_id: str, folder: Location, storage_url: Optional[str] = None) -> optuna.Study:
    return optuna.create_study(study_name=sweep_id, storage=study_storage(folder, storage_url),
                               direction="maximize", load_if_exists=True)


def study_storage(folder: Location, storage_url: Optional[str] = None):
    if storage_url:
        return storage_url  # e.g. postgresql://... for many nodes; never SQLite with parallel writers
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # The journal is a local file: in the sweep folder, or for object storage a driver-local copy
    # fetched from it (run_search uploads it back).
    journal = pull(journal_location(folder))
    journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal)))


def journal_location(folder: Location) -> Location:
    return Location(folder) / "study.journal"


class JournalUpload(tune.Callback):
    """Uploads the driver-local journal of a sweep on object storage each time trials end (on the
    controller's next step, after the searcher has told Optuna the outcome). Without it the bucket
    saw the journal only when ``fit`` returned: a driver killed mid-sweep lost every finished trial
    there, and a resume -- on another machine, or here, where ``pull`` trusts the bucket -- trained
    them again."""

    def __init__(self, folder: Location):
        self.journal, self.dirty = journal_location(folder), False

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.dirty = True

    def on_trial_error(self, iteration, trials, trial, **info):
        self.dirty = True

    def on_step_end(self, iteration, trials, **info):
        if self.dirty:
            self.dirty = False
            push(self.journal)


def optuna_step(result: dict) -> int:
    """The step of an intermediate value in the study: epochs trained. Ray's OptunaSearch uses Tune's
    report count, which is the k-th evaluation when a recipe validates every few epochs."""
    return int(result["epoch"]) + 1 if "epoch" in result else int(result[TRAINING_ITERATION])


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials that did not run to the end: stopped
    by the scheduler → PRUNED; diverged or errored → FAIL; only finished trials are COMPLETE.
    Intermediate values are recorded at their epoch (``optuna_step``)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or result.get(METRIC) is None:
            return
        self._ot_trials[trial_id].report(result[METRIC], optuna_step(result))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result and "epoch" in result:  # how much training the trial cost (what ASHA saved)
            self._ot_trials[trial_id].set_user_attr("epochs_trained", int(result["epoch"]) + 1)
        if not error and result and result.get(FINISHED) and result.get(METRIC) is not None:
            return super().on_trial_complete(trial_id, result, error)
        failed = error or bool(result and result.get("diverged"))
        if not failed and result and result.get(METRIC) is not None:
            # Tune skips the searcher's on_trial_result for the result its scheduler stops a trial on:
            # record that last value here, at its epoch, or a trial stopped at its first rung has none
            trial = self._ot_trials[trial_id]
            if optuna_step(result) not in trial.storage.get_trial(trial._trial_id).intermediate_values:
                trial.report(result[METRIC], optuna_step(result))
        state = optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


def mark_interrupted_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by an interrupted driver become FAIL, so their numbers stay in the
    record and new trials get new numbers."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def counted_trials(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))
