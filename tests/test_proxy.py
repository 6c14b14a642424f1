"""The label-free proxy (zoo/proxy.py): its equations on hand-made tensors, and how well it ranks
students against their true accuracy on a small synthetic zoo built in-process (no Ray, no MLflow).

The zoo: 6 classes of `zoo.data.synthetic_images`, three small teachers over overlapping class
subsets, each trained with `zoo.train.fit_classifier` on its own disjoint labelled data; an unlabelled
transfer set; a labelled test set. Several sweep trials (method x mode x T x lr x epochs) are trained
with the sweep's own trial loop (`zoo.pipeline.sweep.train_trial`), and the proxy (computed on
transfer images held out of training) is rank-correlated with the test accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.proxy import proxy_scores, restricted_log_probs, spearman

MASK = torch.tensor(
    [
        [True, True, True, True, False, False],
        [False, False, True, True, True, True],
        [True, True, False, False, True, True],
    ]
)


def test_restricted_log_probs_is_eq6():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(5, 6, generator=g)
    q = torch.softmax(u, -1)
    got = restricted_log_probs(u, MASK)
    for i in range(MASK.shape[0]):
        m = MASK[i]
        want = torch.log(q[:, m] / q[:, m].sum(-1, keepdim=True))  # Eq. 6
        assert torch.allclose(got[:, i, m], want, atol=1e-6)
        assert torch.all(got[:, i, ~m] == 0)


def test_consistent_student_scores_best():
    """A student whose q restricted to L_i reproduces every p_i (Prop. 1's p-bar) gets agreement 1
    and the largest negative cross-entropy, -sum_i H(p_i); any other student scores lower."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(64, 6, generator=g) * 2
    teachers = (u.unsqueeze(1) + 5.0) * MASK  # shifted logits per teacher: p_i = q restricted (Eq. 6)
    best = proxy_scores(u, teachers, MASK)
    assert torch.allclose(best["agreement"], torch.ones(3))
    p = torch.softmax(torch.where(MASK, teachers, torch.tensor(-torch.inf)), -1)
    neg_entropy = (p * torch.log(p.clamp_min(1e-30))).sum(-1).mean(0)
    assert torch.allclose(best["neg_xent"], neg_entropy, atol=1e-5)
    other = proxy_scores(torch.randn(64, 6, generator=g) * 2, teachers, MASK)
    assert float(other["agreement"].mean()) < 0.8
    assert torch.all(other["neg_xent"] < best["neg_xent"])
    # Masked entries of the teachers' logits are ignored whatever they hold.
    noisy = torch.where(MASK, teachers, torch.tensor(float("nan")))
    assert torch.equal(proxy_scores(u, noisy, MASK)["agreement"], best["agreement"])


def test_proxy_refuses_bad_shapes():
    with pytest.raises(ValueError, match="student_logits"):
        proxy_scores(torch.zeros(4, 5), torch.zeros(4, 3, 6), MASK)
    with pytest.raises(ValueError, match=r"\[B, N, L\]"):
        proxy_scores(torch.zeros(4, 6), torch.zeros(4, 6), MASK)
    with pytest.raises(ValueError, match="mask"):
        restricted_log_probs(torch.zeros(4, 6), MASK[:, :5])


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: ranks (1.5, 1.5, 3) vs (1, 2, 3).
    assert spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1], [1])


