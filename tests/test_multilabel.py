"""zoo.multilabel: metrics against scikit-learn, the distillation losses (MLD, PS, 3D), the multi-label
unification rule, the mosaic demo data and its on-disk layouts, and the registry's task tag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from zoo.data import decode_image, write_idx
from zoo.multilabel import (
    METRICS,
    average_precision,
    batch_pairs,
    fashion_mosaics,
    holdout_indices,
    masked_bce,
    mld_loss,
    mosaic_plan,
    multilabel_bce,
    multilabel_metrics,
    ndd_loss,
    positive_divide_loss,
    ps_loss,
    read_multilabel,
    read_multilabel_folder,
    read_multilabel_parquet,
    three_d_loss,
    union_targets,
    write_fashion_mosaics,
    write_multilabel_folder,
    write_multilabel_parquet,
)
from zoo.multilabel.mld import binary_kl


# ------------------------------------------------------------------------------------------- metrics
def _random_case(seed: int, n: int = 60, c: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal (many ties), a class with no positive (0), a class that no score
    reaches 0.5 on (1), a class where every sample is positive (2)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6, size=c)).astype(np.int64)
    y[:, 0], y[:, 2] = 0, 1
    s = np.round(rng.random((n, c)), 1)
    s[:, 1] = rng.uniform(0, 0.45, size=n)
    return s, y


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_scikit_learn(seed: int) -> None:
    s, y = _random_case(seed)
    m = multilabel_metrics(s, y)
    assert set(m) == set(METRICS) and all(isinstance(v, float) for v in m.values())
    ap = [average_precision_score(y[:, c], s[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    pred = (s >= 0.5).astype(np.int64)
    assert m["mAP"] == pytest.approx(np.mean(ap), abs=1e-12)
    assert m["CP"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["CR"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["OP"] == pytest.approx(precision_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["OR"] == pytest.approx(recall_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["OF1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    # CF1 is the F1 of the averaged P and R (ML-GCN), not scikit-learn's mean of per-class F1s
    assert m["CF1"] == pytest.approx(2 * m["CP"] * m["CR"] / (m["CP"] + m["CR"]), abs=1e-12)
    assert m["CF1"] != pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-6)
    per_class = average_precision(s, y)
    assert np.isnan(per_class[0]) and np.allclose(per_class[1:], ap, atol=1e-12)


def test_metrics_per_class_threshold_and_torch_inputs() -> None:
    s, y = _random_case(7)
    t = np.linspace(0.2, 0.8, s.shape[1])
    m = multilabel_metrics(torch.from_numpy(s).float(), torch.from_numpy(y), threshold=torch.from_numpy(t))
    pred = (s.astype(np.float32) >= t.astype(np.float32)[None, :]).astype(np.int64)
    assert m["CP"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0), abs=1e-9)
    assert m["OF1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-9)
    assert m != multilabel_metrics(s, y)  # the thresholds were used


def test_metrics_edge_cases() -> None:
    y = np.array([[1, 0], [0, 1], [1, 0]])
    perfect = multilabel_metrics(y * 0.9 + 0.05, y)
    assert all(v == 1.0 for v in perfect.values())
    none = multilabel_metrics(np.full((3, 2), 0.1), np.zeros((3, 2), dtype=int))
    assert np.isnan(none["mAP"]) and none["CF1"] == 0.0 and none["OF1"] == 0.0


@pytest.mark.parametrize(
    "scores, targets, threshold, match",
    [
        (np.zeros(3), np.zeros(3), 0.5, r"\[n, C\]"),
        (np.zeros((2, 3)), np.zeros((2, 2)), 0.5, r"\[n, C\]"),
        (np.zeros((2, 2)), np.full((2, 2), 2), 0.5, "only 0 and 1"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), 0.5, "finite"),
        (np.zeros((2, 2)), np.zeros((2, 2)), [0.5, 0.5, 0.5], "one per class"),
    ],
)
def test_metrics_refuse_bad_input(scores, targets, threshold, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(scores, targets, threshold)


# -------------------------------------------------------------------------------------------- losses
def _logits(seed: int, b: int = 6, c: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    y = torch.rand(b, c, generator=g) < 0.4
    y[0] = False  # a sample without positives
    y[1] = True  # a sample without negatives
    y[2, :2] = torch.tensor([True, False])
    return s, t, y


def _descends(loss_fn, s: torch.Tensor, steps: int = 5, lr: float = 0.05) -> list[float]:
    """Plain gradient descent on the student logits; the losses seen."""
    s = s.clone().requires_grad_(True)
    seen = []
    for _ in range(steps):
        loss = loss_fn(s)
        seen.append(float(loss.detach()))
        (grad,) = torch.autograd.grad(loss, s)
        with torch.no_grad():
            s -= lr * grad
    return seen


def test_mld_is_l2d_at_tau_1_zero_at_the_teacher_and_descends() -> None:
    s, t, _ = _logits(0)
    # L2D's mld.py: KLDivLoss on sigmoid and 1 - sigmoid (clamped), summed, divided by the batch size
    ps, pt = s.sigmoid().clamp(1e-8, 1 - 1e-8), t.sigmoid().clamp(1e-8, 1 - 1e-8)
    l2d = (F.kl_div(ps.log(), pt, reduction="sum") + F.kl_div((1 - ps).log(), 1 - pt, reduction="sum")) / len(
        s
    )
    assert float(mld_loss(s, t, tau=1.0)) == pytest.approx(float(l2d), rel=1e-6)
    assert float(mld_loss(t, t)) == pytest.approx(0.0, abs=1e-12)
    assert float(mld_loss(s, t)) > 0
    # the gradient pulls each student logit toward the teacher's: d/ds = tau (p_s - p_t) / B
    sg = s.clone().requires_grad_(True)
    mld_loss(sg, t, tau=4.0).backward()
    expected = 4.0 * ((s / 4).sigmoid() - (t / 4).sigmoid()) / len(s)
    torch.testing.assert_close(sg.grad, expected)
    seen = _descends(lambda x: mld_loss(x, t), s)
    assert all(a > b for a, b in zip(seen, seen[1:]))


def _ps_reference(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> float:
    """L2D's psm.py, sample by sample: for each positive, a softmax over it and the negatives."""
    total = 0.0
    for i in range(len(s)):
        neg, pos = ~y[i], y[i]
        for j in torch.nonzero(pos).flatten():
            zs = torch.cat([s[i, neg], s[i, j : j + 1]])
            zt = torch.cat([t[i, neg], t[i, j : j + 1]])
            total += float(F.kl_div(zs.log_softmax(0), zt.softmax(0), reduction="sum"))
    return total / len(s)


