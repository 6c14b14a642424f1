"""MF-P: matrix factorisation in probability space (paper 001, Sec. 3.4.1, Eq. 10-14; supplement B.1).

With P [L x N] the zero-padded teacher probabilities (P_li = p_i(l)) and M the mask, Eq. 6 says
M o P = M o (u v^T) with u = q and v_i = 1 / sum_{l in L_i} q(l) (Eq. 10-11). We solve
    minimise_{u, v} || M o (P - u v^T) ||_F^2   s.t.  u^T 1 = 1,  u >= 0,  v >= 0          (Eq. 12-14)
with the ALS of Algorithm 1, batched over samples: v := 1; then repeat u := closed form, clamp at 0,
normalise to sum 1; v := closed form, clamp at 0. A sample stops when the RMSE between iterations of
(u, v) is below tol (1e-3, supplement B.1) or after max_iter = 3000 iterations; the batch loop stops when
every sample has stopped (converged samples are frozen, not iterated further).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import run_chunked, scaled_logits, teacher_log_probs, warn_unconverged

OPTIONS: dict[str, object] = {"tol": 1e-3, "max_iter": 3000, "chunk_size": None}


def als(p: Tensor, mask: Tensor, tol: float, max_iter: int) -> tuple[Tensor, Tensor, int]:
    """Algorithm 1 on zero-padded probabilities p [B, N, L]. Returns (u [B, L], v [B, N], #unconverged)."""
    m = mask.to(p.dtype)
    tiny = torch.finfo(p.dtype).tiny
    v = torch.ones(p.shape[:2], dtype=p.dtype, device=p.device)
    u = torch.zeros(p.shape[0], p.shape[2], dtype=p.dtype, device=p.device)
    active = torch.arange(p.shape[0], device=p.device)
    for _ in range(max_iter):
        pa, va, ua = p[active], v[active], u[active]
        u_new = (pa * va.unsqueeze(-1)).sum(1) / (m * va.unsqueeze(-1) ** 2).sum(1).clamp_min(tiny)  # step 4
        u_new = u_new.clamp_min(0)  # step 5
        u_new = u_new / u_new.sum(-1, keepdim=True).clamp_min(tiny)  # steps 7-10
        v_new = (pa * u_new.unsqueeze(1)).sum(-1) / (m * u_new.unsqueeze(1) ** 2).sum(-1).clamp_min(tiny)
        v_new = v_new.clamp_min(0)  # steps 12-13
        rmse = torch.cat([u_new - ua, v_new - va], dim=-1).pow(2).mean(-1).sqrt()
        u[active], v[active] = u_new, v_new
        active = active[rmse >= tol]
        if active.numel() == 0:
            return u, v, 0
    return u, v, int(active.numel())


def probs(z: Tensor, mask: Tensor) -> Tensor:
    return torch.where(
        mask, teacher_log_probs(z, mask).exp(), torch.zeros((), dtype=z.dtype, device=z.device)
    )


def estimate(
    logits: Tensor, mask: Tensor, temperature: float, tol: float, max_iter: int, chunk_size: int | None
) -> Tensor:
    unconverged = 0

    def block(x: Tensor) -> Tensor:
        nonlocal unconverged
        u, _, bad = als(probs(scaled_logits(x, mask, temperature, torch.float64), mask), mask, tol, max_iter)
        unconverged += bad
        return u

    q = run_chunked(block, logits, chunk_size)
    warn_unconverged("mf-p", unconverged, logits.shape[0], max_iter)
    return q


def bp_loss(u_logits: Tensor, z: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """Per-sample Eq. 12 with u = softmax(student logits / T) and v solved for (v >= 0). [B].

    For fixed u, v_i = max(0, sum_l w_l P_li u_l / sum_l w_l u_l^2) (the closed form of step 12, weighted).
    Weighted (BS): sum_i sum_{l in L_i} w_l (P_li - u_l v_i)^2. v is detached (envelope theorem).
    """
    u = torch.softmax(u_logits, dim=-1)
    p = probs(z, mask)
    wm = mask.to(u.dtype) if weights is None else mask.to(u.dtype) * weights
    with torch.no_grad():
        uu = u.unsqueeze(1)
        v = ((wm * p * uu).sum(-1) / (wm * uu**2).sum(-1).clamp_min(torch.finfo(u.dtype).tiny)).clamp_min(0)
    return (wm * (p - u.unsqueeze(1) * v.unsqueeze(-1)) ** 2).sum(dim=(1, 2))
