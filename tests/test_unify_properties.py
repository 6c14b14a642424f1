"""Property tests (hypothesis) of zoo.unify on random masks and logits (paper 001, Sec. 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from zoo.unify import METHODS, estimate_soft_labels, unify_loss
from zoo.unify._common import components

pytestmark = pytest.mark.filterwarnings("ignore::zoo.unify.ConvergenceWarning")

T = 3.0
JUNK = [float("nan"), float("inf"), -float("inf"), 1e300, -7.0]
# ALS runs are capped: these properties are about the computation, not about ALS's (slow) convergence.
OPTS = {"sd": {}, "ce": {"tol": 1e-11}, "mf-p": {"max_iter": 40}, "mf-lu": {"max_iter": 40}, "mf-lf": {}}
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, max_teachers: int = 4, max_classes: int = 6, scale: float = 12.0):
    """(logits [B, N, L] float64 with junk at masked entries, mask [N, L]) with every teacher having a class
    and every class a teacher."""
    n = draw(st.integers(1, max_teachers))
    l_ = draw(st.integers(1, max_classes))
    b = draw(st.integers(1, 3))
    bits = np.array(draw(st.lists(st.booleans(), min_size=n * l_, max_size=n * l_))).reshape(n, l_)
    bits[np.arange(n), np.arange(n) % l_] = True  # every teacher has a class
    bits[np.arange(l_) % n, np.arange(l_)] = True  # every class has a teacher
    mask = torch.from_numpy(bits)
    values = draw(arrays(np.float64, (b, n, l_), elements=st.floats(-scale * T, scale * T)))
    junk = draw(arrays(np.float64, (b, n, l_), elements=st.sampled_from(JUNK)))
    logits = torch.where(mask, torch.from_numpy(values), torch.from_numpy(junk))
    return logits, mask


def connected(mask: torch.Tensor) -> bool:
    return components(mask)[2] == 1


@SETTINGS
@given(problems())
def test_rows_are_distributions(problem):
    logits, mask = problem
    for method in METHODS:
        q = estimate_soft_labels(logits, mask, method, **OPTS[method])
        assert q.shape == (logits.shape[0], mask.shape[1])
        assert bool(torch.isfinite(q).all()) and bool((q >= 0).all())
        torch.testing.assert_close(q.sum(-1), torch.ones(q.shape[0], dtype=q.dtype))


@SETTINGS
@given(problems(), st.data())
def test_masked_entries_are_ignored(problem, data):
    logits, mask = problem
    other_junk = data.draw(arrays(np.float64, tuple(logits.shape), elements=st.sampled_from(JUNK)))
    other = torch.where(mask, logits, torch.from_numpy(other_junk))
    student = torch.randn(logits.shape[0], mask.shape[1], dtype=torch.float64, requires_grad=True)
    for method in METHODS:
        q1 = estimate_soft_labels(logits, mask, method, **OPTS[method])
        q2 = estimate_soft_labels(other, mask, method, **OPTS[method])
        assert torch.equal(q1, q2)
        loss1 = unify_loss(student, logits, mask, method)
        loss2 = unify_loss(student, other, mask, method)
        assert torch.equal(loss1, loss2) and bool(torch.isfinite(loss1))
        (grad,) = torch.autograd.grad(loss1, student)
        assert bool(torch.isfinite(grad).all())


@SETTINGS
@given(problems(scale=5.0), st.randoms(use_true_random=False))
def test_invariant_to_permuting_teachers_and_classes(problem, rnd):
    logits, mask = problem
    n, l_ = mask.shape
    tp = torch.tensor(rnd.sample(range(n), n))
    cp = torch.tensor(rnd.sample(range(l_), l_))
    permuted_logits = logits[:, tp][:, :, cp]
    permuted_mask = mask[tp][:, cp]
    for method in METHODS:
        q = estimate_soft_labels(logits, mask, method, **OPTS[method])
        qp = estimate_soft_labels(permuted_logits, permuted_mask, method, **OPTS[method])
        torch.testing.assert_close(qp, q[:, cp], atol=1e-6, rtol=0)
        student = torch.randn(logits.shape[0], l_, dtype=torch.float64)
        torch.testing.assert_close(
            unify_loss(student[:, cp], permuted_logits, permuted_mask, method),
            unify_loss(student, logits, mask, method),
        )


@st.composite
def consistent_problems(draw):
    """Teachers derived from one q by Eq. 6 on a connected overlap graph: (logits, mask, q)."""
    logits, mask = draw(problems(max_teachers=5, max_classes=7))
    assume(connected(mask))
    b, n, l_ = logits.shape
    u = torch.from_numpy(draw(arrays(np.float64, (b, l_), elements=st.floats(-4, 4))))
    shift = torch.from_numpy(draw(arrays(np.float64, (b, n, 1), elements=st.floats(-50, 50))))
    logits = torch.where(mask, T * (u.unsqueeze(1) + shift), logits)
    return logits, mask, torch.softmax(u, -1)


@SETTINGS
@given(consistent_problems())
def test_consistent_teachers_are_recovered(problem):
    logits, mask, q_true = problem
    # (MF-P's ALS recovers q too but may need ~1e4 iterations on such draws: test_unify.py checks it.)
    for method, opts in (("ce", {"tol": 1e-12}), ("mf-lf", {})):
        q = estimate_soft_labels(logits, mask, method, **opts)
        torch.testing.assert_close(q, q_true, atol=1e-8, rtol=0, msg=method)


@SETTINGS
@given(consistent_problems())
def test_bp_losses_have_zero_gradient_at_consistent_optimum(problem):
    logits, mask, q_true = problem
    student = (T * torch.log(q_true)).requires_grad_(True)
    for method in ("ce", "mf-p", "mf-lf"):
        (grad,) = torch.autograd.grad(unify_loss(student, logits, mask, method), student)
        assert grad.abs().max() < 1e-8, method


def _ce_objective(u: np.ndarray, groups) -> float:
    total = 0.0
    for idx, p in groups:
        uu = u[idx]
        m = uu.max()
        total -= float(p @ (uu - m - np.log(np.exp(uu - m).sum())))
    return total


def _ce_grad(u: np.ndarray, groups) -> np.ndarray:
    g = np.zeros_like(u)
    for idx, p in groups:
        e = np.exp(u[idx] - u[idx].max())
        g[idx] += e / e.sum() - p
    return g


@SETTINGS
@given(problems(max_teachers=5, max_classes=7))
def test_ce_reaches_the_scipy_optimum_on_inconsistent_teachers(problem):
    """Eq. 9 is convex: our minimum is at least as low as an independent scipy BFGS minimum, per sample."""
    logits, mask = problem
    q = estimate_soft_labels(logits, mask, "ce")
    for b in range(logits.shape[0]):
        groups = []
        for i in range(mask.shape[0]):
            idx = mask[i].nonzero().flatten().numpy()
            z = logits[b, i, idx].numpy() / T
            e = np.exp(z - z.max())
            groups.append((idx, e / e.sum()))
        ref = minimize(
            _ce_objective,
            np.zeros(mask.shape[1]),
            args=(groups,),
            jac=_ce_grad,
            method="BFGS",
            options={"gtol": 1e-9, "maxiter": 5000},
        )
        ours = _ce_objective(np.log(q[b].numpy()), groups)
        assert ours <= ref.fun + 1e-7
        if connected(mask) and ref.success:
            qr = np.exp(ref.x - ref.x.max())
            np.testing.assert_allclose(q[b].numpy(), qr / qr.sum(), atol=1e-3)


@SETTINGS
@given(problems())
def test_sd_closed_form(problem):
    logits, mask = problem
    q = estimate_soft_labels(logits, mask, "sd")
    expected = torch.zeros(logits.shape[0], mask.shape[1], dtype=torch.float64)
    for i in range(mask.shape[0]):
        idx = mask[i].nonzero().flatten()
        expected[:, idx] += torch.softmax(logits[:, i, idx] / T, -1) / mask.shape[0]
    torch.testing.assert_close(q, expected)
