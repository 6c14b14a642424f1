"""CE: the cross-entropy method (paper 001, Sec. 3.3, Eq. 7-9; supplement A).

With q = softmax(u), Eq. 7 becomes the convex Eq. 9:
    J(u) = -sum_i sum_{l in L_i} p_i(l) (u_l - logsumexp_{k in L_i} u_k)
         = sum_i logsumexp_{L_i}(u) - sum_l pbar_l u_l,            pbar = sum_i p_i (zero-padded)
    gradient  g = sum_i s_i - pbar,        s_i = softmax of u over L_i (q-hat_i of Eq. 8), zero elsewhere
    Hessian   H = D - S S^T,               D = diag(sum_i s_i),  S = [s_1 ... s_N]  (L x N)

The paper minimises J by gradient descent, which stalls far from the optimum on confident teachers
(the trap in the issue). We use batched Newton with backtracking (Armijo) line search, started from the
MF-LF solution (exact when the teachers are consistent), so every sample reaches the global optimum to
``tol`` on the max-norm of the gradient. H is singular along shifts of u within a connected component of
the overlap graph (J does not change there); the Newton step is the minimum-norm-in-the-reduced-space
solution of H d = -g, computed by Woodbury through the N x N system
    (I - S^T D^-1 S + Q) y = -S^T D^-1 g,     d = D^-1 (-g + S y),
where Q = sum_c 1_c 1_c^T / n_c over teacher components removes exactly that null space (g is orthogonal
to it). This costs O(N^2 L + N^3) per sample instead of O(L^3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import mf_logit
from ._common import (
    components,
    masked_softmax,
    run_chunked,
    scaled_logits,
    teacher_log_probs,
    warn_unconverged,
)

OPTIONS: dict[str, object] = {"tol": 1e-9, "max_iter": 100, "chunk_size": None}

_ARMIJO = 1e-4
_MAX_HALVINGS = 60


def objective(u: Tensor, pbar: Tensor, mask: Tensor) -> Tensor:
    """Eq. 9 for each sample, given pbar = sum_i p_i. [B]."""
    neg_inf = torch.tensor(float("-inf"), dtype=u.dtype, device=u.device)
    lse = torch.logsumexp(torch.where(mask, u.unsqueeze(1), neg_inf), dim=-1)  # [B, N]
    return lse.sum(-1) - (pbar * u).sum(-1)


def _newton_step(u: Tensor, pbar: Tensor, mask: Tensor, proj: Tensor) -> tuple[Tensor, Tensor]:
    """(gradient g, Newton direction d) of Eq. 9 at u; d is a descent direction."""
    s = masked_softmax(u, mask)  # [B, N, L]
    dsum = s.sum(1)
    g = dsum - pbar
    dinv = 1.0 / dsum.clamp_min(torch.finfo(u.dtype).tiny)
    sd = s * dinv.unsqueeze(1)  # S^T D^-1 rows
    cap = proj - sd @ s.transpose(1, 2)  # proj already holds I + Q
    rhs = -(sd * g.unsqueeze(1)).sum(-1, keepdim=True)  # [B, N, 1]
    y, info = torch.linalg.solve_ex(cap, rhs)
    d = (-g + (y * s).sum(1)) * dinv
    # A failed solve or a non-descent direction (round-off on a near-singular system): fall back to -g.
    bad = (info != 0) | ~torch.isfinite(d).all(-1) | ((g * d).sum(-1) >= 0)
    d = torch.where(bad.unsqueeze(-1), -g, d)
    return g, d


def solve(
    z: Tensor, mask: Tensor, lf_op: Tensor, proj: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """u minimising Eq. 9 for z = logits / T (float64, masked entries 0). Returns (u [B, L], #unconverged)."""
    logp = teacher_log_probs(z, mask)
    pbar = torch.where(mask, logp.exp(), torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
    u = mf_logit.lf_solve(z, lf_op)  # exact optimum for consistent teachers
    active = torch.arange(u.shape[0], device=u.device)
    for _ in range(max_iter):
        ua, pa = u[active], pbar[active]
        g, d = _newton_step(ua, pa, mask, proj)
        todo = g.abs().amax(-1) > tol
        if not bool(todo.any()):
            return u, 0
        active, ua, pa, g, d = active[todo], ua[todo], pa[todo], g[todo], d[todo]
        j0 = objective(ua, pa, mask)
        gd = (g * d).sum(-1)
        # Where the predicted decrease -g.d (the squared Newton decrement) is below the round-off of J, the
        # Armijo test is noise: take the full Newton step, which converges quadratically there.
        noise = 100 * torch.finfo(z.dtype).eps * (1 + 2 * (pa * ua.abs()).sum(-1))
        step = torch.ones_like(j0)
        accepted = -gd <= noise
        new_u = torch.where(accepted.unsqueeze(-1), ua + d, ua)
        for _ in range(_MAX_HALVINGS):
            pending = ~accepted
            trial = ua[pending] + step[pending].unsqueeze(-1) * d[pending]
            jt = objective(trial, pa[pending], mask)
            ok = torch.isfinite(jt) & (jt <= j0[pending] + _ARMIJO * step[pending] * gd[pending])
            idx = pending.nonzero().flatten()
            new_u[idx[ok]] = trial[ok]
            accepted[idx[ok]] = True
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step / 2)
        u[active] = new_u
        # No step decreases J in float64: the sample sits at its numerical optimum.
        active = active[accepted]
        if active.numel() == 0:
            return u, 0
    g, _ = _newton_step(u[active], pbar[active], mask, proj)
    return u, int((g.abs().amax(-1) > tol).sum())


def _projector(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """I + Q with Q = sum_c 1_c 1_c^T / n_c over the teacher components of the overlap graph. [N, N]."""
    _, teacher_comp, _ = components(mask)
    same = (teacher_comp.unsqueeze(0) == teacher_comp.unsqueeze(1)).to(dtype)
    return torch.eye(mask.shape[0], dtype=dtype, device=mask.device) + same / same.sum(1, keepdim=True)


def estimate(
    logits: Tensor, mask: Tensor, temperature: float, tol: float, max_iter: int, chunk_size: int | None
) -> Tensor:
    dtype = torch.float64
    lf_op = mf_logit.lf_operator(mask, dtype)
    proj = _projector(mask, dtype)
    unconverged = 0

    def block(x: Tensor) -> Tensor:
        nonlocal unconverged
        u, bad = solve(scaled_logits(x, mask, temperature, dtype), mask, lf_op, proj, tol, max_iter)
        unconverged += bad
        return torch.softmax(u, dim=-1)

    q = run_chunked(block, logits, chunk_size)
    warn_unconverged("ce", unconverged, logits.shape[0], max_iter)
    return q


def bp_loss(u: Tensor, z: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """Per-sample Eq. 7 with q = softmax(u) the student's output (u = student logits / T). [B].

    Weighted (BS): -sum_i sum_{l in L_i} w_l p_i(l) log q-hat_i(l).
    """
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    p = torch.where(mask, teacher_log_probs(z, mask).exp(), zero)
    neg_inf = torch.tensor(float("-inf"), dtype=u.dtype, device=u.device)
    log_qhat = torch.log_softmax(torch.where(mask, u.unsqueeze(1), neg_inf), dim=-1)
    term = torch.where(mask, p * torch.where(mask, log_qhat, zero), zero)  # -inf never multiplies
    if weights is not None:
        term = term * weights
    return -term.sum(dim=(1, 2))