@pytest.mark.parametrize("seed", range(3))
def test_ps_matches_the_l2d_loop(seed: int) -> None:
    s, t, y = _logits(seed)
    assert float(ps_loss(s, t, y)) == pytest.approx(_ps_reference(s, t, y), rel=1e-9)
    assert float(ps_loss(s, t, y, tau=2.0)) == pytest.approx(4 * _ps_reference(s / 2, t / 2, y), rel=1e-9)


def test_ps_zero_at_the_teacher_shift_invariant_and_descends() -> None:
    s, t, y = _logits(3)
    assert float(ps_loss(t, t, y)) == pytest.approx(0.0, abs=1e-12)
    # a softmax ignores a per-sample constant
    assert float(ps_loss(t + torch.arange(len(t))[:, None], t, y)) == pytest.approx(0.0, abs=1e-12)
    assert float(ps_loss(s, t, torch.zeros_like(y))) == 0.0  # no positive: no term
    seen = _descends(lambda x: ps_loss(x, t, y), s)
    assert all(a > b for a, b in zip(seen, seen[1:]))


def test_positive_divide_is_the_positive_part_of_mld() -> None:
    s, t, y = _logits(4)
    neg_part = 16 * torch.where(~y, binary_kl(s, t, 4.0), 0.0).sum() / len(s)
    assert float(positive_divide_loss(s, t, y) + neg_part) == pytest.approx(float(mld_loss(s, t)), rel=1e-12)
    assert float(positive_divide_loss(t, t, y)) == pytest.approx(0.0, abs=1e-12)
    # only the positives count: moving a negative's logit changes nothing
    moved = s.clone()
    moved[~y] += 5.0
    assert float(positive_divide_loss(moved, t, y)) == pytest.approx(float(positive_divide_loss(s, t, y)))


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def test_ndd_matches_differences_not_values() -> None:
    s, t, y = _logits(5)
    i, j = batch_pairs(len(s))
    neg = ~y[i] & ~y[j]
    assert float(ndd_loss(t[i], t[i], t[j], t[j], neg)) == 0.0
    # a student whose softened probabilities are the teacher's plus a per-label offset has the same
    # discrepancies: NDD is 0 while MLD is not
    tau = 4.0
    p_mid = 0.2 + 0.5 * t.sigmoid()  # teacher probabilities in (0.2, 0.7), room for an offset
    t_mid = tau * _logit(p_mid)
    offset = torch.linspace(-0.15, 0.25, t.shape[1], dtype=t.dtype)
    shifted = tau * _logit(p_mid + offset)
    assert float(ndd_loss(shifted[i], t_mid[i], shifted[j], t_mid[j], neg)) == pytest.approx(0.0, abs=1e-12)
    assert float(mld_loss(shifted, t_mid)) > 0.01
    # by hand: the mean over pairs with a common negative of the MSE of the differences on them
    ps, pt = (s / tau).sigmoid(), (t / tau).sigmoid()
    per_pair = [
        float(((ps[a] - ps[b]) - (pt[a] - pt[b]))[neg[k]].square().mean())
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist()))
        if neg[k].any()
    ]
    assert float(ndd_loss(s[i], t[i], s[j], t[j], neg)) == pytest.approx(np.mean(per_pair), rel=1e-12)
    # labels positive in either image of the pair do not count
    moved = s.clone()
    moved[y] += 7.0
    assert float(ndd_loss(moved[i], t[i], moved[j], t[j], neg)) == pytest.approx(
        float(ndd_loss(s[i], t[i], s[j], t[j], neg)), rel=1e-12
    )
    nothing = torch.zeros_like(neg)
    assert float(ndd_loss(s[i], t[i], s[j], t[j], nothing)) == 0.0


