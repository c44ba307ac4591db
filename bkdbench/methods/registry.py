"""Method registry, the `Method` base class and helpers shared by every loss.

A method bundles a training loss with what the rest of the benchmark must know about it: the
classifier head it expects, the sampler, whether it needs a teacher, and how its logits are turned
into predictions. Each family lives in its own module and registers itself with `@register(name)`.

Parameter names are shared by the CLI, the YAML suites and the leaderboard columns: `alpha`,
`temperature`, `beta`, `gamma`, `max_m`, `s`, `tau`, `cb_start`, plus a few method-specific knobs.

`cb_start` (deferred class-balanced weighting) is a float read two ways:
  * a value < 1 is a fraction of the epoch budget given to `build`: cb_epoch = round(cb_start * epochs);
  * a value >= 1 is an absolute 0-based epoch index (it must be a whole number).
Class-balanced weighting is active when `epoch >= cb_epoch`. The reference's "switch at epoch 160 of
200" is cb_start=0.8 (or cb_start=160). The resolved epoch is the method's `cb_epoch` attribute.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence
from typing import Any, Callable, ClassVar, Optional

import torch
from pydantic import ValidationError

from bkdbench.methods.params import MethodParams, explain_validation_error


class MethodError(ValueError):
    """A user-facing problem with a method name, its parameters or its inputs."""


# ---------------------------------------------------------------- shared helpers


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. (2019) weights w_j = (1 - beta) / (1 - beta^n_j), rescaled so sum_j w_j = C.

    beta = 0 gives all ones; beta -> 1 approaches inverse frequency. Returns float32 on the CPU.
    """
    if not 0 <= beta < 1:
        raise MethodError(f"class_balanced_weights: beta must be in [0, 1) (got {beta!r})")
    return _class_balanced_weights64(torch.as_tensor(class_counts), beta).to(torch.float32)


