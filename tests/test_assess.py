"""zoo.assess: log-domain Sinkhorn against POT, the cost matrix, LEEP / NCE / LogME and Alg. 4's score."""

from __future__ import annotations

import importlib
import math

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from torch import nn

from zoo.assess import (
    class_centres,
    cost_matrix,
    fit_fictitious_student,
    leep,
    logme,
    nce,
    sinkhorn,
    sinkhorn_score,
)
from zoo.assess.sinkhorn_score import fold_ids

F64 = torch.float64
SOLVER = importlib.import_module("zoo.assess.sinkhorn")  # the module; the package exports the function


@pytest.fixture(params=["kernel", "lse"])
def path(request, monkeypatch):
    """Run a test on both of sinkhorn's paths: matrix products with stabilised kernels (taken when the
    cost's spread allows) and torch.logsumexp over [B, m, n] (forced here by a zero spread limit)."""
    if request.param == "lse":
        monkeypatch.setattr(SOLVER, "KERNEL_SPREAD", {torch.float32: 0.0, torch.float64: 0.0})
    return request.param


def simplex(b: int, k: int, seed: int, sharp: float = 2.0, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(b, k, generator=g, dtype=F64), 1).to(dtype)


def rand_cost(m: int, n: int, seed: int, high: float = 2.0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (m, n) if batch is None else (batch, m, n)
    return high * torch.rand(*shape, generator=g, dtype=F64)


def plan_of(alpha, beta, cost, eps):
    return torch.exp((alpha[..., :, None] + beta[..., None, :] - cost) / eps)


def entropic_value(plan: np.ndarray, cost: np.ndarray, eps: float) -> float:
    nz = plan > 0
    return float((plan * cost).sum() + eps * (plan[nz] * np.log(plan[nz])).sum())


# ------------------------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_sinkhorn_value_matches_pot(eps, path):
    p_t, p_s, cost = simplex(6, 4, 0), simplex(6, 7, 1), rand_cost(4, 7, 2)
    value, alpha, beta = sinkhorn(p_t, p_s, cost, eps=eps, n_iter=5000, tol=1e-12)
    plan = plan_of(alpha, beta, cost, eps)
    for i in range(6):
        a, b, m = p_t[i].numpy(), p_s[i].numpy(), cost.numpy()
        ref_log = ot.bregman.sinkhorn_log(a, b, m, eps, numItermax=10000, stopThr=1e-13)
        ref_plan = ot.sinkhorn(a, b, m, eps, numItermax=10000, stopThr=1e-13)
        linear = ot.sinkhorn2(a, b, m, eps, numItermax=10000, stopThr=1e-13)  # POT's value: <T, M> only
        assert float(value[i]) == pytest.approx(entropic_value(ref_log, m, eps), abs=1e-9)
        assert float(value[i]) == pytest.approx(entropic_value(ref_plan, m, eps), abs=1e-9)
        assert float((plan[i] * cost).sum()) == pytest.approx(float(linear), abs=1e-9)
        np.testing.assert_allclose(plan[i].numpy(), ref_log, atol=1e-10)


def test_sinkhorn_batched_equals_looped_and_batched_cost(path):
    p_t, p_s = simplex(5, 3, 3), simplex(5, 6, 4)
    costs = rand_cost(3, 6, 5, batch=5)
    value, alpha, beta = sinkhorn(p_t, p_s, costs, n_iter=100)
    for i in range(5):
        v, a, b = sinkhorn(p_t[i : i + 1], p_s[i : i + 1], costs[i], n_iter=100)
        torch.testing.assert_close(value[i : i + 1], v, rtol=0, atol=1e-12)
        torch.testing.assert_close(alpha[i : i + 1], a, rtol=0, atol=1e-12)
        torch.testing.assert_close(beta[i : i + 1], b, rtol=0, atol=1e-12)
    shared, _, _ = sinkhorn(p_t, p_s, costs[0], n_iter=100)
    expanded, _, _ = sinkhorn(p_t, p_s, costs[0].expand(5, 3, 6), n_iter=100)
    torch.testing.assert_close(shared, expanded, rtol=0, atol=1e-12)


def test_sinkhorn_potentials_satisfy_marginals_and_duality(path):
    p_t, p_s, cost = simplex(8, 5, 6), simplex(8, 4, 7), rand_cost(5, 4, 8)
    eps = 0.1
    value, alpha, beta = sinkhorn(p_t, p_s, cost, eps=eps, n_iter=1000, tol=1e-12)
    plan = plan_of(alpha, beta, cost, eps)
    torch.testing.assert_close(plan.sum(2), p_t, rtol=0, atol=1e-10)
    torch.testing.assert_close(plan.sum(1), p_s, rtol=0, atol=1e-12)
    # Strong duality: at the optimum the primal value is <alpha, p_t> + <beta, p_s> (Eq. 13, footnote 1).
    dual = (alpha * p_t).sum(1) + (beta * p_s).sum(1)
    torch.testing.assert_close(value, dual, rtol=0, atol=1e-9)


def test_beta_is_the_gradient_wrt_p_s():
    """Eq. 14: moving mass from class k to class j of p_s changes S_eps at rate beta_j - beta_k."""
    p_t, p_s, cost = simplex(1, 4, 9), simplex(1, 5, 10), rand_cost(4, 5, 11)
    kw = dict(eps=0.2, n_iter=5000, tol=1e-13)
    _, _, beta = sinkhorn(p_t, p_s, cost, **kw)
    h = 1e-6
    for j, k in [(0, 1), (2, 4), (3, 0)]:
        d = torch.zeros_like(p_s)
        d[0, j], d[0, k] = h, -h
        up, _, _ = sinkhorn(p_t, p_s + d, cost, **kw)
        down, _, _ = sinkhorn(p_t, p_s - d, cost, **kw)
        slope = float((up - down) / (2 * h))
        assert slope == pytest.approx(float(beta[0, j] - beta[0, k]), abs=1e-6)


def test_sinkhorn_zero_probabilities_give_the_reduced_problem(path):
    p_t, p_s, cost = simplex(3, 5, 12), simplex(3, 6, 13), rand_cost(5, 6, 14)
    p_t[:, 1] = 0
    p_s[:, [0, 4]] = 0
    p_t, p_s = p_t / p_t.sum(1, keepdim=True), p_s / p_s.sum(1, keepdim=True)
    value, alpha, beta = sinkhorn(p_t, p_s, cost, n_iter=1000, tol=1e-12)
    assert torch.isfinite(value).all() and torch.isfinite(alpha).all() and torch.isfinite(beta).all()
    keep_t, keep_s = [0, 2, 3, 4], [1, 2, 3, 5]
    reduced, _, _ = sinkhorn(p_t[:, keep_t], p_s[:, keep_s], cost[keep_t][:, keep_s], n_iter=1000, tol=1e-12)
    torch.testing.assert_close(value, reduced, rtol=0, atol=1e-12)
    # float32 too, and the gradient through the iterations stays finite
    p32 = p_s.float().requires_grad_(True)
    v32, _, _ = sinkhorn(p_t.float(), p32, cost.float())
    v32.sum().backward()
    assert torch.isfinite(v32).all() and torch.isfinite(p32.grad).all()


def test_sinkhorn_float32_at_eps_01_does_not_underflow():
    """Costs up to 20 at eps = 0.1: exp(-M / eps) = exp(-200) is 0 in float32; the log domain is fine."""
    p_t, p_s = simplex(16, 6, 15, sharp=4.0), simplex(16, 9, 16, sharp=4.0)
    cost = rand_cost(6, 9, 17, high=20.0)
    assert (torch.exp(-cost.float() / 0.1) == 0).any()
    v32, a32, b32 = sinkhorn(p_t.float(), p_s.float(), cost.float(), eps=0.1, n_iter=500)
    v64, _, _ = sinkhorn(p_t, p_s, cost, eps=0.1, n_iter=500)
    assert v32.dtype == torch.float32
    assert torch.isfinite(v32).all() and torch.isfinite(a32).all() and torch.isfinite(b32).all()
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-4)


