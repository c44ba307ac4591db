"""Class-subset multi-teacher distillation (Ju et al., 2021): one expert teacher per class subset.

The classes are split into groups (by default many / medium / few by training count); teacher g is a
plain CE model trained on group g's images only, so it sees a much less imbalanced problem than a
teacher of all classes, and predicts only its own k_g classes. The student learns from all of them
at once: on a sample of group g it matches teacher g's softened distribution over g's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from bkdbench.methods.params import Alpha, Beta, MethodParams, Temperature
from bkdbench.methods.registry import Method, MethodError, float_logits, register

SHOTS = "shots"
_SHOT_ORDER = ("many", "medium", "few")


def parse_groups(text: str) -> list[list[int]]:
    """ "0,1,2|3,4|5,6" -> [[0, 1, 2], [3, 4], [5, 6]]; raises ValueError on a malformed grouping."""
    groups = []
    for part in text.split("|"):
        try:
            group = [int(c) for c in part.split(",")]
        except ValueError:
            raise ValueError(f"must be 'shots' or class ids like '0,1,2|3,4|5,6' "
                             f"(bad group {part.strip()!r})") from None
        groups.append(group)
    flat = [c for g in groups for c in g]
    if min(flat) < 0:
        raise ValueError("must list class ids >= 0")
    twice = sorted({c for c in flat if flat.count(c) > 1})
    if twice:
        raise ValueError(f"must put each class in exactly one group (classes {twice} appear more than once)")
    lone = [g for g in groups if len(g) < 2]
    if lone:
        # One class: the teacher's distribution is always [1] and so is the student's restriction: KL = 0.
        raise ValueError(f"must have at least 2 classes per group (one-class groups {lone} distil nothing)")
    return groups


def format_groups(groups: Sequence[Sequence[int]]) -> str:
    return "|".join(",".join(str(int(c)) for c in g) for g in groups)


def _canonical_groups(value: str) -> str:
    value = "".join(value.split())  # spaces never change the grouping, so they never change the run id
    return value if value == SHOTS else format_groups(parse_groups(value))


Groups = Annotated[
    str,
    Field(description="'shots' (many/medium/few by training count) or class ids per group, e.g. '0,1|2,3|4,5'"),
    AfterValidator(_canonical_groups),
]


class SubsetKDParams(MethodParams):
    alpha: Alpha = 1.0
    temperature: Temperature = 2.0
    groups: Groups = SHOTS
    weighting: Literal["subset", "instance", "class-balanced"] = "subset"
    beta: Beta = 0.9999  # only read by weighting="class-balanced"


def shot_groups(shots: dict[str, list[int]]) -> list[list[int]]:
    """The many / medium / few lists as groups: empty ones dropped, a one-class group merged into the
    next group toward the tail (into the previous one when it is the last)."""
    groups = [list(shots[k]) for k in _SHOT_ORDER if shots.get(k)]
    while len(groups) > 1 and any(len(g) == 1 for g in groups):
        i = next(i for i, g in enumerate(groups) if len(g) == 1)
        j = i + 1 if i + 1 < len(groups) else i - 1
        groups[min(i, j)] = groups[min(i, j)] + groups[max(i, j)]  # keeps the classes in head-to-tail order
        del groups[max(i, j)]
    return groups


def check_partition(groups: list[list[int]], num_classes: int) -> None:
    """Every class 0..C-1 in exactly one group (duplicates are refused when parsing)."""
    flat = {c for g in groups for c in g}
    outside = sorted(c for c in flat if c >= num_classes)
    if outside:
        raise MethodError(f"subset-kd: groups name classes {outside}, but the data has classes 0..{num_classes - 1}")
    missing = sorted(set(range(num_classes)) - flat)
    if missing:
        raise MethodError(f"subset-kd: groups leave out classes {missing}; every class 0..{num_classes - 1} must be "
                          "in exactly one group (or use groups: shots)")


@register("subset-kd")
class SubsetKD(Method):
    """Class-subset multi-teacher distillation (Ju et al., 2021).

    Notation: z the student's logits (B×C), y the labels, groups G_1..G_m a partition of the classes,
    t_g teacher g's logits (B×|G_g|, columns in G_g's order), g(i) the group of y_i, T the temperature.
    Per sample, against its own group's teacher only,
        KL_i = KL(softmax(t_{g(i)}[i] / T) || softmax(z[i, G_{g(i)}] / T)),
    where z[i, G] keeps G's columns, so the student's distribution is restricted to the group and
    renormalised. The loss is
        CE(z, y) + alpha * T^2 * sum_i v_i * KL_i,
    CE plain (instance-balanced, as in BKD) and the per-sample weights v_i set by ``weighting``:
      * "subset" (default): v_i = 1 / (m_B * n_{g(i)}), n_g the batch's samples of group g and m_B the
        groups present in the batch: each group's KL is averaged over its own samples, then the groups
        are averaged. Every expert counts equally, so the few-shot expert is not drowned by the
        head's samples (on CIFAR-10-LT IF 100 the many-shot group holds 99% of the images), which is
        the reason for training experts on balanced subsets in the first place. The price: a rare
        group's few samples carry large per-sample weights, so that term is noisier.
      * "instance": v_i = 1 / B, the plain batch mean (Hinton's KD reduction); groups count by size.
      * "class-balanced": v_i = w_{y_i} / sum_k w_{y_k}, w the Cui et al. weights from ``beta``, as in
        PyTorch's weighted CE.
    The paper's exact weighting is not published as code: "subset" is bkdbench's interpretation.

    ``groups="shots"`` is turned into explicit class lists by ``make_spec`` from the data's training
    counts and shot thresholds (empty groups dropped, a one-class group merged into the next group
    toward the tail, the last into the one before); a user grouping "0,1|2,3|..." must list every
    class exactly once, with at least 2 classes a group. ``groups`` and ``weighting`` are set in a suite
    file's method params (``bkdbench train`` has options for alpha and temperature only).
    One group is allowed: it is KD from one CE teacher (with the identity order, the usual one).
    Defaults alpha=1, temperature=2 (those of kd and bkd), groups="shots",
    weighting="subset", beta=0.9999.
    """

    Params = SubsetKDParams
    needs_teacher = True
    head = "linear"
    sampler = "instance"

    @classmethod
    def resolve_for_data(cls, params: dict, shots: Callable[[], dict[str, list[int]]]) -> dict:
        split = shots()
        if params["groups"] == SHOTS:
            return {**params, "groups": format_groups(shot_groups(split))}
        check_partition(parse_groups(params["groups"]), sum(len(v) for v in split.values()))
        return params

    @classmethod
    def teacher_specs(cls, base, params: dict) -> list:
        groups = parse_groups(params["groups"]) if params["groups"] != SHOTS else None
        if groups is None:
            raise MethodError("subset-kd: groups='shots' must be resolved for the data first (make_spec does it)")
        everything = list(range(sum(len(g) for g in groups)))
        # One group in label order is the ordinary CE teacher: share it instead of training a copy.
        return [base if g == everything else type(base).model_validate({**base.model_dump(), "train_classes": tuple(g)})
                for g in groups]

    def __init__(self, class_counts, params: SubsetKDParams, *, epochs: int = 200):
        super().__init__(class_counts, params, epochs=epochs)
        self.groups: list[list[int]] | None = None  # None until "shots" is resolved for the data
        self._index_cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        if params.groups == SHOTS:
            return
        groups = parse_groups(params.groups)
        check_partition(groups, self.num_classes)
        self.groups = groups
        group_of_class = torch.empty(self.num_classes, dtype=torch.int64)
        for g, classes in enumerate(groups):
            group_of_class[classes] = g
        self._indices = {"group_of_class": group_of_class,
                         **{f"group{g}": torch.tensor(classes) for g, classes in enumerate(groups)}}

    def index(self, key: str, device: torch.device) -> torch.Tensor:
        """An index tensor on ``device``, copied once and cached (``constant`` would cast it to float)."""
        slot = (key, device)
        if slot not in self._index_cache:
            self._index_cache[slot] = self._indices[key].to(device)
        return self._index_cache[slot]

    def per_sample_kl(self, logits: torch.Tensor, targets: torch.Tensor,
                      teacher_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL_i against each sample's own group's teacher (B), group id of each sample (B))."""
        T = self.params.temperature
        member = self.index("group_of_class", logits.device)[targets]
        kl = torch.zeros_like(logits[:, 0])
        for g, t in enumerate(teacher_logits):
            # Every teacher sees every image (one batched forward); rows of other groups are masked out,
            # without boolean indexing, so the step never waits on the device.
            student = F.log_softmax(logits.index_select(1, self.index(f"group{g}", logits.device)) / T, dim=-1)
            q = F.softmax(t.detach().to(logits.dtype) / T, dim=-1)
            kl_g = F.kl_div(student, q, reduction="none").sum(dim=-1)
            kl = torch.where(member == g, kl_g, kl)
        return kl, member

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        if self.groups is None:
            raise MethodError("subset-kd: groups='shots' must be resolved for the data before training: build the "
                              "run with make_spec, or give explicit groups like '0,1,2|3,4|5,6'")
        several = teacher_logits is not None and not isinstance(teacher_logits, torch.Tensor)
        if not several or len(teacher_logits) != len(self.groups):
            raise MethodError(f"subset-kd: needs teacher_logits as a list of {len(self.groups)} tensors, one per group "
                              "in group order (teacher g predicts only group g's classes)")
        z = float_logits(logits)
        for g, (t, classes) in enumerate(zip(teacher_logits, self.groups)):
            if t.shape != (z.shape[0], len(classes)):
                raise MethodError(f"subset-kd: teacher {g} gave logits of shape {tuple(t.shape)}; expected "
                                  f"{(z.shape[0], len(classes))} (batch × the group's {len(classes)} classes)")
        kl, member = self.per_sample_kl(z, targets, teacher_logits)
        weighting = self.params.weighting
        if weighting == "instance":
            distill = kl.mean()
        elif weighting == "class-balanced":
            w = self.cb_weights(z)[targets]
            distill = (w * kl).sum() / w.sum()
        else:  # "subset": mean within each group present in the batch, then mean over those groups
            m = len(self.groups)
            sums = torch.zeros(m, dtype=z.dtype, device=z.device).index_add_(0, member, kl)
            counts = torch.zeros(m, dtype=z.dtype, device=z.device).index_add_(0, member, torch.ones_like(kl))
            present = counts > 0
            distill = (sums / counts.clamp_min(1)).sum() / present.sum().clamp_min(1)
        T = self.params.temperature
        return F.cross_entropy(z, targets) + (self.params.alpha * T * T) * distill