def test_three_d_batch_pairing() -> None:
    s, t, y = _logits(6)
    i, j = batch_pairs(len(s))
    assert len(i) == len(s) * (len(s) - 1) // 2 and bool((i < j).all())
    expected = 100 / 64 * positive_divide_loss(s, t, y) + 10 / 64 * ndd_loss(
        s[i], t[i], s[j], t[j], ~y[i] & ~y[j]
    )
    assert float(three_d_loss(s, t, y)) == pytest.approx(float(expected), rel=1e-12)
    assert float(three_d_loss(t, t, y)) == pytest.approx(0.0, abs=1e-12)
    seen = _descends(lambda x: three_d_loss(x, t, y), s, lr=0.002)
    assert all(a > b for a, b in zip(seen, seen[1:]))
    with pytest.raises(ValueError, match="pairing='views'"):
        three_d_loss(s, t, y, student_view2=s, teacher_view2=t)


def test_three_d_views_pairing() -> None:
    s, t, y = _logits(7)
    s2, t2, _ = _logits(8)
    got = three_d_loss(s, t, y, pairing="views", student_view2=s2, teacher_view2=t2, alpha=2.0, beta=3.0)
    pd = 0.5 * (positive_divide_loss(s, t, y) + positive_divide_loss(s2, t2, y))
    assert float(got) == pytest.approx(float(2 * pd + 3 * ndd_loss(s, t, s2, t2, ~y)), rel=1e-12)
    assert float(three_d_loss(t, t, y, pairing="views", student_view2=t2, teacher_view2=t2)) == pytest.approx(
        0.0, abs=1e-12
    )
    # the two pairings differ: one pairs images, the other views
    assert float(three_d_loss(s, t, y, beta=1.0, alpha=0.0)) != pytest.approx(
        float(three_d_loss(s, t, y, pairing="views", student_view2=s2, teacher_view2=t2, alpha=0.0, beta=1.0))
    )
    seen = _descends(
        lambda x: three_d_loss(x, t, y, pairing="views", student_view2=s2, teacher_view2=t2), s, lr=0.002
    )
    assert all(a > b for a, b in zip(seen, seen[1:]))
    with pytest.raises(ValueError, match="needs student_view2"):
        three_d_loss(s, t, y, pairing="views")
    with pytest.raises(ValueError, match="pairing must be one of"):
        three_d_loss(s, t, y, pairing="images")