def test_sinkhorn_kernel_path_in_float32_near_its_spread_limit():
    """Spread of M / eps just under the limit (60) with near-one-hot histograms (entries down to 1e-40
    and exact zeros in float32): the matrix-product path stays finite and agrees with float64."""
    p_t, p_s = simplex(32, 6, 27, sharp=25.0), simplex(32, 7, 28, sharp=25.0)
    cost = rand_cost(6, 7, 29, high=5.9)
    assert SOLVER._kernel_is_safe(cost.float()[None] / 0.1)
    assert (p_t.float() == 0).any() and (p_s.float() == 0).any()
    v32, a32, b32 = sinkhorn(p_t.float(), p_s.float(), cost.float(), eps=0.1, n_iter=300)
    v64, _, _ = sinkhorn(p_t, p_s, cost, eps=0.1, n_iter=300)
    assert torch.isfinite(v32).all() and torch.isfinite(a32).all() and torch.isfinite(b32).all()
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-4)


def test_sinkhorn_ignores_a_callers_autocast():
    p_t, p_s, cost = (
        simplex(8, 5, 30, dtype=torch.float32),
        simplex(8, 6, 31, dtype=torch.float32),
        rand_cost(5, 6, 32),
    )
    plain, _, _ = sinkhorn(p_t, p_s, cost.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _, beta = sinkhorn(p_t, p_s, cost.float())
    assert beta.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=1e-6)


