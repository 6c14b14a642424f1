"""Unit tests of zoo.unify (paper 001, Sec. 3): validation, closed forms, recovery, BP losses, BS weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from zoo.unify import (
    METHODS,
    MODES,
    ConvergenceWarning,
    balance_weights,
    estimate_soft_labels,
    mf_logit,
    soft_cross_entropy,
    solver_defaults,
    unify_loss,
)
from zoo.unify import ce as ce_mod

# Capped ALS runs below warn by design; test_convergence_warning checks that the warning exists.
pytestmark = pytest.mark.filterwarnings("ignore::zoo.unify.ConvergenceWarning")

T = 3.0
# Mask with classes 0..5 over 3 teachers: connected, class 5 seen by one teacher only.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [1, 0, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)
# ALS stops at max_iter on some random (inconsistent) samples; cap it where only determinism matters.
FAST = {"ce": {}, "mf-p": {"max_iter": 300}, "mf-lu": {"max_iter": 300}, "mf-lf": {}, "sd": {}}
TIGHT = {"ce": {"tol": 1e-12}, "mf-p": {"tol": 1e-13, "max_iter": 20000}, "mf-lu": {}, "mf-lf": {}, "sd": {}}


def consistent(mask: torch.Tensor, b: int, scale: float = 1.0, seed: int = 0, temperature: float = T):
    """Teacher logits derived from one q by Eq. 6 (z_i = T (log q + c_i) on L_i), junk where masked."""
    g = torch.Generator().manual_seed(seed)
    n, l_ = mask.shape
    u = torch.randn(b, l_, generator=g, dtype=torch.float64) * scale
    c = torch.randn(b, n, 1, generator=g, dtype=torch.float64) * 5
    logits = temperature * (u.unsqueeze(1) + c)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])[torch.arange(n * l_) % 4]
    logits = torch.where(mask, logits, junk.view(n, l_).to(torch.float64))
    return logits, torch.softmax(u, dim=-1)


def random_logits(mask: torch.Tensor, b: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *mask.shape, generator=g, dtype=torch.float64) * scale * T


def teacher_p(logits: torch.Tensor, mask: torch.Tensor, temperature: float = T) -> list[list[np.ndarray]]:
    """Per-sample, per-teacher probabilities by a plain loop (independent of the library)."""
    out = []
    for b in range(logits.shape[0]):
        row = []
        for i in range(mask.shape[0]):
            idx = mask[i].nonzero().flatten().numpy()
            z = logits[b, i, idx].numpy() / temperature
            e = np.exp(z - z.max())
            row.append((idx, e / e.sum()))
        out.append(row)
    return out


def ce_objective_np(u: np.ndarray, probs) -> float:
    """Eq. 9 for one sample."""
    total = 0.0
    for idx, p in probs:
        uu = u[idx]
        m = uu.max()
        total -= float(p @ (uu - (m + np.log(np.exp(uu - m).sum()))))
    return total


def ce_scipy(probs, num_classes: int) -> np.ndarray:
    """Independent reference for Eq. 9: scipy BFGS with the analytic gradient, from u = 0."""

    def grad(u, probs):
        g = np.zeros_like(u)
        for idx, p in probs:
            e = np.exp(u[idx] - u[idx].max())
            g[idx] += e / e.sum() - p
        return g

    res = minimize(
        ce_objective_np,
        np.zeros(num_classes),
        args=(probs,),
        jac=grad,
        method="BFGS",
        options={"gtol": 1e-10, "maxiter": 10000},
    )
    return res.x


# ----------------------------------------------------------------------------------------------- API


def test_public_constants():
    assert METHODS == ("sd", "ce", "mf-p", "mf-lu", "mf-lf")
    assert MODES == ("e", "bp", "bs")
    assert solver_defaults("mf-lu")["lam"] == 0.01
    assert solver_defaults("mf-p")["tol"] == 1e-3 and solver_defaults("mf-p")["max_iter"] == 3000


@pytest.mark.parametrize("method", METHODS)
def test_rows_are_distributions_and_dtype_kept(method):
    logits = random_logits(MASK, 16, seed=1)
    for dtype in (torch.float32, torch.float64):
        q = estimate_soft_labels(logits.to(dtype), MASK, method, **FAST[method])
        assert q.dtype == dtype and q.shape == (16, 6)
        assert bool((q >= 0).all())
        torch.testing.assert_close(q.sum(-1), torch.ones(16, dtype=dtype))


# ---------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda lg, m: (lg[0], m), r"\[B, N, L\]"),
        (lambda lg, m: (lg, m[:2]), "do not match mask"),
        (lambda lg, m: (lg[:, :, :5], m), "do not match mask"),
        (lambda lg, m: (lg, m[0]), r"\[N, L\]"),
        (lambda lg, m: (lg, torch.cat([m, torch.zeros(1, 6, dtype=torch.bool)])[:, :]), "do not match"),
        (lambda lg, m: (lg.long(), m), "floating-point"),
        (lambda lg, m: (lg[:0], m), "no sample"),
        (lambda lg, m: (lg, m.float() * 2), "boolean"),
    ],
)
def test_bad_shapes_raise(make, match):
    logits, mask = make(random_logits(MASK, 4), MASK.clone())
    with pytest.raises(ValueError, match=match):
        estimate_soft_labels(logits, mask, "ce")


def test_teacher_without_class_and_orphan_class_raise():
    mask = MASK.clone()
    mask[1] = False
    with pytest.raises(ValueError, match="teacher.*no class"):
        estimate_soft_labels(random_logits(mask, 2), mask, "sd")
    mask = MASK.clone()
    mask[:, 4] = False
    with pytest.raises(ValueError, match=r"class.*\[4\].*no teacher"):
        estimate_soft_labels(random_logits(mask, 2), mask, "sd")


def test_unknown_method_temperature_and_options_raise():
    logits = random_logits(MASK, 2)
    with pytest.raises(ValueError, match="unknown method"):
        estimate_soft_labels(logits, MASK, "mf-x")
    with pytest.raises(ValueError, match="unknown method"):
        unify_loss(torch.zeros(2, 6), logits, MASK, "kd")
    for bad in (0.0, -1.0, float("nan"), float("inf"), "hot"):
        with pytest.raises(ValueError, match="temperature"):
            estimate_soft_labels(logits, MASK, "sd", temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            soft_cross_entropy(torch.zeros(2, 6), torch.full((2, 6), 1 / 6), temperature=bad)
    with pytest.raises(
        ValueError, match="unknown solver option.*tolerance.*allowed: chunk_size, max_iter, tol"
    ):
        estimate_soft_labels(logits, MASK, "ce", tolerance=1e-3)
    with pytest.raises(ValueError, match="unknown solver option"):
        estimate_soft_labels(logits, MASK, "mf-lf", max_iter=3)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        estimate_soft_labels(logits, MASK, "mf-p", max_iter=0)
    with pytest.raises(ValueError, match="tol must be a positive"):
        estimate_soft_labels(logits, MASK, "ce", tol=-1.0)
    # Case and '_' are tolerated in method names.
    torch.testing.assert_close(
        estimate_soft_labels(logits, MASK, "MF_LF"), estimate_soft_labels(logits, MASK, "mf-lf")
    )


def test_nonfinite_observed_logit_raises():
    logits = random_logits(MASK, 3)
    logits[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*\[1, 0, 2\]"):
        estimate_soft_labels(logits, MASK, "sd")


def test_loss_input_validation():
    logits = random_logits(MASK, 2)
    with pytest.raises(ValueError, match="student_logits"):
        unify_loss(torch.zeros(3, 6), logits, MASK, "ce")
    with pytest.raises(ValueError, match="weights must have shape"):
        unify_loss(torch.zeros(2, 6), logits, MASK, "ce", weights=torch.ones(5))
    with pytest.raises(ValueError, match="non-negative"):
        unify_loss(torch.zeros(2, 6), logits, MASK, "ce", weights=-torch.ones(6))
    with pytest.raises(ValueError, match="q must have"):
        soft_cross_entropy(torch.zeros(2, 6), torch.ones(2, 5) / 5)


# --------------------------------------------------------------------------------------------- SD


def test_sd_closed_form():
    """Sec. 3.1: zero-fill each teacher's p_i, then average over teachers (checked against a plain loop)."""
    logits = random_logits(MASK, 5, seed=3)
    q = estimate_soft_labels(logits, MASK, "sd")
    expected = torch.zeros(5, 6, dtype=torch.float64)
    for b, row in enumerate(teacher_p(logits, MASK)):
        for idx, p in row:
            expected[b, idx] += torch.from_numpy(p) / MASK.shape[0]
    torch.testing.assert_close(q, expected)
    # A tiny hand-made case: two teachers, classes {0, 1} and {1, 2}, uniform outputs.
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    q = estimate_soft_labels(torch.zeros(1, 2, 3), mask, "sd")
    torch.testing.assert_close(q, torch.tensor([[0.25, 0.5, 0.25]]))


