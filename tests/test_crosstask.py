"""zoo.crosstask: the Sinkhorn loss of Eq. 11 with the gradient of Eq. 15, standard KD and RKD."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from zoo.architectures import build_model, split_head
from zoo.assess import sinkhorn
from zoo.crosstask import (
    crosstask_loss,
    crosstask_loss_fn,
    kd_loss,
    kd_loss_fn,
    kd_term,
    rkd_angle,
    rkd_distance,
    rkd_loss,
    rkd_loss_fn,
    sinkhorn_term,
)

F64 = torch.float64


def problem(seed: int, b: int = 6, m: int = 4, n: int = 5, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(b, n, generator=g, dtype=F64)).to(dtype)
    teacher = (2 * torch.randn(b, m, generator=g, dtype=F64)).to(dtype)
    cost = (2 * torch.rand(m, n, generator=g, dtype=F64)).to(dtype)
    labels = torch.randint(0, n, (b,), generator=g)
    return student, teacher, cost, labels


# ---------------------------------------------------------------------------------- Sinkhorn loss


def test_eq15_gradient_matches_autograd_through_a_converged_solve():
    student, teacher, cost, _ = problem(0)
    tau, eps = 2.0, 0.5
    leaf = student.clone().requires_grad_(True)
    sinkhorn_term(leaf, teacher, cost, tau=tau, eps=eps, n_iter=100).backward()
    # reference: autograd through every Sinkhorn iteration of a solve that has converged
    ref_leaf = student.clone().requires_grad_(True)
    p_t = torch.softmax(teacher / tau, 1)
    value, _, _ = sinkhorn(p_t, torch.softmax(ref_leaf / tau, 1), cost, eps=eps, n_iter=100)
    value.mean().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-7, atol=1e-10)
    # and it is Eq. 15 written out: (beta - <beta, p_S>) * p_S / tau, averaged over the batch
    p_s = torch.softmax(student / tau, 1)
    _, _, beta = sinkhorn(p_t, p_s, cost, eps=eps, n_iter=100)
    eq15 = (beta - (beta * p_s).sum(1, keepdim=True)) * p_s / tau / student.shape[0]
    torch.testing.assert_close(leaf.grad, eq15, rtol=1e-9, atol=1e-12)


def test_sinkhorn_term_value_and_no_gradient_to_teacher():
    student, teacher, cost, _ = problem(1)
    teacher = teacher.clone().requires_grad_(True)
    term = sinkhorn_term(student.requires_grad_(True), teacher, cost, tau=3.0, eps=0.1, n_iter=100)
    value, _, _ = sinkhorn(torch.softmax(teacher / 3.0, 1), torch.softmax(student / 3.0, 1), cost, 0.1, 100)
    assert float(term.detach()) == pytest.approx(float(value.detach().mean()), abs=1e-12)
    term.backward()
    assert teacher.grad is None and student.grad is not None


def test_crosstask_loss_is_cross_entropy_plus_lambda_sinkhorn():
    student, teacher, cost, labels = problem(2)
    loss = crosstask_loss(student, teacher, labels, cost, lam=7.0, tau=3.0, eps=0.1, n_iter=50)
    expected = F.cross_entropy(student, labels) + 7.0 * sinkhorn_term(student, teacher, cost, 3.0, 0.1, 50)
    assert float(loss) == pytest.approx(float(expected), abs=1e-12)
    assert float(crosstask_loss(student, teacher, labels, cost, lam=0.0)) == pytest.approx(
        float(F.cross_entropy(student, labels))
    )


def test_crosstask_loss_float32_at_eps_01_is_finite():
    student, teacher, cost, labels = problem(3, b=32, m=10, n=50, dtype=torch.float32)
    student = (10 * student).requires_grad_(True)  # confident outputs: p_S near one-hot
    loss = crosstask_loss(student, 10 * teacher, labels, 20 * cost)  # costs up to 40: K underflows
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert student.grad.dtype == torch.float32


def test_descending_eq15_reaches_the_closed_form_minimiser():
    """For a fixed p_T, min over p_S of S_eps(p_T, p_S) is reached by the plan whose rows are
    p_T,m softmax(-M_m / eps) (only the row marginal binds), so p_S* = p_T softmax_rows(-M / eps).
    L-BFGS on the student's logits, driven by the value and the gradient of Eq. 15 alone, finds it."""
    _, teacher, cost, _ = problem(4)
    eps = 0.5
    logits = torch.zeros(teacher.shape[0], cost.shape[1], dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=40, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        loss = sinkhorn_term(logits, teacher, cost, tau=1.0, eps=eps, n_iter=100)
        loss.backward()
        return loss

    opt.step(closure)
    target = torch.softmax(teacher, 1) @ torch.softmax(-cost / eps, 1)
    torch.testing.assert_close(torch.softmax(logits.detach(), 1), target, rtol=0, atol=1e-4)


def test_crosstask_errors():
    student, teacher, cost, labels = problem(5)
    with pytest.raises(ValueError, match=r"cost must be \[teacher classes, student classes\] = \(4, 5\)"):
        crosstask_loss(student, teacher, labels, cost.T)
    with pytest.raises(ValueError, match="must hold the same samples"):
        crosstask_loss(student, teacher[:3], labels, cost)
    with pytest.raises(ValueError, match="teacher_logits holds NaN"):
        crosstask_loss(student, torch.full_like(teacher, float("nan")), labels, cost)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        crosstask_loss(student, teacher, labels, cost, lam=-1.0)
    with pytest.raises(ValueError, match="tau must be a positive"):
        crosstask_loss(student, teacher, labels, cost, tau=0.0)
    with pytest.raises(ValueError, match="labels must be a 1-D tensor"):
        crosstask_loss(student, teacher, labels[:2], cost)
    with pytest.raises(ValueError, match=r"labels must be student classes 0..4; got 0..5"):
        crosstask_loss(student, teacher, torch.arange(6), cost)
    with pytest.raises(ValueError, match="labels must hold integer class indices"):
        crosstask_loss(student, teacher, labels.float(), cost)


# --------------------------------------------------------------------------------------------- KD


def test_kd_term_is_tau_squared_kl_and_its_gradient():
    student, teacher, _, labels = problem(6, m=5, n=5)
    tau = 4.0
    leaf = student.clone().requires_grad_(True)
    term = kd_term(leaf, teacher, tau)
    p_t, p_s = torch.softmax(teacher / tau, 1), torch.softmax(student / tau, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert float(term.detach()) == pytest.approx(tau**2 * float(kl), abs=1e-12)
    term.backward()
    # d/dz tau^2 KL(p_t || softmax(z / tau)) = tau (p_s - p_t), per sample; batchmean divides by B
    torch.testing.assert_close(leaf.grad, tau * (p_s - p_t) / student.shape[0])
    assert float(kd_term(teacher, teacher, tau)) == pytest.approx(0.0, abs=1e-12)
    loss = kd_loss(student, teacher, labels, lam=0.5, tau=tau)
    assert float(loss) == pytest.approx(
        float(F.cross_entropy(student, labels) + 0.5 * term.detach()), abs=1e-12
    )


def test_kd_needs_equal_label_sets():
    student, teacher, _, labels = problem(7, m=4, n=5)
    with pytest.raises(ValueError, match="standard KD needs equal label sets"):
        kd_loss(student, teacher, labels)


# -------------------------------------------------------------------------------------------- RKD


def test_rkd_is_zero_for_a_similar_embedding_and_positive_otherwise():
    g = torch.Generator().manual_seed(8)
    teacher = torch.randn(7, 4, generator=g, dtype=F64)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    # same relations in another dimension: rotate, scale, translate, then pad with zeros
    student = torch.cat([3 * teacher @ rotation + 1.5, torch.zeros(7, 2, dtype=F64)], 1)
    assert float(rkd_distance(student, teacher)) == pytest.approx(0.0, abs=1e-12)
    assert float(rkd_angle(student, teacher)) == pytest.approx(0.0, abs=1e-12)
    other = torch.randn(7, 6, generator=g, dtype=F64)
    assert float(rkd_distance(other, teacher)) > 0 and float(rkd_angle(other, teacher)) > 0


def test_rkd_angle_matches_a_triplet_loop():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)

    def cosines(e):
        out = torch.zeros(5, 5, 5, dtype=F64)
        for i, j, k in itertools.product(range(5), repeat=3):
            u, v = e[i] - e[j], e[k] - e[j]
            if i != j and k != j:
                out[i, j, k] = (u @ v) / (u.norm() * v.norm())
        return out

    ref = F.smooth_l1_loss(cosines(s), cosines(t))
    assert float(rkd_angle(s, t)) == pytest.approx(float(ref), abs=1e-12)


def test_rkd_loss_gradient_reaches_the_student_only():
    g = torch.Generator().manual_seed(10)
    s = torch.randn(6, 3, generator=g, requires_grad=True)
    t = torch.randn(6, 8, generator=g, requires_grad=True)
    logits, labels = torch.randn(6, 4, generator=g), torch.arange(6) % 4
    loss = rkd_loss(logits, labels, s, t)
    expected = F.cross_entropy(logits, labels) + 25 * rkd_distance(s, t) + 50 * rkd_angle(s, t)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    assert t.grad is None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 3 samples"):
        rkd_angle(s[:2], t[:2])
    with pytest.raises(ValueError, match="angle_weight must be a finite number >= 0"):
        rkd_loss(logits, labels, s, t, angle_weight=-1.0)
    with pytest.raises(ValueError, match="student_embed and teacher_embed must hold the same samples"):
        rkd_loss(logits, labels, s, t[:5])


# ------------------------------------------------------------------------------ loss(out, idx) wrappers


def test_crosstask_loss_fn_is_eq11_on_the_batch_rows():
    student, teacher, cost, labels = problem(11, b=8)
    idx = torch.tensor([5, 0, 3])
    loss_fn = crosstask_loss_fn(teacher, labels, cost, lam=7.0, tau=2.0, eps=0.2, n_iter=60)
    out = student[idx].clone().requires_grad_(True)
    value = loss_fn(out, idx)
    ref_out = student[idx].clone().requires_grad_(True)
    ref = crosstask_loss(ref_out, teacher[idx], labels[idx], cost, lam=7.0, tau=2.0, eps=0.2, n_iter=60)
    assert float(value.detach()) == pytest.approx(float(ref.detach()), abs=1e-12)
    value.backward()
    ref.backward()
    torch.testing.assert_close(out.grad, ref_out.grad)
    # lam = 0 is the no-teacher student's loss
    plain = crosstask_loss_fn(teacher, labels, cost, lam=0.0)(student[idx], idx)
    assert float(plain) == pytest.approx(float(F.cross_entropy(student[idx], labels[idx])), abs=1e-12)


def test_crosstask_loss_fn_checks_its_inputs_once():
    student, teacher, cost, labels = problem(12, b=8)
    with pytest.raises(ValueError, match="one class index per row of teacher_logits"):
        crosstask_loss_fn(teacher, labels[:5], cost)
    with pytest.raises(ValueError, match=r"cost must be \[teacher classes = 4, student classes\]"):
        crosstask_loss_fn(teacher, labels, cost.T)
    with pytest.raises(ValueError, match="labels must be student classes 0..4"):
        crosstask_loss_fn(teacher, torch.full_like(labels, 5), cost)
    with pytest.raises(ValueError, match="cost must hold finite values >= 0"):
        crosstask_loss_fn(teacher, labels, -cost)
    with pytest.raises(ValueError, match="eps must be a positive"):
        crosstask_loss_fn(teacher, labels, cost, eps=0.0)
    with pytest.raises(ValueError, match="teacher_logits holds NaN"):
        crosstask_loss_fn(torch.full_like(teacher, float("inf")), labels, cost)


def test_kd_loss_fn_and_rkd_loss_fn_on_the_batch_rows():
    student, teacher, _, labels = problem(13, b=8, m=5, n=5)
    idx = torch.tensor([1, 7, 2, 4])
    value = kd_loss_fn(teacher, labels, lam=0.5, tau=4.0)(student[idx], idx)
    ref = kd_loss(student[idx], teacher[idx], labels[idx], lam=0.5, tau=4.0)
    assert float(value) == pytest.approx(float(ref), abs=1e-12)
    with pytest.raises(ValueError, match="standard KD needs equal label sets"):
        kd_loss_fn(teacher[:, :4], labels % 4, lam=0.5)(student[idx], idx)  # 4 teacher, 5 student classes
    # RKD reads the student's embedding off its head's input: the same as computing it separately
    torch.manual_seed(0)
    net = build_model("cnn", 5, in_channels=1, image_size=8, width=4, depth=2).eval()
    x = torch.randn(8, 1, 8, 8)
    t_embed = torch.randn(8, 6)
    loss_fn = rkd_loss_fn(net, t_embed, labels)
    out = net(x[idx])
    embed, _ = split_head(net)
    ref = rkd_loss(out, labels[idx], embed(x[idx]), t_embed[idx])
    assert float(loss_fn(out, idx)) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(RuntimeError, match="no student embedding"):
        loss_fn(out, idx)  # the embedding is used once per forward pass
    loss_fn.remove()
    net(x)
    with pytest.raises(RuntimeError, match="no student embedding"):
        loss_fn(out, idx)
