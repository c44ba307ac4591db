"""The sigmoid family: per-class binary cross-entropy instead of softmax, as Cui et al.'s class-balanced
losses and Ren et al.'s Balanced Sigmoid train it.

All four treat the C outputs as C one-vs-rest logits z_j and train them on one-hot targets t:

    BCE_ij = softplus(z_ij) - t_ij * z_ij  (= -t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)))
    loss   = (1/B) * sum_i a_i * sum_j m_ij * BCE_ij

with a_i = 1 (sigmoid, balanced-sigmoid) or the class-balanced weight w_{y_i} (cb-sigmoid, cb-focal), and
m_ij = 1 or the focal modulator (cb-focal). The divisor B is the number of positive targets, which is
the batch size for one-hot targets: Cui's code divides by the count of positive labels, BALMS's
detection head by the number of proposals; in classification both are B. The class weights are NOT
renormalised by the batch (PyTorch's weighted CE divides by sum_i w_{y_i}; Cui's sigmoid code does not).

Classifier bias. Each of the four starts the head's bias at -log((1 - pi) / pi) with pi = 1/C, the
prior a sigmoid classifier needs so that its C one-vs-rest outputs start near the 1/C of a
classification problem rather than near 1/2 (a loss dominated by C - 1 negatives). Cui et al.'s code
(`model_base._fully_connected`) writes it as -log(C - 1), which is this with pi = 1/C — the paper's
"pi = 0.1" on CIFAR-10, and 0.01 on CIFAR-100. BALMS reads a `PRIOR_PROB` from its config (0.001 for
LVIS's 1,230 classes, about 1/C); bkdbench uses 1/C for Balanced Sigmoid too. The bias is set in
`attach`, i.e. on every freshly built model, also over the classifier of a `--pretrained` file; a
resumed run or a teacher then loads its own saved bias over it. Packed students are built without
`attach`, so these methods are never packed. Not followed: Cui's code leaves
the last layer's bias out of weight decay and draws the kernel with TF's Glorot default (BALMS:
normal, std 0.01); bkdbench's recipe decays every parameter and keeps the model's own kernel init.

Probabilities (ECE, NLL): one rule for all four — the normalised sigmoid scores
p_j = sigmoid(z_j) / sum_k sigmoid(z_k), i.e. the per-class probabilities the loss fits, made into a
distribution over the C classes. `eval_logits` returns log sigmoid(z), whose softmax (what the
evaluation computes) is exactly these p_j and whose argmax is argmax z, so predictions are unchanged.
For balanced-sigmoid the unshifted z is used, as its authors predict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bkdbench.methods.params import Beta, Gamma, MethodParams
from bkdbench.methods.registry import Method, MethodError, float_logits, register


def one_hot(targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B×C one-hot targets in ``like``'s dtype; a comparison, since one_hot's range check can sync."""
    classes = torch.arange(like.shape[1], device=like.device)
    return (targets.unsqueeze(1) == classes).to(like.dtype)