# ------------------------------------------------------------------------------------ recovery / CE


@pytest.mark.parametrize("method", ["ce", "mf-p", "mf-lf"])
def test_consistent_teachers_recover_q(method):
    """Eq. 6 teachers + connected overlap graph: CE (Prop. 1), MF-P (Eq. 10-11), MF-LF recover q exactly."""
    logits, q_true = consistent(MASK, 32, scale=1.0 if method == "mf-p" else 3.0, seed=4)
    q = estimate_soft_labels(logits, MASK, method, **TIGHT[method])
    torch.testing.assert_close(q, q_true, atol=1e-7, rtol=1e-6)
    # sd does not (the point of the paper): it is off by far more than the tolerance above.
    assert (estimate_soft_labels(logits, MASK, "sd") - q_true).abs().max() > 1e-2


def test_ce_matches_scipy_on_inconsistent_and_confident_teachers():
    """CE reaches the global optimum of Eq. 9, including confident teachers (logits up to ~10 T apart),
    where plain gradient descent stalls; compared with an independent scipy BFGS run per sample."""
    for scale, seed in ((1.0, 5), (4.0, 6)):
        logits = random_logits(MASK, 12, scale=scale, seed=seed)
        q = estimate_soft_labels(logits, MASK, "ce")
        for b, probs in enumerate(teacher_p(logits, MASK)):
            u_ref = ce_scipy(probs, 6)
            j_ours = ce_objective_np(torch.log(q[b]).numpy(), probs)
            j_ref = ce_objective_np(u_ref, probs)
            assert j_ours <= j_ref + 1e-9
            q_ref = np.exp(u_ref - u_ref.max())
            np.testing.assert_allclose(q[b].numpy(), q_ref / q_ref.sum(), atol=2e-5)


