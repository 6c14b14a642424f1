"""The fictitious student of Approximation II (paper 002, Sec. 5, Alg. 4): a linear classifier f_F on the
teacher's frozen features of the task's labelled images.

    student = fit_fictitious_student(features, labels, l2=1e-3)
    logits = student.logits(features)                      # [n, C]

Multinomial logistic regression on standardised features (each dimension centred and divided by its
standard deviation on the fit set; constant dimensions are left unscaled), minimising

    1/n sum_i CE(W x_i + b, y_i) + l2/2 ||W||_F^2          (b is not penalised)

with full-batch L-BFGS (strong Wolfe line search) in float64 from W = 0, b = 0: deterministic, and the
same optimum as scikit-learn's LogisticRegression(C = 1 / (l2 n)). l2 = 1e-3 is scikit-learn's default
C = 1 at n = 1000; it bounds the logits when the classes are separable (d > n is common: 512 features,
a few hundred images), where the unregularised optimum is at infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import as_indices, as_matrix, positive, positive_int

__all__ = ["FictitiousStudent", "fit_fictitious_student"]


@dataclass(frozen=True)
class FictitiousStudent:
    """f_F(x) = W (x - mean) / scale + b, fitted by fit_fictitious_student (all float64)."""

    weight: Tensor  # [C, d]
    bias: Tensor  # [C]
    mean: Tensor  # [d]
    scale: Tensor  # [d]

    def logits(self, features: Tensor) -> Tensor:
        """Logits [n, C] (float64) of features [n, d]."""
        x = as_matrix(features, "features", cols=self.weight.shape[1]).to(self.weight)
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias


def fit_fictitious_student(
    features: Tensor, labels: Tensor, num_classes: int | None = None, *, l2: float = 1e-3, max_iter: int = 200
) -> FictitiousStudent:
    """Fit f_F on (features [n, d], labels [n] in 0..num_classes-1); num_classes defaults to max + 1.
    ``max_iter``: L-BFGS iterations (it stops earlier when the gradient vanishes)."""
    x = as_matrix(features, "features").to(torch.float64)
    y = as_indices(labels, "labels", x.shape[0]).to(x.device)
    num_classes = int(y.max()) + 1 if num_classes is None else positive_int(num_classes, "num_classes")
    if int(y.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes = {num_classes}; got {int(y.max())}")
    l2 = positive(l2, "l2")
    max_iter = positive_int(max_iter, "max_iter")
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    scale = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
    x = (x - mean) / scale
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # a job may call this under torch.no_grad (feature extraction)
        opt.step(closure)
    return FictitiousStudent(weight.detach(), bias.detach(), mean, scale)