def test_losses_keep_the_teacher_out_of_the_graph_and_refuse_bad_input() -> None:
    s, t, y = _logits(9)
    tg = t.clone().requires_grad_(True)
    sg = s.clone().requires_grad_(True)
    (mld_loss(sg, tg) + ps_loss(sg, tg, y) + three_d_loss(sg, tg, y)).backward()
    assert tg.grad is None and sg.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        mld_loss(s, t[:, :3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ps_loss(s, t, y.double() * 0.5)
    with pytest.raises(ValueError, match="tau must be a positive"):
        mld_loss(s, t, tau=0)
    with pytest.raises(ValueError, match="floating point"):
        multilabel_bce(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3))


def test_bce_is_summed_over_labels_and_averaged_over_the_batch() -> None:
    s, _, y = _logits(10)
    expected = F.binary_cross_entropy_with_logits(s, y.double(), reduction="none").sum(1).mean()
    assert float(multilabel_bce(s, y)) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_on_cuda() -> None:
    s, t, y = (x.cuda() for x in _logits(11))
    for loss in (mld_loss(s, t), ps_loss(s, t, y), three_d_loss(s, t, y), multilabel_bce(s, y)):
        assert loss.is_cuda
    q, known = union_targets(torch.stack([t, s], 1), torch.ones(2, t.shape[1], dtype=torch.bool))
    assert q.is_cuda and masked_bce(s, q, known).is_cuda


# ----------------------------------------------------------------------------------------- unification
def test_union_targets_mean_of_the_knowing_teachers() -> None:
    # 3 teachers over 5 union labels: label 0 known by teacher 0 only, label 1 by teachers 0 and 1,
    # label 2 by all three, label 3 by teacher 2 only, label 4 by none
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]],
        dtype=torch.bool,
    )
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    z[:, ~mask] = float("nan")  # masked logits may hold anything
    q, known = union_targets(z, mask)
    p = z.sigmoid()
    torch.testing.assert_close(q[:, 0], p[:, 0, 0])
    torch.testing.assert_close(q[:, 1], (p[:, 0, 1] + p[:, 1, 1]) / 2)
    torch.testing.assert_close(q[:, 2], p[:, :, 2].mean(1))
    torch.testing.assert_close(q[:, 3], p[:, 2, 3])
    assert known.tolist() == [True, True, True, True, False] and bool((q[:, 4] == 0).all())
    assert bool(torch.isfinite(q).all())
    q2, _ = union_targets(z, mask, temperature=2.0)
    torch.testing.assert_close(q2[:, 0], (z[:, 0, 0] / 2).sigmoid())
    with pytest.raises(ValueError, match="does not match the logits"):
        union_targets(z, mask[:, :4])
    with pytest.raises(ValueError, match="know no label"):
        union_targets(z, torch.zeros(3, 5, dtype=torch.bool))


def test_masked_bce_ignores_unknown_labels() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 5, generator=g, requires_grad=True)
    q = torch.rand(4, 5, generator=g)
    known = torch.tensor([True, True, False, True, False])
    loss = masked_bce(u, q, known)
    loss.backward()
    assert bool((u.grad[:, ~known] == 0).all()) and bool((u.grad[:, known] != 0).all())
    expected = F.binary_cross_entropy_with_logits(u[:, known], q[:, known], reduction="sum") / 4
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    # a per-sample known mask [B, L] works too, and a target where unknown may be anything
    per_sample = known.expand(4, 5).clone()
    per_sample[0] = False
    q_bad = q.clone()
    q_bad[:, ~known] = 7.0
    expected0 = F.binary_cross_entropy_with_logits(u[1:, known], q[1:, known], reduction="sum") / 4
    assert float(masked_bce(u, q_bad, per_sample).detach()) == pytest.approx(
        float(expected0.detach()), rel=1e-6
    )
    # at the targets' own logits the gradient vanishes
    at = torch.logit(q).requires_grad_(True)
    masked_bce(at, q, known).backward()
    assert float(at.grad.abs().max()) < 1e-6


