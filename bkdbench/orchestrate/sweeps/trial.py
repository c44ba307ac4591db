"""What one search trial trains and tells Tune, with one worker (``driver.search_trial``) or several
(``workers``): the base spec with Optuna's sample, and reports on evaluation epochs only."""
from __future__ import annotations

from ...specs import RunSpec
from .study import METRIC
from ..trial import FINISHED

EPOCHS_DONE = "epochs_done"  # ASHA's time attribute: epochs trained when the result was reported


def search_spec(base: str, config: dict) -> RunSpec:
    """The base spec (JSON) with the parameters Optuna sampled (``config`` less its ``_`` keys)."""
    from ...methods import validate_params

    spec = RunSpec.model_validate_json(base)
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}
    return spec.model_copy(update={"params": validate_params(spec.method, **{**spec.params, **sampled})})


def search_report(spec: RunSpec, send):
    """``report(metrics, make_checkpoint)`` for ``train``: on evaluation epochs only, ``send`` the
    validation score, the epoch and ``EPOCHS_DONE`` (and ``FINISHED`` on the last); no checkpoints
    (an interrupted search trial is FAIL and sampled anew, study.mark_interrupted_trials)."""
    def report(metrics: dict, _make_checkpoint) -> None:
        if metrics.get(METRIC) is None:
            return  # not an evaluation epoch: nothing for ASHA or Optuna to judge (rungs sit on evaluations)
        out = {METRIC: metrics[METRIC], "train_loss": metrics["train_loss"], "epoch": metrics["epoch"],
               EPOCHS_DONE: metrics["epoch"] + 1}
        if metrics["epoch"] == spec.epochs - 1:
            out[FINISHED] = True  # part of the last epoch's report: ASHA stops trials at max_t
        send(out)

    return report