def _class_balanced_weights64(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    n = class_counts.detach().cpu().to(torch.float64)
    # 1 - beta^n via expm1 keeps precision when beta is close to 1; log(0) = -inf gives 1 for beta = 0.
    effective_num = -torch.expm1(n * torch.log(torch.tensor(beta, dtype=torch.float64)))
    w = (1.0 - beta) / effective_num
    return w * (len(n) / w.sum())


def resolve_cb_epoch(cb_start: float, epochs: int) -> int:
    """First epoch (0-based) with class-balanced weighting; see the module docstring."""
    return int(round(cb_start * epochs)) if cb_start < 1 else int(cb_start)


def _counts_tensor(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts).detach().cpu()
    if counts.ndim != 1 or counts.numel() == 0:
        raise MethodError(f"class_counts must be a non-empty 1-D sequence (got shape {tuple(counts.shape)})")
    if counts.is_floating_point() and not torch.equal(counts, counts.round()):
        raise MethodError("class_counts must be whole numbers")
    counts = counts.to(torch.int64)
    if (counts < 1).any():
        bad = [i for i, n in enumerate(counts.tolist()) if n < 1]
        raise MethodError(f"every class needs at least one training example; classes {bad} have none")
    return counts


# ---------------------------------------------------------------- base class


class Method:
    """Base class: a loss for the training step plus the logits used at prediction time.

    Subclasses set `Params` and override `loss`; per-class constants are computed once on the CPU
    in float64 (`_constants`) and copied to the logits' device/dtype on first use, then cached.
    """

    name: ClassVar[str] = ""
    head: ClassVar[str] = "linear"  # "linear" or "cosine"
    sampler: ClassVar[str] = "instance"  # "instance" or "class-balanced"
    needs_teacher: ClassVar[bool] = False
    # The method of the default teacher (a run of the same model, data, recipe and seed): CE for KD and
    # BKD, Balanced Softmax for DiVE. Runs of a teacher method keep their weights for the students.
    teacher_method: ClassVar[str] = "ce"
    # The loss also receives the penultimate features (``features=``) and, with teachers, theirs
    # (``teacher_features=``); several teachers arrive stacked: logits K×B×C_k as a list, features K×B×D.
    uses_features: ClassVar[bool] = False
    # The teacher is this run's starting point (decoupled classifiers, SSD-LT stage II): ``prepare``
    # loads it into the model instead of it being run as a frozen distillation target.
    stage1: ClassVar[bool] = False
    trains: ClassVar[bool] = True  # False: no epochs at all (τ-norm only changes the stage-1 classifier)
    drop_last: ClassVar[bool] = False  # skip each epoch's last partial batch (SSD-LT's fixed-size queue)
    views: ClassVar[int] = 1  # 2: the loader also yields ``second_view`` of each batch (SSD-LT stage I)
    # True: the loader adds SimCLR colour jitter to every training batch (augment.simclr_color_jitter);
    # set per run from a method parameter (CBD's jittered teachers, ``ce-cosine20``'s ``color_jitter``).
    color_jitter: bool = False
    Params: ClassVar[type[MethodParams]] = MethodParams
    # Parameters that place a part of the schedule in epochs, read like ``cb_start`` (< 1 a fraction of
    # the budget, >= 1 an epoch): a compressed schedule (successive halving's short rungs) rescales them.
    epoch_params: ClassVar[tuple[str, ...]] = ("cb_start",)

    @classmethod
    def deferred_part(cls, params: dict, epochs: int) -> Optional[str]:
        """Why this run's schedule switches a part of the method on after the start (class-balanced
        weighting at ``cb_start``, DRW), or None: early stopping cannot judge such a run before that
        epoch, so a sweep prefers successive halving over compressed schedules for it."""
        if "cb_start" not in cls.Params.model_fields or params.get("cb_start") is None:
            return None
        epoch = resolve_cb_epoch(params["cb_start"], epochs)
        if epoch <= 0:
            return None
        return f"class-balanced weighting switches on at epoch {epoch} of {epochs} (cb_start {params['cb_start']:g})"

    # ------------------------------------------------ hooks (defaults: a plain single-model loss)

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                   epoch: int, teacher=None, autocast: Optional[torch.dtype] = None, views: Sequence = ()) -> torch.Tensor:
        """One optimisation step on a prepared batch; returns the loss, detached, without a host sync.
        The default is the plain step every loss shares (forward, teacher forward, ``loss``, backward,
        step); a method with an unusual step (two views, a momentum encoder, two heads) owns it here."""
        from bkdbench.methods.step import plain_step

        return plain_step(model, optimizer, self, x, y, epoch=epoch, teacher=teacher, autocast=autocast)

    def second_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """For ``views == 2``: another augmentation of the batch's uint8 images (same shape, uint8)."""
        raise NotImplementedError(f"{self.name} declares {self.views} views but makes no second one")

    def prepare(self, model: torch.nn.Module, stage1_state: dict) -> list[torch.nn.Parameter]:
        """For ``stage1`` methods: load the stage-1 weights, freeze what stays fixed; return what trains."""
        raise NotImplementedError(f"{self.name} is not a stage-2 method")

    def set_train_mode(self, model: torch.nn.Module) -> None:
        """Called at the start of every epoch; stage-2 methods keep their frozen parts in eval mode."""
        model.train()

    def finalize(self, model: torch.nn.Module, validate: Callable[[], float]) -> dict:
        """After the last epoch: a last change to the model (τ-norm's τ, chosen with ``validate()``,
        the validation top-1); returns what it chose, for the row's ``extra`` column."""
        return {}

    def report_heads(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Other heads whose last-epoch accuracy goes into ``extra`` next to the headline
        (``eval_model``): e.g. SSD-LT's hard head."""
        return {}

    @classmethod
    def restructure(cls, model: torch.nn.Module) -> None:
        """Give a freshly built model this method's finished shape (e.g. LWS's scaled classifier), so
        that a run's saved weights load into it, as a teacher of another run."""

    @classmethod
    def resolve_for_data(cls, params: dict, shots: Callable[[], dict[str, list[int]]]) -> dict:
        """Parameters made explicit for one long-tailed set (``shots()`` gives its many/medium/few classes)."""
        return params

    @classmethod
    def resolve_for_model(cls, params: dict, model: str, given: dict) -> dict:
        """Parameters whose authors' default depends on the model (DKD's β by student); ``given``: what
        the user set, which always wins."""
        return params

    @classmethod
    def recipe_for(cls, recipe: str, params: dict) -> str:
        """The recipe this method trains under when a run names ``recipe`` (DiVE: the same recipe with its
        authors' milestones); a teacher made for the run gets the same."""
        return recipe

    @classmethod
    def teacher_specs(cls, base: Any, params: dict) -> Optional[list]:
        """The RunSpecs of several teachers, derived from ``base`` (the default CE teacher); None = ``base`` alone."""
        return None

    def attach(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Add the method's own trainable modules onto the model (so they are saved and moved with it);
        returns their parameters for the optimizer."""
        return []

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose output is used for prediction; the model itself by default."""
        return model

    def state_dict(self) -> dict:
        """Training state the method keeps between steps (checkpointed with the model)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, params: MethodParams, *, epochs: int = 200):
        self.class_counts = _counts_tensor(class_counts)
        self.num_train = int(self.class_counts.sum())  # a Python int, read in steps without a host sync
        self.params = params
        self.epochs = epochs
        self.batch_size: Optional[int] = None  # the recipe's, set by ``build`` (SSD-LT sizes its queue by it)
        self._constants: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        fields = type(params).model_fields
        if "beta" in fields:
            self._constants["cb"] = _class_balanced_weights64(self.class_counts, params.beta)
        if "cb_start" in fields:
            self.cb_epoch = resolve_cb_epoch(params.cb_start, epochs)

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, epoch: int = 0,
             teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits used for prediction and probability metrics (NLL, ECE); identity by default."""
        return logits

    def to(self, device: torch.device | str) -> Method:
        """Move the class counts; per-class constants follow the logits' device lazily anyway."""
        self.class_counts = self.class_counts.to(device)
        return self

    def constant(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """The per-class constant `key` on `like`'s device and dtype, copied once and cached."""
        slot = (key, like.device, like.dtype)
        if slot not in self._cache:
            self._cache[slot] = self._constants[key].to(device=like.device, dtype=like.dtype)
        return self._cache[slot]

    def cb_weights(self, like: torch.Tensor, epoch: int | None = None) -> torch.Tensor | None:
        """Class-balanced weights (from `beta`) on `like`'s device; None before `cb_epoch`.

        With `epoch=None` the weights are returned unconditionally (no schedule).
        """
        if epoch is not None and epoch < self.cb_epoch:
            return None
        return self.constant("cb", like)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}<{self.name}>({args})"


def float_logits(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least float32: half-precision softmax/log loses the tail classes."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: register a `Method` subclass under `name` (and set its `name`)."""

    def decorate(cls: type[Method]) -> type[Method]:
        known = _REGISTRY.get(name)
        if known is not None and known is not cls and _where(known) != _where(cls):
            raise MethodError(f"method '{name}' is already registered by {_where(known)}; {_where(cls)} registers "
                              "it again: choose another name")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _where(obj) -> str:
    """``module.Class (file)``: where a registered part was defined, for a clash's message."""
    import inspect

    try:
        file = inspect.getsourcefile(obj) or "?"
    except TypeError:
        file = "?"
    return f"{obj.__module__}.{obj.__qualname__} ({file})"


def _plugins_on_miss() -> bool:
    """In a Ray trial, an unknown name may be a forwarded plugin's: import them and look again."""
    from bkdbench.plugins import import_on_miss

    return import_on_miss()


def teacher_methods() -> set[str]:
    """The methods whose runs serve as some registered method's default teacher (their weights are kept)."""
    # plus the foundation methods that train a classifier (``keeps_weights``): any of them may be a ``--teacher``
    return ({cls.teacher_method for cls in _REGISTRY.values() if cls.needs_teacher}
            | {name for name, cls in _REGISTRY.items() if getattr(cls, "keeps_weights", False)})


def names() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered under `name`; a MethodError lists the valid names otherwise."""
    if isinstance(name, str) and name not in _REGISTRY and _plugins_on_miss():
        return method_class(name)
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise MethodError(f"unknown method {name!r}{hint} (valid: {', '.join(names())})") from None


def _validated(name: str, params: dict[str, Any]) -> tuple[type[Method], MethodParams]:
    cls = method_class(name)
    try:
        return cls, cls.Params.model_validate(params)
    except ValidationError as err:
        raise MethodError(explain_validation_error(name, cls.Params, err)) from None


def validate_params(name: str, **params: Any) -> dict[str, Any]:
    """All of `name`'s parameters, defaults filled in and validated, as plain JSON-able values."""
    return _validated(name, params)[1].model_dump()


def build(name: str, class_counts: Sequence[int] | torch.Tensor, *, epochs: int = 200, batch_size: Optional[int] = None,
          **params: Any) -> Method:
    """Construct method `name` for a training set with `class_counts`, an `epochs` budget and (for the
    methods that size something by it) the recipe's `batch_size`."""
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise MethodError(f"{name}: epochs must be a positive integer (got {epochs!r})")
    cls, checked = _validated(name, params)
    method = cls(class_counts, checked, epochs=int(epochs))
    method.batch_size = batch_size
    return method
