"""Training losses and prediction rules for long-tailed classification, looked up by name.

    from bkdbench.methods import build
    method = build("bkd", class_counts, epochs=200, cb_start=0.8)
    loss = method.loss(student_logits, y, epoch=e, teacher_logits=teacher_logits)
    preds = method.eval_logits(student_logits).argmax(-1)

Each family registers itself in its own module; importing them here fills the registry.
"""

from bkdbench.methods import (  # noqa: F401  (registration)
    breadcrumb, cbd, cbd_linear, ce, ce_cosine, decoupled, distill, dive, dkd, focal, full_ft, ldam, lift, linear_probe, prior,
    reweight, sigmoid, ssd_lt, subset_kd, zero_shot,
)
from bkdbench.methods.registry import (
    Method,
    MethodError,
    build,
    class_balanced_weights,
    method_class,
    names,
    register,
    teacher_methods,
    validate_params,
)

__all__ = [
    "Method",
    "MethodError",
    "build",
    "class_balanced_weights",
    "method_class",
    "names",
    "register",
    "teacher_methods",
    "validate_params",
]