def sigmoid_bce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-class BCE with logits on the one-hot targets ``t``, B×C (softplus form: finite for any z)."""
    return F.binary_cross_entropy_with_logits(z, t, reduction="none")


class _SigmoidMethod(Method):
    """Shared by the family: the prior bias of the head and the normalised-sigmoid probabilities."""

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        if self.num_classes < 2:
            raise MethodError(f"{self.name}: a sigmoid classifier needs at least 2 classes")

    def prior_bias(self) -> float:
        """-log((1 - pi) / pi) with pi = 1/C, i.e. -log(C - 1)."""
        pi = 1.0 / self.num_classes
        return -math.log((1.0 - pi) / pi)

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        fc = getattr(model, "fc", None)
        bias = getattr(fc, "bias", None)
        if not isinstance(bias, torch.Tensor) or bias.shape != (self.num_classes,):
            raise MethodError(f"{self.name}: the model needs a linear classifier `fc` with a bias of {self.num_classes} "
                              "classes (its prior is set there)")
        with torch.no_grad():
            bias.fill_(self.prior_bias())
        return []  # the bias is already one of the model's parameters

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # softmax(log sigmoid(z)) = sigmoid(z) / sum sigmoid(z): the probability rule of the module docstring
        return F.logsigmoid(logits)


class SigmoidParams(MethodParams):
    pass


@register("sigmoid")
class SigmoidCE(_SigmoidMethod):
    """Sigmoid cross-entropy: per-class BCE on one-hot targets, summed over classes, averaged over the
    batch (Cui et al.'s `loss_type=sigmoid` with beta = 0; BALMS's `sigmoid_loss`). No parameters."""

    Params = SigmoidParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        return sigmoid_bce(z, one_hot(targets, z)).sum() / z.shape[0]


@register("balanced-sigmoid")
class BalancedSigmoid(_SigmoidMethod):
    """Balanced Sigmoid (Ren, Yu, Sheng, Ma, Zhao, Yi, Li, NeurIPS 2020 / arXiv 2008.11037), as the
    authors' `BalancedSoftmaxFastRCNNOutputs.balanced_softmax_loss` does it:

        z'_ij = z_ij - log((1 - pi_j) / pi_j),  pi_j = n_j / N;   loss = (1/B) sum_ij BCE(z'_ij, t_ij)

    (their code drops the constant 1/(C - 1) of the paper's derivation "to keep log(weight) mostly
    positive"; so does this). Predictions and probabilities use the unshifted z. Where classification
    differs from their detection head: no background class, so no BG column to drop from the one-hot
    target and every sample is "foreground" (they shift only foreground proposals' logits); pi_j is
    the class's share of the training images (n_j / N), their `image_count / #images` of LVIS (which
    need not sum to 1 there, but does here since every image has exactly one label). No parameters.
    """

    Params = SigmoidParams

    def __init__(self, class_counts, params, *, epochs=200):
        super().__init__(class_counts, params, epochs=epochs)
        n = self.class_counts.to(torch.float64)
        pi = n / n.sum()
        self._constants["log_odds_against"] = torch.log1p(-pi) - torch.log(pi)  # log((1 - pi) / pi)

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        shifted = z - self.constant("log_odds_against", z)
        return sigmoid_bce(shifted, one_hot(targets, z)).sum() / z.shape[0]


class ClassBalancedSigmoidParams(MethodParams):
    beta: Beta = 0.9999


@register("cb-sigmoid")
class ClassBalancedSigmoid(_SigmoidMethod):
    """Class-balanced sigmoid CE (Cui, Jia, Lin, Song, Belongie, CVPR 2019; richardaecn/class-balanced-loss,
    `cifar_main._tower_fn`, `loss_type=sigmoid`):

        loss = sum_ij w_{y_i} * BCE_ij / sum_ij t_ij = (1/B) sum_i w_{y_i} sum_j BCE_ij

    w_j = (1 - beta) / (1 - beta^n_j), rescaled so sum_j w_j = C; every class's BCE of sample i carries
    its label's weight. Default beta = 0.9999 (their CIFAR script)."""

    Params = ClassBalancedSigmoidParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        w = self.cb_weights(z)[targets]
        return (w * sigmoid_bce(z, one_hot(targets, z)).sum(dim=1)).sum() / z.shape[0]


class ClassBalancedFocalParams(MethodParams):
    beta: Beta = 0.9999
    gamma: Gamma = 1.0


@register("cb-focal")
class ClassBalancedFocal(_SigmoidMethod):
    """Class-balanced sigmoid focal loss (Cui et al., CVPR 2019; their `focal_loss`):

        m_ij = exp(-gamma * t_ij * z_ij - gamma * log(1 + exp(-z_ij)))  (= (1 - p_t)^gamma, p_t = sigmoid
               of the right sign), loss = sum_ij w_{y_i} * m_ij * BCE_ij / sum_ij t_ij

    The modulator is their log-space form (finite gradients for 0 < gamma < 1); log(1 + exp(-z)) is
    computed as softplus(-z), the same value without exp overflowing for z < -88 in float32 (where
    their literal form gives 0 for a positive target instead of 1). No alpha-balancing term beyond the
    class weights. Defaults beta = 0.9999, gamma = 1 (their CIFAR script); beta = 0 is the plain
    sigmoid focal loss, gamma = 0 is cb-sigmoid."""

    Params = ClassBalancedFocalParams

    def loss(self, logits, targets, *, epoch=0, teacher_logits=None) -> torch.Tensor:
        z = float_logits(logits)
        t = one_hot(targets, z)
        bce = sigmoid_bce(z, t)
        gamma = self.params.gamma
        if gamma != 0:  # a Python float: no host sync
            bce = torch.exp(-gamma * t * z - gamma * F.softplus(-z)) * bce
        w = self.cb_weights(z)[targets]
        return (w * bce.sum(dim=1)).sum() / z.shape[0]
