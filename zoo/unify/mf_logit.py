"""MF-LU and MF-LF: matrix factorisation in logit space (paper 001, Sec. 3.4.2, Eq. 15-18; supplement B.2).

With Z [L x N] the teachers' logits divided by T (Z_li = z_i(l) / T where l in L_i) and M the mask:
    minimise_{u, v, c} ||M o (Z - u v^T - 1_L c^T)||_F^2 + lambda (||u||^2 + ||v||^2), v >= 0  (Eq. 15-16)
u is the student's logit vector (in the space of logits / T) and q = softmax(u).

- MF-LU: v is a variable, lambda = 0.01, solved by the ALS of Algorithm 2 (batched; a sample stops when the
  RMSE between iterations of (u, v) is below tol, at most max_iter = 3000 iterations).
- MF-LF: v = 1 and no regulariser (Sec. 3.4.2, "setting v as a constant"). It is linear least squares in
  (u, c) whose design matrix depends on the mask only, which the batch shares: one pseudo-inverse of the
  (|M| x (L + N)) design matrix, then one matrix product for the whole batch. The gauge (u + a, c - a)
  is fixed by the pseudo-inverse (minimum norm of (u, c)); softmax(u) does not depend on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import run_chunked, scaled_logits, warn_unconverged

LF_OPTIONS: dict[str, object] = {"chunk_size": None}
LU_OPTIONS: dict[str, object] = {"lam": 0.01, "tol": 1e-3, "max_iter": 3000, "chunk_size": None}


def lf_operator(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """W [N*L, L] with u = Z.reshape(B, N*L) @ W the minimum-norm least-squares u of Eq. 15 with v = 1."""
    n, l_ = mask.shape
    obs = mask.detach().cpu().nonzero()  # (i, l) pairs, row-major like Z.reshape(B, N*L)
    design = torch.zeros(obs.shape[0], l_ + n, dtype=torch.float64)
    rows = torch.arange(obs.shape[0])
    design[rows, obs[:, 1]] = 1.0
    design[rows, l_ + obs[:, 0]] = 1.0
    pinv = torch.linalg.pinv(design)  # [(L + N), |M|]
    op = torch.zeros(n * l_, l_, dtype=torch.float64)
    op[obs[:, 0] * l_ + obs[:, 1]] = pinv[:l_].T
    return op.to(device=mask.device, dtype=dtype)


def lf_solve(z: Tensor, op: Tensor) -> Tensor:
    """u [B, L] of MF-LF for z = logits / T [B, N, L] (masked entries 0: their rows of op are 0 anyway)."""
    return z.reshape(z.shape[0], -1) @ op


def estimate_lf(logits: Tensor, mask: Tensor, temperature: float, chunk_size: int | None = None) -> Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    op = lf_operator(mask, dtype) / temperature  # u = (Z / T) @ W, with 1/T folded into W: one pass less
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)

    def block(x: Tensor) -> Tensor:
        return torch.softmax(lf_solve(torch.where(mask, x, zero).to(dtype), op), dim=-1)

    return run_chunked(block, logits, chunk_size)


def lu_als(
    z: Tensor, mask: Tensor, lam: float, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Algorithm 2, batched; z = logits / T [B, N, L], masked entries 0. Returns (u, v, c, #unconverged)."""
    m = mask.to(z.dtype)  # [N, L]
    count = m.sum(-1)  # |L_i|
    tiny = torch.finfo(z.dtype).tiny
    c = z.sum(-1) / count  # step 1: per-teacher mean logit
    v = torch.ones(z.shape[:2], dtype=z.dtype, device=z.device)
    u = torch.zeros(z.shape[0], z.shape[2], dtype=z.dtype, device=z.device)
    active = torch.arange(z.shape[0], device=z.device)
    for _ in range(max_iter):
        za, ca, va, ua = z[active], c[active], v[active], u[active]
        resid = (za - ca.unsqueeze(-1)) * m  # M o (Z - 1 c^T)
        u_new = (resid * va.unsqueeze(-1)).sum(1) / (lam + (m * va.unsqueeze(-1) ** 2).sum(1)).clamp_min(tiny)
        v_new = (resid * u_new.unsqueeze(1)).sum(-1) / (
            lam + (m * u_new.unsqueeze(1) ** 2).sum(-1)
        ).clamp_min(tiny)
        v_new = v_new.clamp_min(0)
        c_new = ((za - u_new.unsqueeze(1) * v_new.unsqueeze(-1)) * m).sum(-1) / count
        delta = torch.cat([u_new - ua, v_new - va], dim=-1)
        rmse = delta.pow(2).mean(-1).sqrt()
        u[active], v[active], c[active] = u_new, v_new, c_new
        active = active[rmse >= tol]
        if active.numel() == 0:
            return u, v, c, 0
    return u, v, c, int(active.numel())


