"""Entropic optimal transport between two batches of histograms: log-domain Sinkhorn (paper 002, Sec. 4).

    value, alpha, beta = sinkhorn(p_t, p_s, cost, eps=0.1, n_iter=100, tol=None)

S_eps(p_T, p_S) = min_{T in Pi(p_T, p_S)} <T, M> + eps * sum_mn T_mn log T_mn       (Eq. 5 / 12)

with H(T) = -sum T log T (footnote 1 of the paper; its H(T) = -sum T (log T - 1) only adds eps, a
constant, since sum T = 1). The dual (Eq. 13) has the optimal plan T = exp((alpha_m + beta_n - M_mn) / eps)
(Eq. 18): Alg. 3 iterates u = exp(alpha / eps), v = exp(beta / eps) with K = exp(-M / eps), which
underflows in float32 at eps = 0.1 as soon as M_mn > ~8.7. Here the same updates (Eq. 20) run on the
potentials themselves through log-sum-exp, never forming K:

    alpha_m = eps log p_T,m - eps LSE_n((beta_n - M_mn) / eps)
    beta_n  = eps log p_S,n - eps LSE_m((alpha_m - M_mn) / eps)

Batched over samples (no loop over samples), on the device of the inputs. Two exact implementations of
the same log-sum-exps: while the spread of M / eps within each row and column is below 60 (float32; 600
in float64) -- always true for cost_matrix's "l2" costs (M <= 2) at eps >= 0.034 -- they are matrix
products with row- and column-stabilised kernels exp(min - M / eps), which cannot underflow there
(_kernel_steps); otherwise torch.logsumexp over a [B, m, n] tensor (_lse_steps). Both are tested
against POT; benchmarks/sinkhorn.py measures them.

beta is the gradient of the value w.r.t. p_S on the simplex (Eq. 14; up to a constant, which the
softmax of Eq. 15 removes); alpha is the gradient w.r.t. p_T.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import positive, positive_int

__all__ = ["sinkhorn"]

# With `tol`, the marginal error is read every this many iterations: reading it is a host sync on CUDA.
CHECK_EVERY = 10
# The matrix-product path runs while max_m (max_n C_mn - min_n C_mn) (and the same over columns) of
# C = M / eps stays below this: exp(-60) = 9e-27 is far from float32's smallest normal number (1e-38).
KERNEL_SPREAD = {torch.float32: 60.0, torch.float64: 600.0}
# Row sums of p_t / p_s may be off by this much (float32 softmax, float16 storage) and are renormalised.
SIMPLEX_TOL = 1e-3


def _check_histograms(p: Tensor, name: str) -> None:
    if not isinstance(p, Tensor) or p.dim() != 2 or not p.is_floating_point():
        shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"{name} must be a floating-point tensor [B, classes]; got {shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(p.shape)})")
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    if bool((p < 0).any()):
        raise ValueError(f"{name} has negative entries: rows must be probabilities (softmax of logits)")
    err = float((p.detach().sum(-1) - 1).abs().max())
    if err > SIMPLEX_TOL:
        raise ValueError(f"rows of {name} must sum to 1 (probabilities); the worst is off by {err:.3g}")


def _check_cost(cost: Tensor, batch: int, m: int, n: int) -> None:
    if not isinstance(cost, Tensor) or not cost.is_floating_point():
        raise ValueError(
            f"cost must be a floating-point tensor [m, n] or [B, m, n]; got {type(cost).__name__}"
        )
    if tuple(cost.shape) not in ((m, n), (batch, m, n)):
        raise ValueError(f"cost must have shape ({m}, {n}) or ({batch}, {m}, {n}); got {tuple(cost.shape)}")
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("cost holds NaN or inf values")
    if bool((cost < 0).any()):
        raise ValueError("cost must be >= 0 (distances between class centres, Eq. 7)")


def sinkhorn(
    p_t: Tensor, p_s: Tensor, cost: Tensor, eps: float = 0.1, n_iter: int = 100, tol: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sinkhorn distance of each row pair (Eq. 12) and its dual potentials (Eq. 13), batched.

    p_t [B, m], p_s [B, n]: rows on the simplex (renormalised; zeros allowed). cost [m, n] or
    [B, m, n], >= 0. Returns value [B] = <T, M> + eps sum T log T of the plan T after the last
    iteration, alpha [B, m], beta [B, n] with T = exp((alpha + beta - M) / eps). Like Alg. 3: u, v start
    at 1 (alpha = beta = 0), each iteration updates alpha then beta (so T's columns sum to p_s exactly),
    ``n_iter`` iterations at most; with ``tol`` it stops once sum_m |T 1 - p_t|_m <= tol for every row
    (checked every 10 iterations). A class with probability 0 gets mass ``finfo.tiny`` instead
    (~1e-38 in float32), which keeps its potential finite and its row or column of T at 0 to ~1e-38.
    Runs in float64 for float64 inputs, float32 otherwise; differentiable by autograd through the
    iterations (the distillation loss uses beta instead, Eq. 14-15: zoo.crosstask).
    """
    _check_histograms(p_t, "p_t")
    _check_histograms(p_s, "p_s")
    if p_t.shape[0] != p_s.shape[0]:
        raise ValueError(f"p_t and p_s must have the same batch size; got {p_t.shape[0]} and {p_s.shape[0]}")
    batch, m, n = p_t.shape[0], p_t.shape[1], p_s.shape[1]
    _check_cost(cost, batch, m, n)
    if not (p_t.device == p_s.device == cost.device):
        raise ValueError(
            f"p_t, p_s and cost must be on one device; got {p_t.device}, {p_s.device}, {cost.device}"
        )
    eps = positive(eps, "eps")
    n_iter = positive_int(n_iter, "n_iter")
    if tol is not None:
        tol = positive(tol, "tol")

    dtype = torch.promote_types(torch.promote_types(p_t.dtype, p_s.dtype), cost.dtype)
    dtype = dtype if dtype == torch.float64 else torch.float32
    a = p_t.to(dtype)
    b = p_s.to(dtype)
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    cost = cost.to(dtype)
    # Under a caller's autocast the matrix products would run in float16/bfloat16: keep our dtype.
    with torch.autocast(a.device.type, enabled=False):
        return _solve(a, b, cost.reshape(-1, m, n), eps, n_iter, tol)