def test_sinkhorn_tol_stops_early_within_tolerance(path):
    p_t, p_s, cost = simplex(4, 5, 18), simplex(4, 5, 19), rand_cost(5, 5, 20)
    tol = 1e-4
    value, alpha, beta = sinkhorn(p_t, p_s, cost, eps=0.05, n_iter=2000, tol=tol)
    full, _, _ = sinkhorn(p_t, p_s, cost, eps=0.05, n_iter=2000)
    plan = plan_of(alpha, beta, cost, 0.05)
    err = (plan.sum(2) - p_t).abs().sum(1).max()
    assert float(err) <= tol
    assert not torch.equal(value, full)  # it stopped before 2000 iterations
    assert float((value - full).abs().max()) < 1e-3


def test_sinkhorn_batched_cost_matches_pot_solve_batch():
    p_t, p_s, cost = simplex(4, 3, 21), simplex(4, 4, 22), rand_cost(3, 4, 23, batch=4)
    value, _, _ = sinkhorn(p_t, p_s, cost, n_iter=2000, tol=1e-12)
    res = ot.batch.solve_batch(cost, 0.1, p_t, p_s, max_iter=2000, tol=1e-12, method="log_sinkhorn")
    torch.testing.assert_close(value, res.value, rtol=0, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sinkhorn_cuda_matches_cpu():
    p_t, p_s, cost = (
        simplex(64, 5, 24, dtype=torch.float32),
        simplex(64, 8, 25, dtype=torch.float32),
        rand_cost(5, 8, 26).float(),
    )
    cpu, _, _ = sinkhorn(p_t, p_s, cost)
    gpu, _, beta = sinkhorn(p_t.cuda(), p_s.cuda(), cost.cuda())
    assert beta.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p_t=torch.ones(2, 3)), "rows of p_t must sum to 1"),
        (dict(p_s=torch.full((2, 4), float("nan"))), "p_s holds NaN"),
        (dict(p_t=torch.ones(3) / 3), r"p_t must be a floating-point tensor \[B, classes\]"),
        (dict(p_s=torch.ones(3, 4) / 4), "same batch size"),
        (dict(cost=torch.ones(4, 3)), "cost must have shape"),
        (dict(cost=-torch.ones(3, 4)), "cost must be >= 0"),
        (dict(eps=0.0), "eps must be a positive"),
        (dict(n_iter=0), "n_iter must be a positive integer"),
    ],
)
def test_sinkhorn_errors(kwargs, match):
    args = dict(p_t=torch.ones(2, 3) / 3, p_s=torch.ones(2, 4) / 4, cost=torch.ones(3, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sinkhorn(**args)


# ---------------------------------------------------------------------------------------- cost matrix


def test_class_centres_are_class_means():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 2])
    centres = class_centres(x, y, 3)
    for c in range(3):
        torch.testing.assert_close(centres[c], x[y == c].mean(0))
    with pytest.raises(ValueError, match=r"classes \[3\] have no labelled image"):
        class_centres(x, y, 4)