def test_ce_gradient_at_returned_q_is_below_tol():
    logits = random_logits(MASK, 64, scale=5.0, seed=7)
    z = torch.where(MASK, logits, 0.0) / T
    q = estimate_soft_labels(logits, MASK, "ce", tol=1e-10)
    p = torch.where(MASK, torch.log_softmax(torch.where(MASK, z, -math.inf), -1).exp(), 0.0)
    s = torch.where(MASK, torch.softmax(torch.where(MASK, torch.log(q).unsqueeze(1), -math.inf), -1), 0.0)
    assert (s.sum(1) - p.sum(1)).abs().max() < 1e-9


def test_disconnected_graph_and_single_teacher_classes():
    """Two groups of teachers with no shared class: no crash, each component gets mass n_c / N and the
    within-component distribution is recovered; singly-covered classes are fine."""
    mask = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    logits, q_true = consistent(mask, 8, seed=8)
    for method in METHODS:
        q = estimate_soft_labels(logits, mask, method, **TIGHT[method])
        torch.testing.assert_close(q[:, :3].sum(-1), torch.full((8,), 2 / 3, dtype=torch.float64))
        torch.testing.assert_close(q[:, 3:].sum(-1), torch.full((8,), 1 / 3, dtype=torch.float64))
        if method in ("ce", "mf-p", "mf-lf"):
            within = q_true[:, :3] / q_true[:, :3].sum(-1, keepdim=True)
            torch.testing.assert_close(q[:, :3] / q[:, :3].sum(-1, keepdim=True), within, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_per_teacher_logit_shift_and_temperature_convention(method):
    """Teachers' probabilities do not change when a teacher's logits shift (Eq. 2), so neither does q;
    and q(logits, T) == q(logits / T, 1): teacher logits are divided by T."""
    logits = random_logits(MASK, 10, seed=9)
    opts = FAST[method]
    q = estimate_soft_labels(logits, MASK, method, **opts)
    shift = torch.randn(10, 3, 1, dtype=torch.float64) * 20
    torch.testing.assert_close(
        estimate_soft_labels(logits + shift, MASK, method, **opts), q, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(estimate_soft_labels(logits / T, MASK, method, temperature=1.0, **opts), q)


def test_mf_lu_gauge_and_regulariser():
    """MF-LU (Eq. 15-16, lambda=0.01) on consistent teachers: the fitted u v^T + c reproduces Z closely,
    v >= 0, and q is close to the truth up to the temperature distortion that the regulariser causes."""
    logits, q_true = consistent(MASK, 16, seed=10)
    z = torch.where(MASK, logits, 0.0) / T
    u, v, c, bad = mf_logit.lu_als(z, MASK, 0.01, 1e-10, 20000)
    assert bad == 0 and bool((v >= 0).all())
    fit = u.unsqueeze(1) * v.unsqueeze(-1) + c.unsqueeze(-1)
    assert ((fit - z) * MASK).abs().max() < 0.1
    # Mostly the same top class as the truth (the regulariser shrinks u, so not always).
    assert (torch.softmax(u, -1).argmax(-1) == q_true.argmax(-1)).double().mean() >= 0.75


# ------------------------------------------------------------------------------------------- losses


def _student_from_q(q: torch.Tensor) -> torch.Tensor:
    return (T * torch.log(q)).clone().requires_grad_(True)


@pytest.mark.parametrize("method", ["ce", "mf-p", "mf-lf"])
def test_bp_gradient_is_zero_at_consistent_optimum(method):
    logits, q_true = consistent(MASK, 8, seed=11)
    s = _student_from_q(q_true)
    (grad,) = torch.autograd.grad(unify_loss(s, logits, MASK, method), s)
    assert grad.abs().max() < 1e-10
    # ...and not elsewhere.
    s2 = (s.detach() + torch.randn_like(s)).requires_grad_(True)
    (grad2,) = torch.autograd.grad(unify_loss(s2, logits, MASK, method), s2)
    assert grad2.abs().max() > 1e-4


def test_bp_gradient_is_zero_at_sd_and_mf_lu_optima():
    logits = random_logits(MASK, 8, seed=12)
    s = _student_from_q(estimate_soft_labels(logits, MASK, "sd"))
    (grad,) = torch.autograd.grad(unify_loss(s, logits, MASK, "sd"), s)
    assert grad.abs().max() < 1e-12
    # MF-LU: at a converged ALS solution (u, v, c) of Eq. 15, re-solving (v, c) for u gives a zero gradient
    # in u, and the BP loss is Eq. 15's value there. (ALS converges linearly: mild logits keep this quick.)
    logits = random_logits(MASK, 4, scale=0.5, seed=12)
    z = torch.where(MASK, logits, 0.0) / T
    u, v, c, bad = mf_logit.lu_als(z, MASK, 0.01, 1e-13, 5000)
    assert bad == 0
    s = (T * u).requires_grad_(True)
    loss = unify_loss(s, logits, MASK, "mf-lu")
    (grad,) = torch.autograd.grad(loss, s)
    assert grad.abs().max() < 1e-9
    fit = u.unsqueeze(1) * v.unsqueeze(-1) + c.unsqueeze(-1)
    eq15 = (((z - fit) * MASK) ** 2).sum((1, 2)) + 0.01 * (u.pow(2).sum(-1) + v.pow(2).sum(-1))
    assert loss.item() == pytest.approx(eq15.mean().item(), rel=1e-9)


def test_ce_bp_loss_is_eq7_and_minimised_by_ce_estimate():
    logits = random_logits(MASK, 6, seed=13)
    q = estimate_soft_labels(logits, MASK, "ce", tol=1e-12)
    loss = unify_loss(T * torch.log(q), logits, MASK, "ce")
    expected = np.mean(
        [ce_objective_np(np.log(q[b].numpy()), pr) for b, pr in enumerate(teacher_p(logits, MASK))]
    )
    assert abs(loss.item() - expected) < 1e-10
    s = _student_from_q(q)
    (grad,) = torch.autograd.grad(unify_loss(s, logits, MASK, "ce"), s)
    assert grad.abs().max() < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bp_gradient_matches_finite_differences(method, weighted):
    """v and c are re-solved inside the loss; the autograd gradient (envelope theorem, v and c detached)
    must equal finite differences of the minimised loss."""
    logits = random_logits(MASK, 3, seed=14)
    weights = torch.rand(6, dtype=torch.float64) + 0.5 if weighted else None
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: unify_loss(x, logits, MASK, method, weights=weights), (s,))


def _brute_force_loss(method: str, s: torch.Tensor, logits: torch.Tensor, w: np.ndarray) -> float:
    """Per-class weighted BP losses written out per teacher, with v, c found by scipy (docs/unify.md)."""
    total = 0.0
    for b in range(s.shape[0]):
        u_logit = s[b].numpy() / T
        e = np.exp(u_logit - u_logit.max())
        q = e / e.sum()
        for i in range(MASK.shape[0]):
            idx = MASK[i].nonzero().flatten().numpy()
            zi = logits[b, i, idx].numpy() / T
            pi = np.exp(zi - zi.max())
            pi /= pi.sum()
            wi = w[idx]
            if method == "ce":
                qh = q[idx] / q[idx].sum()
                total -= float((wi * pi * np.log(qh)).sum())
            elif method == "mf-p":
                res = minimize_scalar(
                    lambda v, pi=pi, wi=wi, qi=q[idx]: (wi * (pi - qi * v) ** 2).sum(),
                    bounds=(0, 1e6),
                    method="bounded",
                    options={"xatol": 1e-12},
                )
                total += res.fun
            elif method == "mf-lf":
                res = minimize_scalar(
                    lambda c, zi=zi, wi=wi, ui=u_logit[idx]: (wi * (zi - ui - c) ** 2).sum()
                )
                total += res.fun
            elif method == "mf-lu":
                fun = lambda x, zi=zi, wi=wi, ui=u_logit[idx]: (
                    (wi * (zi - ui * x[0] - x[1]) ** 2).sum() + 0.01 * x[0] ** 2
                )
                res = minimize(
                    fun,
                    np.array([1.0, 0.0]),
                    bounds=[(0, None), (None, None)],
                    method="L-BFGS-B",
                    options={"ftol": 1e-15, "gtol": 1e-12},
                )
                total += res.fun
        if method == "mf-lu":
            total += 0.01 * float((u_logit**2).sum())
    return total / s.shape[0]


@pytest.mark.parametrize("method", ["ce", "mf-p", "mf-lu", "mf-lf"])
def test_weighted_bp_losses_scale_each_class_term(method):
    """BS weights enter every BP loss as per-class factors w_l on its terms (docs/unify.md)."""
    logits = random_logits(MASK, 3, scale=1.0, seed=15)
    s = torch.randn(3, 6, dtype=torch.float64) * 2
    w = torch.rand(6, dtype=torch.float64) * 2 + 0.1
    loss = unify_loss(s, logits, MASK, method, weights=w).item()
    assert loss == pytest.approx(_brute_force_loss(method, s, logits, w.numpy()), rel=1e-6, abs=1e-9)
    plain = unify_loss(s, logits, MASK, method).item()
    assert plain == pytest.approx(_brute_force_loss(method, s, logits, np.ones(6)), rel=1e-6, abs=1e-9)
    assert unify_loss(s, logits, MASK, method, weights=torch.ones(6)).item() == pytest.approx(
        plain, rel=1e-12
    )


def test_sd_bp_and_soft_cross_entropy():
    logits = random_logits(MASK, 4, seed=16)
    s = torch.randn(4, 6, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64) + 0.2
    q = estimate_soft_labels(logits, MASK, "sd")
    expected = -(w * q * torch.log_softmax(s / T, -1)).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(s, q, weights=w), expected)
    torch.testing.assert_close(unify_loss(s, logits, MASK, "sd", weights=w), expected)
    # Zero gradient when the student's softmax(z / T) equals q (unweighted).
    st = _student_from_q(q)
    (grad,) = torch.autograd.grad(soft_cross_entropy(st, q), st)
    assert grad.abs().max() < 1e-12
    # Temperature applies to the student's logits.
    torch.testing.assert_close(soft_cross_entropy(s, q, temperature=2.0), soft_cross_entropy(s / 2, q, 1.0))