def _solve(a: Tensor, b: Tensor, cost: Tensor, eps: float, n_iter: int, tol: float | None):
    """The iterations of sinkhorn on validated, renormalised histograms and a [1 or B, m, n] cost."""
    tiny = torch.finfo(a.dtype).tiny
    log_a, log_b = a.clamp_min(tiny).log(), b.clamp_min(tiny).log()
    batch = a.shape[0]
    c = cost / eps  # [1 or B, m, n]
    row_lse, col_lse = _kernel_steps(c) if _kernel_is_safe(c) else _lse_steps(c, batch)
    # f = alpha / eps and g = beta / eps: the updates of Eq. 20 in the log domain.
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for it in range(n_iter):
        f_new = log_a - row_lse(g)
        # Rows of the plan (f, g) sum to p_t * exp(f - f_new): the marginal error costs no extra pass.
        check = tol is not None and it > 0 and it % CHECK_EVERY == 0
        done = check and float((a * torch.expm1((f - f_new).clamp(max=30.0)).abs()).sum(-1).max()) <= tol
        f = f_new
        g = log_b - col_lse(f)
        if done:
            break
    log_plan = f[:, :, None] + g[:, None, :] - c
    plan = log_plan.exp()
    value = (plan * (cost + eps * log_plan)).sum((1, 2))
    return value, eps * f, eps * g


Steps = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def _lse_steps(c: Tensor, batch: int) -> Steps:
    """LSE_n(g_n - C_mn) [B, m] and LSE_m(f_m - C_mn) [B, n] by torch.logsumexp over a [B, m, n] tensor."""
    neg = (-c).expand(batch, -1, -1)
    return (
        lambda g: torch.logsumexp(neg + g[:, None, :], dim=2),
        lambda f: torch.logsumexp(neg + f[:, :, None], dim=1),
    )


def _kernel_is_safe(c: Tensor) -> bool:
    spread = torch.maximum((c.amax(2) - c.amin(2)).amax(), (c.amax(1) - c.amin(1)).amax())
    return float(spread) < KERNEL_SPREAD[c.dtype]


def _kernel_steps(c: Tensor) -> Steps:
    """The same two log-sum-exps as matrix products with row- and column-stabilised kernels.

    LSE_n(g_n - C_mn) = max(g) - r_m + log sum_n exp(g_n - max(g)) exp(r_m - C_mn), r_m = min_n C_mn.
    Every entry of exp(r - C) lies in [exp(-spread), 1] and the term of the largest g_n is at least
    exp(-spread), so nothing under- or overflows while spread < KERNEL_SPREAD; the sums are then matrix
    products ([B, n] @ [n, m] for a shared cost) instead of a [B, m, n] tensor per half-iteration.
    """
    r = c.amin(2)  # [Bc, m]
    s = c.amin(1)  # [Bc, n]
    k_row = torch.exp(r[:, :, None] - c)
    k_col = torch.exp(s[:, None, :] - c)
    shared = c.shape[0] == 1

    def row(g: Tensor) -> Tensor:
        top = g.amax(1, keepdim=True)
        v = (g - top).exp()
        kv = v @ k_row[0].T if shared else torch.bmm(k_row, v[:, :, None])[:, :, 0]
        return top - r + kv.log()

    def col(f: Tensor) -> Tensor:
        top = f.amax(1, keepdim=True)
        u = (f - top).exp()
        ku = u @ k_col[0] if shared else torch.bmm(u[:, None, :], k_col)[:, 0, :]
        return top - s + ku.log()

    return row, col