# ------------------------------------------------------------------------------ ranking on a zoo
def build_synthetic_zoo(seed: int = 0, size: int = 16):
    """Three tiny teachers over overlapping class subsets (MASK), their logits on a transfer set laid
    out on the union label space, and a labelled test set. Returns (SweepData, the student's spec)."""
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, preprocess
    from zoo.data import synthetic_images
    from zoo.labels import build_label_space
    from zoo.pipeline.sweep import SweepData
    from zoo.train import fit_classifier, predict_logits

    spec = InputSpec(channels=1, height=size, width=size, mean=(0.5,), std=(0.25,))
    L = MASK.shape[1]
    names = [f"class{c}" for c in range(L)]
    space = build_label_space([[names[c] for c in np.flatnonzero(m)] for m in MASK.numpy()])
    images, labels = synthetic_images(900, L, size=size, seed=seed + 1)
    transfer, _ = synthetic_images(1500, L, size=size, seed=seed + 2)
    test_images, test_labels = synthetic_images(600, L, size=size, seed=seed + 3)
    x_transfer = preprocess(transfer, spec)
    per_teacher = []
    for i, m in enumerate(MASK.numpy()):
        own = np.flatnonzero(m)
        # Disjoint data per teacher: every third image, of the teacher's own classes only.
        sel = (np.arange(len(labels)) % 3 == i) & np.isin(labels, own)
        y = torch.as_tensor(np.searchsorted(own, labels[sel]))
        torch.manual_seed(seed + i)
        teacher = build_model("mlp", len(own), in_channels=1, image_size=size, hidden=32, layers=1)
        teacher = fit_classifier(
            teacher,
            preprocess(images[sel], spec),
            y,
            epochs=2,
            lr=3e-3,
            batch_size=32,
            seed=seed + i,
            progress=False,
        )
        per_teacher.append(predict_logits(teacher, x_transfer))
    # Teacher i's output k is class own[k]; space.classes are the names sorted, i.e. class0..class5.
    z = space.to_union(per_teacher)
    hold = 300
    data = SweepData(
        train_images=x_transfer[hold:],
        train_logits=z[hold:],
        holdout_images=x_transfer[:hold],
        holdout_logits=z[:hold],
        mask=space.mask,
        classes=list(space.classes),
        val_images=preprocess(test_images, spec),
        val_labels=torch.as_tensor(test_labels),
    )
    return data, ModelSpec("cnn", list(space.classes), spec, {"width": 8, "depth": 2})


# Varied on purpose: methods, modes and temperatures as a sweep would, and lr / epochs so that the
# true accuracies spread (a proxy that only ranks identical students is untestable).
RANKING_TRIALS = [
    ({"method": "sd", "mode": "e", "temperature": 3.0, "lr": 0.05}, 2),
    ({"method": "sd", "mode": "e", "temperature": 10.0, "lr": 0.05}, 2),
    ({"method": "ce", "mode": "bs", "temperature": 3.0, "lr": 0.05}, 2),
    ({"method": "mf-lf", "mode": "bs", "temperature": 1.0, "lr": 0.05}, 2),
    ({"method": "mf-lf", "mode": "bp", "temperature": 3.0, "lr": 0.05}, 2),
    ({"method": "ce", "mode": "e", "temperature": 3.0, "lr": 0.005}, 1),
    ({"method": "sd", "mode": "bs", "temperature": 1.0, "lr": 0.002}, 1),
    ({"method": "mf-lf", "mode": "e", "temperature": 6.0, "lr": 0.01}, 1),
]


def rank_trials(seed: int = 0) -> tuple[float, float, list[dict]]:
    """(Spearman of proxy agreement vs test accuracy, of negative cross-entropy vs accuracy, rows)."""
    from zoo.pipeline.sweep import train_trial
    from zoo.train import Schedule
    from zoo.unify.recipe import Recipe

    data, spec = build_synthetic_zoo(seed)
    rows = []
    for trial, epochs in RANKING_TRIALS:
        recipe = Recipe(method=trial["method"], mode=trial["mode"], temperature=trial["temperature"])
        schedule = Schedule(epochs=epochs, lr=trial["lr"], batch_size=64, seed=seed)
        last = train_trial(data, spec, schedule, recipe, device="cpu")[-1]
        rows.append({**trial, "epochs": epochs, **last})
    acc = [r["val_accuracy"] for r in rows]
    return (
        spearman([r["proxy_agreement"] for r in rows], acc),
        spearman([r["proxy_neg_xent"] for r in rows], acc),
        rows,
    )


def test_proxy_ranks_trials_like_accuracy_on_a_synthetic_zoo():
    rho_agree, rho_xent, rows = rank_trials(seed=0)
    acc = [r["val_accuracy"] for r in rows]
    print(f"\nSpearman(proxy agreement, accuracy) = {rho_agree:.3f}; (neg. x-ent, accuracy) = {rho_xent:.3f}")
    for r in rows:
        print(
            f"  {r['method']:<6}{r['mode']:<3} T={r['temperature']:<4g} lr={r['lr']:<6g} ep={r['epochs']} "
            f"acc={r['val_accuracy']:.3f} agree={r['proxy_agreement']:.3f} nxent={r['proxy_neg_xent']:.3f}"
        )
    assert max(acc) - min(acc) > 0.05, f"the trials' accuracies do not spread: {acc}"
    assert rho_agree > 0