def estimate_lu(
    logits: Tensor,
    mask: Tensor,
    temperature: float,
    lam: float,
    tol: float,
    max_iter: int,
    chunk_size: int | None,
) -> Tensor:
    unconverged = 0

    def block(x: Tensor) -> Tensor:
        nonlocal unconverged
        u, _, _, bad = lu_als(scaled_logits(x, mask, temperature, torch.float64), mask, lam, tol, max_iter)
        unconverged += bad
        return torch.softmax(u, dim=-1)

    q = run_chunked(block, logits, chunk_size)
    warn_unconverged("mf-lu", unconverged, logits.shape[0], max_iter)
    return q


def _weighted(mask: Tensor, weights: Tensor | None, like: Tensor) -> Tensor:
    """Per-entry weights w_l on observed entries, 0 elsewhere. [N, L]."""
    m = mask.to(like.dtype)
    return m if weights is None else m * weights


def _profile_shift(z: Tensor, fit: Tensor, wm: Tensor) -> Tensor:
    """c_i minimising sum_l wm_il (z_il - fit_il - c_i)^2: the weighted mean residual per teacher. [B, N]."""
    return ((z - fit) * wm).sum(-1) / wm.sum(-1).clamp_min(torch.finfo(z.dtype).tiny)


def bp_loss_lf(u: Tensor, z: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """Per-sample Eq. 15 with v = 1 and c solved for (u = student logits / T fixed). [B].

    Weighted (BS): sum_i sum_{l in L_i} w_l (Z_li - u_l - c_i)^2, c_i the w-weighted mean of Z_li - u_l.
    c is detached: it is the exact minimiser given u, so by the envelope theorem the gradient of the
    minimised loss with respect to u is the partial derivative at fixed c.
    """
    wm = _weighted(mask, weights, u)
    fit = u.unsqueeze(1).expand_as(z)
    c = _profile_shift(z, fit, wm).detach()
    return (wm * (z - fit - c.unsqueeze(-1)) ** 2).sum(dim=(1, 2))


def bp_loss_lu(u: Tensor, z: Tensor, mask: Tensor, weights: Tensor | None, lam: float = 0.01) -> Tensor:
    """Per-sample Eq. 15-16 with (v, c) solved exactly for the fixed u = student logits / T. [B].

    For fixed u the problem separates by teacher: with c_i profiled out (weighted mean residual), v_i is
    a one-dimensional ridge regression, clamped at 0 (exact for a 1-D convex problem). Weighted (BS): the
    data term's per-entry squares are scaled by w_l; the regulariser lambda (||u||^2 + ||v||^2) is not.
    (v, c) are detached (envelope theorem, as in bp_loss_lf).
    """
    wm = _weighted(mask, weights, u)
    den = wm.sum(-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    with torch.no_grad():
        uu = u.unsqueeze(1)
        u_c = uu - (wm * uu).sum(-1, keepdim=True) / den  # u centred per teacher (weighted)
        z_c = z - (wm * z).sum(-1, keepdim=True) / den
        v = (wm * z_c * u_c).sum(-1) / ((wm * u_c**2).sum(-1) + lam).clamp_min(torch.finfo(u.dtype).tiny)
        v = v.clamp_min(0)  # [B, N]
        c = _profile_shift(z, uu * v.unsqueeze(-1), wm)
    fit = u.unsqueeze(1) * v.unsqueeze(-1) + c.unsqueeze(-1)
    return (wm * (z - fit) ** 2).sum(dim=(1, 2)) + lam * (u.pow(2).sum(-1) + v.pow(2).sum(-1))