# ------------------------------------------------------------------------------------------- BS


def test_balance_weights():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    torch.testing.assert_close(balance_weights(q), 1 / torch.tensor([0.6, 0.3, 0.1]))
    assert balance_weights(q.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        balance_weights(q[0])
    with pytest.raises(ValueError, match=r"class.*\[2\].*zero"):
        balance_weights(torch.tensor([[0.5, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        balance_weights(torch.tensor([[1.5, -0.5]]))
    # Balanced soft labels: every weight equals L.
    torch.testing.assert_close(balance_weights(torch.full((4, 5), 0.2)), torch.full((5,), 5.0))


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    logits = random_logits(MASK, 64, seed=17)
    q_cpu = estimate_soft_labels(logits, MASK, method)
    q_gpu = estimate_soft_labels(logits.cuda(), MASK.cuda(), method)
    assert q_gpu.device.type == "cuda"
    torch.testing.assert_close(q_gpu.cpu(), q_cpu, atol=1e-6, rtol=0)
    s = torch.randn(64, 6, dtype=torch.float64)
    torch.testing.assert_close(
        unify_loss(s.cuda(), logits.cuda(), MASK.cuda(), method).cpu(), unify_loss(s, logits, MASK, method)
    )


def test_convergence_warning():
    logits = random_logits(MASK, 8, seed=20)
    with pytest.warns(ConvergenceWarning, match="mf-p: .* did not reach the tolerance in max_iter=2"):
        estimate_soft_labels(logits, MASK, "mf-p", max_iter=2)
    with pytest.warns(ConvergenceWarning, match="ce: "):
        estimate_soft_labels(logits, MASK, "ce", max_iter=1, tol=1e-300)


def test_chunking_does_not_change_results():
    logits = random_logits(MASK, 50, seed=18)
    for method in METHODS:
        opts = FAST[method]
        torch.testing.assert_close(
            estimate_soft_labels(logits, MASK, method, chunk_size=7, **opts),
            estimate_soft_labels(logits, MASK, method, **opts),
        )


def test_ce_solver_internals_singular_direction():
    """The Newton system is singular along shifts of u; the reduced solve returns a finite descent step."""
    logits = random_logits(MASK, 4, seed=19)
    z = torch.where(MASK, logits, 0.0) / T
    pbar = torch.where(MASK, torch.log_softmax(torch.where(MASK, z, -math.inf), -1).exp(), 0.0).sum(1)
    u = torch.zeros(4, 6, dtype=torch.float64)
    g, d = ce_mod._newton_step(u, pbar, MASK, ce_mod._projector(MASK, torch.float64))
    assert bool(torch.isfinite(d).all()) and bool(((g * d).sum(-1) < 0).all())