# ------------------------------------------------------------------------------------------- mosaics
@pytest.fixture()
def tiny_fmnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST stand-in: 120 training and 40 test images, image k filled with value k % 251."""
    d = tmp_path / "fm"
    d.mkdir()
    for prefix, n in (("train", 120), ("t10k", 40)):
        images = (np.arange(n, dtype=np.int64)[:, None, None] % 251 + np.zeros((1, 28, 28), np.int64)).astype(
            np.uint8
        )
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) * 7 % 10).astype(np.uint8))
    return d


def test_mosaics_are_seeded_and_well_formed(tiny_fmnist: Path) -> None:
    images, targets, classes = fashion_mosaics("train", 300, seed=3, path=tiny_fmnist)
    assert images.shape == (300, 56, 56) and images.dtype == np.uint8
    assert targets.shape == (300, 10) and set(np.unique(targets)) == {0, 1} and len(classes) == 10
    counts = targets.sum(1)
    assert counts.min() == 1 and counts.max() == 4 and set(counts) == {1, 2, 3, 4}
    again = fashion_mosaics("train", 300, seed=3, path=tiny_fmnist)
    assert np.array_equal(again[0], images) and np.array_equal(again[1], targets)
    other = fashion_mosaics("train", 300, seed=4, path=tiny_fmnist)
    assert not np.array_equal(other[1], targets)
    # each tile is its source image (or black), and the targets are the sources' classes
    plan = mosaic_plan("train", 300, seed=3, path=tiny_fmnist)
    labels = np.arange(120) * 7 % 10
    for k in range(20):
        for tile in range(4):
            r, c = divmod(tile, 2)
            patch = images[k, r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
            src = plan[k, tile]
            assert (patch == (0 if src < 0 else src % 251)).all()
        assert sorted(np.flatnonzero(targets[k])) == sorted(labels[plan[k][plan[k] >= 0]])
    assert ((plan >= 0).sum(1) == counts).all()  # distinct classes: one tile per label


def test_mosaic_splits_never_share_a_source_image(tiny_fmnist: Path) -> None:
    train_idx, val_idx = holdout_indices(120)
    assert len(val_idx) == 20 and not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 120
    full_train, full_val = holdout_indices()
    assert len(full_val) == 10_000 and len(full_train) == 50_000
    train = mosaic_plan("train", 400, seed=0, path=tiny_fmnist)
    val = mosaic_plan("val", 400, seed=0, path=tiny_fmnist)
    test = mosaic_plan("test", 50, seed=0, path=tiny_fmnist)
    used = {name: set(p[p >= 0].tolist()) for name, p in (("train", train), ("val", val), ("test", test))}
    assert used["train"] <= set(train_idx.tolist()) and used["val"] <= set(val_idx.tolist())
    assert not used["train"] & used["val"]
    assert max(used["test"]) < 40  # indices into the test split's 40 images
    with pytest.raises(ValueError, match="split must be one of"):
        fashion_mosaics("validation", 3, path=tiny_fmnist)


# ------------------------------------------------------------------------------------------ layouts
def _small_set() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 12, 12), dtype=np.uint8)
    targets = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]], dtype=np.uint8)
    return images, targets, ["T-shirt/top", "a, b", "never seen", 'say "hi"']  # column 2 has no positive


def test_parquet_layout_round_trip(tmp_path: Path) -> None:
    images, targets, classes = _small_set()
    path = write_multilabel_parquet(tmp_path / "train.parquet", images, targets, classes, ids=list("abcde"))
    table = pq.read_table(path)
    assert table.column_names == ["id", "image", "labels"]
    assert table.column("labels").to_pylist()[0] == ["T-shirt/top", 'say "hi"']
    assert np.array_equal(decode_image(table.column("image")[1].as_py()), images[1])  # plain PNG bytes
    data = read_multilabel(path)
    assert data.ids == list("abcde") and data.classes == classes and len(data) == 5
    assert np.array_equal(data.images, images) and np.array_equal(data.targets, targets)
    # another class order (matched as zoo.labels matches names) and a refused unknown label
    reordered = read_multilabel_parquet(path, classes=['SAY "HI"', "t-shirt/top", "a, b", "x"])
    assert np.array_equal(reordered.targets, targets[:, [3, 0, 1, 2]] * np.array([1, 1, 1, 0], np.uint8))
    with pytest.raises(ValueError, match="not among the classes"):
        read_multilabel_parquet(path, classes=["T-shirt/top"])


def test_folder_layout_round_trip(tmp_path: Path) -> None:
    images, targets, classes = _small_set()
    root = write_multilabel_folder(tmp_path / "val", images, targets, classes)
    header = (root / "labels.csv").read_text().splitlines()[0]
    assert header == 'image,T-shirt/top,"a, b",never seen,"say ""hi"""'
    data = read_multilabel(root)
    assert data.classes == classes and data.ids == [f"{i:06d}" for i in range(5)]
    assert np.array_equal(data.images, images) and np.array_equal(data.targets, targets)
    # a column without positives outside `classes` is dropped; one with positives is refused
    sub = read_multilabel_folder(root, classes=["a, b", "T-shirt/top", 'say "hi"'])
    assert np.array_equal(sub.targets, targets[:, [1, 0, 3]])
    with pytest.raises(ValueError, match="not among the classes"):
        read_multilabel_folder(root, classes=["a, b"])
    (root / "labels.csv").write_text("image,x\n../../etc/passwd,1\n")
    with pytest.raises(ValueError, match="leaves the folder"):
        read_multilabel_folder(root)
    with pytest.raises(ValueError, match="neither a .parquet file nor a folder"):
        read_multilabel(tmp_path)


