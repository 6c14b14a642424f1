"""LogME, the logarithm of maximum evidence (You et al., ICML 2021): a baseline of paper 002, Sec. 6.2.

    score = logme(features, labels)           # higher = better teacher

For each class c, the one-hot column y_c [n] is modelled as Bayesian linear regression on the teacher's
features F [n, d]: w ~ N(0, alpha^-1 I), y_c | F, w ~ N(F w, beta^-1 I). The log evidence is

    L(alpha, beta) = n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m'm
                     - 1/2 log |A|,   A = alpha I + beta F'F,   m = beta A^-1 F'y

maximised over (alpha, beta) by MacKay's fixed point (You et al., Alg. 1):
gamma = sum_i beta s_i^2 / (alpha + beta s_i^2), alpha <- gamma / m'm, beta <- (n - gamma) / ||F m - y||^2,
with s_i the singular values of F. One thin SVD F = U S V' serves every class and every iteration: with
z = U'y, m'm, ||F m - y||^2 and log|A| are sums over the min(n, d) singular values. LogME is the mean over
classes of L / n at the fixed point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_labels, as_matrix, positive, positive_int

__all__ = ["logme"]


def logme(features: Tensor, labels: Tensor, max_iter: int = 1000, tol: float = 1e-10) -> float:
    """Mean over classes of the maximum log evidence per sample. features [n, d] (the teacher's embedding
    of the task's images), labels [n] in 0..C-1, every class present. Runs in float64. The fixed point
    stops when alpha and beta of every class move by less than ``tol`` (relative), at most ``max_iter``
    iterations (the reference implementation stops at 1% after at most 11)."""
    f = as_matrix(features, "features").to(torch.float64)
    y, num_classes = as_labels(labels, "labels", f.shape[0])
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive(tol, "tol")
    n, d = f.shape
    targets = torch.nn.functional.one_hot(y.to(f.device), num_classes).to(f.dtype)  # [n, C]
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    s2 = (s**2)[:, None]  # [r, 1]
    z2 = (u.T @ targets) ** 2  # [r, C]
    outside = (targets.sum(0) - z2.sum(0)).clamp_min(0)  # part of ||y||^2 outside the span of F
    tiny = 1e-300

    def terms(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        denom = alpha + beta * s2
        gamma = (beta * s2 / denom).sum(0)
        m2 = (beta**2 * s2 * z2 / denom**2).sum(0)  # m'm
        res2 = (alpha**2 * z2 / denom**2).sum(0) + outside  # ||F m - y||^2
        return denom, gamma, m2, res2

    alpha = torch.ones(num_classes, dtype=f.dtype, device=f.device)
    beta = torch.ones_like(alpha)
    for _ in range(max_iter):
        _, gamma, m2, res2 = terms(alpha, beta)
        new_alpha = gamma / m2.clamp_min(tiny)
        new_beta = (n - gamma) / res2.clamp_min(tiny)
        moved = torch.maximum((new_alpha / alpha).log().abs(), (new_beta / beta).log().abs()).max()
        alpha, beta = new_alpha, new_beta
        if float(moved) < tol:
            break
    denom, _, m2, res2 = terms(alpha, beta)
    log_det = denom.log().sum(0) + (d - s2.shape[0]) * alpha.log()
    evidence = (
        n / 2 * beta.log()
        + d / 2 * alpha.log()
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - log_det / 2
    )
    return float((evidence / n).mean())