def test_cost_matrix_normalisations():
    g = torch.Generator().manual_seed(1)
    head = nn.Linear(6, 4)
    e_s = 5 * torch.rand(3, 6, generator=g)  # raw feature means: positive, norm ~ 7
    w = head.weight.detach()
    literal = torch.cdist(w / w.norm(dim=1, keepdim=True), e_s)  # Eq. 7-8 as written
    torch.testing.assert_close(cost_matrix(head, e_s, "none"), literal)
    torch.testing.assert_close(cost_matrix(w, e_s, "none"), literal)

    m = cost_matrix(head, e_s, "l2")
    cos = torch.nn.functional.cosine_similarity(w[:, None, :], e_s[None, :, :], dim=-1)
    torch.testing.assert_close(m, (2 - 2 * cos).clamp_min(0).sqrt())
    assert m.shape == (4, 3) and bool((m >= 0).all()) and bool((m <= 2).all())
    # l2 and scale do not depend on the features' global scale; none does
    torch.testing.assert_close(cost_matrix(head, 10 * e_s, "l2"), m)
    torch.testing.assert_close(cost_matrix(head, 10 * e_s, "scale"), cost_matrix(head, e_s, "scale"))
    assert not torch.allclose(cost_matrix(head, 10 * e_s, "none"), literal)
    # scale keeps relative norms; with equal norms it is l2
    unit = e_s / e_s.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cost_matrix(head, 3 * unit, "scale"), cost_matrix(head, unit, "l2"))


def test_cost_matrix_errors():
    with pytest.raises(ValueError, match="normalisation must be one of"):
        cost_matrix(torch.ones(2, 3), torch.ones(2, 3), "max")
    with pytest.raises(ValueError, match="student_centres must have 3 columns"):
        cost_matrix(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="teacher_centres has a zero row"):
        cost_matrix(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="student_centres holds NaN"):
        cost_matrix(torch.ones(2, 3), torch.full((2, 3), float("nan")))


# ------------------------------------------------------------------------------------------ LEEP, NCE


def test_leep_hand_computed():
    # theta rows: x1 (1/2, 1/2) y=0; x2 (1, 0) y=0; x3 (0, 1) y=1.
    # P(y, z) = 1/3 [[1/2 + 1, 1/2], [0, 1]] -> P(z) = (1/2, 1/2), P(y=0|z) = (1, 1/3), P(y=1|z) = (0, 2/3)
    # EEP: x1 1/2*1 + 1/2*1/3 = 2/3; x2 1; x3 2/3 -> LEEP = (2 log(2/3) + 0) / 3
    theta = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert leep(theta, torch.tensor([0, 0, 1])) == pytest.approx(2 * math.log(2 / 3) / 3, abs=1e-12)
    # a teacher whose classes are the labels, certain and right: P(y|z) is the identity, LEEP = 0
    assert leep(torch.eye(3), torch.tensor([0, 1, 2])) == pytest.approx(0.0, abs=1e-12)


def test_leep_matches_a_loop_and_ignores_teacher_class_order():
    probs, y = simplex(40, 5, 27), torch.arange(40) % 3
    n = 40
    joint = np.zeros((3, 5))
    for i in range(n):
        joint[y[i]] += probs[i].numpy() / n
    cond = joint / joint.sum(0, keepdims=True)
    ref = np.mean([np.log(cond[y[i]] @ probs[i].numpy()) for i in range(n)])
    assert leep(probs, y) == pytest.approx(ref, abs=1e-12)
    assert leep(probs[:, [4, 2, 0, 1, 3]], y) == pytest.approx(ref, abs=1e-12)