def test_write_fashion_mosaics_both_layouts(tiny_fmnist: Path, tmp_path: Path) -> None:
    sizes = {"train": 12, "val": 5, "test": 6}
    out = write_fashion_mosaics(tmp_path / "pq", sizes, seed=1, path=tiny_fmnist)
    assert sorted(p.name for p in out.values()) == ["test.parquet", "train.parquet", "val.parquet"]
    images, targets, classes = fashion_mosaics("val", 5, seed=1, path=tiny_fmnist)
    data = read_multilabel(out["val"])
    assert data.ids[0] == "val-000000" and data.classes == classes
    assert np.array_equal(data.images, images) and np.array_equal(data.targets, targets)
    folders = write_fashion_mosaics(tmp_path / "dir", {"test": 6}, seed=1, layout="folder", path=tiny_fmnist)
    assert np.array_equal(read_multilabel(folders["test"]).targets, read_multilabel(out["test"]).targets)


# --------------------------------------------------------------------------------------- registry
@pytest.mark.slow  # MLflow's sqlite store: 10-40 s on the shared machine
def test_registry_tags_multilabel_models(mlflow_uri: str, tmp_path: Path) -> None:
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, save_model
    from zoo.registry import Registry, validate_tags

    inp = InputSpec(channels=1, height=16, width=16, mean=(0.5,), std=(0.25,))
    ml = ModelSpec(
        arch="cnn",
        classes=["a", "b", "c"],
        input=inp,
        arch_kwargs={"width": 2, "depth": 1},
        task="multilabel",
    )
    mc = ModelSpec(arch="cnn", classes=["a", "b"], input=inp, arch_kwargs={"width": 2, "depth": 1})
    registry = Registry(mlflow_uri, cache_dir=tmp_path / "cache")
    for name, spec in (("ml", ml), ("mc", mc)):
        model = build_model("cnn", spec.num_classes, 1, 16, width=2, depth=1)
        registry.register(name, save_model(model, spec, tmp_path / name))
    assert registry.get("ml").tags["task"] == "multilabel" and "task" not in registry.get("mc").tags
    assert [r.name for r in registry.list({"task": "multilabel"})] == ["ml"]
    loaded, spec, _ = registry.load("ml")
    assert spec == ml and spec.thresholds == [0.5, 0.5, 0.5]
    assert validate_tags({"task": "multiclass"}, mc) == {"task": "multiclass"}
    with pytest.raises(ValueError, match="contradicts the spec"):
        validate_tags({"task": "multiclass"}, ml)
    with pytest.raises(ValueError, match="contradicts the spec"):
        validate_tags({"task": "multilabel"}, mc)