def test_nce_hand_computed():
    # P(z=0, y=0) = P(z=0, y=1) = 1/4, P(z=1, y=1) = 1/2 -> -H(Y|Z) = 2 * 1/4 log(1/2) + 1/2 log 1
    assert nce(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])) == pytest.approx(-0.5 * math.log(2))
    # Z determines Y (even through a relabelling): H(Y|Z) = 0
    assert nce(torch.tensor([3, 1, 1, 0]), torch.tensor([0, 1, 1, 2])) == pytest.approx(0.0)
    # Z independent of Y, uniform: -H(Y) = -log 2
    assert nce(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])) == pytest.approx(-math.log(2))


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (leep, (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), "source_probs must be probabilities"),
        (leep, (torch.ones(4, 2) / 2, torch.tensor([1, 1, 1, 1])), "missing|one class only|every class"),
        (leep, (torch.ones(4, 2) / 2, torch.tensor([0, 0, 0, 0])), "one class only"),
        (leep, (torch.ones(4, 2) / 2, torch.tensor([0, 1, 0])), "labels has 3 entries but there are 4"),
        (leep, (torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1])), "source_probs holds NaN"),
        (nce, (torch.tensor([0, 1, 0]), torch.tensor([1, 1, 1])), "every class present"),
        (nce, (torch.tensor([0, -1, 0]), torch.tensor([0, 1, 0])), "source_labels must be non-negative"),
        (nce, (torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0, 1, 0])), "source_labels must hold integer"),
        (nce, (torch.tensor([0, 1, 0]), torch.tensor([0.0, 1.0, float("nan")])), "labels holds NaN"),
        (nce, (torch.tensor([0, 1, 0]), torch.tensor([0, 2, 0])), r"classes \[1\] have no sample"),
        (logme, (torch.randn(4), torch.tensor([0, 1, 0, 1])), "features must be 2-D"),
        (logme, (torch.randn(4, 2), torch.tensor([[0, 1, 0, 1]])), "labels must be 1-D"),
    ],
)
def test_score_errors(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


# -------------------------------------------------------------------------------------------- LogME


def brute_force_log_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of log N(y; 0, I / beta + F F' / alpha) per sample: the evidence written as
    the Gaussian marginal of y (no SVD, no fixed point), maximised by Nelder-Mead on (log alpha, log beta)."""
    n = f.shape[0]
    gram = f @ f.T

    def neg(log_ab):
        alpha, beta = np.exp(log_ab)
        chol = np.linalg.cholesky(np.eye(n) / beta + gram / alpha)
        w = np.linalg.solve(chol, y)
        return 0.5 * (w @ w) + np.log(np.diag(chol)).sum() + 0.5 * n * np.log(2 * np.pi)

    options = {"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
    runs = [minimize(neg, x0, method="Nelder-Mead", options=options) for x0 in ([0.0, 0.0], [2.0, 2.0])]
    return -min(r.fun for r in runs) / n


@pytest.mark.parametrize("n, d", [(30, 4), (8, 12)])
def test_logme_matches_brute_force_evidence(n, d):
    rng = np.random.default_rng(n + d)
    y = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + 1.5 * np.eye(3)[y] @ rng.normal(size=(3, d))
    ref = np.mean([brute_force_log_evidence(f, (y == c).astype(float)) for c in range(3)])
    assert logme(torch.tensor(f), torch.tensor(y)) == pytest.approx(ref, abs=1e-6)


def test_logme_prefers_informative_features():
    g = torch.Generator().manual_seed(2)
    y = torch.arange(200) % 4
    noise = torch.randn(200, 16, generator=g)
    informative = noise + 3 * torch.nn.functional.one_hot(y, 4).float() @ torch.randn(4, 16, generator=g)
    assert logme(informative, y) > logme(noise, y)


# ------------------------------------------------------------------------- fictitious student, Alg. 4


def test_fictitious_student_matches_sklearn():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g, dtype=F64) + torch.nn.functional.one_hot(y, 3).double() @ torch.randn(
        3, 5, generator=g, dtype=F64
    )
    l2 = 0.05
    student = fit_fictitious_student(x, y, l2=l2)
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    ref = LogisticRegression(C=1 / (l2 * 60), tol=1e-12, max_iter=10000).fit(z, y.numpy())
    probs = torch.softmax(student.logits(x), 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(z), atol=1e-6)
    # deterministic: a second fit is bit-identical
    torch.testing.assert_close(fit_fictitious_student(x, y, l2=l2).weight, student.weight, rtol=0, atol=0)
    with torch.no_grad():  # a job extracting features under no_grad can still fit
        fit_fictitious_student(x, y, l2=l2)


def make_task(seed: int, n_per_class: int = 30, d: int = 8, classes: int = 3):
    """Features with one cluster per task class, and a teacher whose head rows point at the clusters."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_per_class * classes) % classes
    means = 3 * torch.randn(classes, d, generator=g, dtype=F64)
    x = means[y] + torch.randn(len(y), d, generator=g, dtype=F64)
    return x, y, means


def test_sinkhorn_score_is_its_definition():
    x, y, means = make_task(4)
    head = nn.Linear(8, 4).double()
    logits = head(x).detach()
    got = sinkhorn_score(x, logits, y, head, tau=2.0, eps=0.2, n_iter=50, l2=0.01)
    cost = cost_matrix(head, class_centres(x, y, 3), "l2")
    student = fit_fictitious_student(x, y, 3, l2=0.01)
    value, _, _ = sinkhorn(
        torch.softmax(logits / 2.0, 1), torch.softmax(student.logits(x) / 2.0, 1), cost, eps=0.2, n_iter=50
    )
    assert got == pytest.approx(-float(value.mean()), abs=1e-12)


def test_sinkhorn_score_ranks_a_related_teacher_above_an_unrelated_one():
    x, y, means = make_task(5)
    related = nn.Linear(8, 3).double()
    related.weight.data = means.clone()  # a teacher trained on these classes: head rows = class directions
    unrelated = nn.Linear(8, 3).double()
    unrelated.weight.data = -means.clone()  # a teacher whose classes sit away from the task's
    scores = {name: sinkhorn_score(x, h(x).detach(), y, h) for name, h in [("r", related), ("u", unrelated)]}
    assert scores["r"] > scores["u"]


def test_sinkhorn_score_cross_fitted():
    x, y, _ = make_task(6)
    head = nn.Linear(8, 3).double()
    logits = head(x).detach()
    ids = fold_ids(y, 3)
    assert all(torch.bincount(ids[y == c]).tolist() == [10, 10, 10] for c in range(3))
    in_sample = sinkhorn_score(x, logits, y, head)
    crossed = sinkhorn_score(x, logits, y, head, folds=3)
    assert math.isfinite(crossed) and crossed != in_sample
    with pytest.raises(ValueError, match="folds = 31 exceeds"):
        sinkhorn_score(x, logits, y, head, folds=31)


def test_sinkhorn_score_errors():
    x, y, _ = make_task(7)
    head = nn.Linear(8, 3).double()
    logits = head(x).detach()
    with pytest.raises(ValueError, match="head has 4 outputs but teacher_logits has 3"):
        sinkhorn_score(x, logits, y, nn.Linear(8, 4))
    with pytest.raises(ValueError, match="head weight must have 8 columns"):
        sinkhorn_score(x, logits, y, nn.Linear(7, 3))
    with pytest.raises(ValueError, match="teacher_logits must have 90 rows"):
        sinkhorn_score(x, logits[:10], y, head)
    with pytest.raises(ValueError, match="one class only"):
        sinkhorn_score(x, logits, torch.zeros_like(y), head)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features holds NaN"):
        sinkhorn_score(bad, logits, y, head)
