"""Label spreading over the transfer set's kNN graph (zoo/unify/propagate.py): the blocked kNN against a
brute-force one, the iteration against Zhou et al.'s closed form, and that it fixes labels that
disagree with their cluster. Tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.unify.propagate import (
    Propagation,
    join_features,
    knn_graph,
    label_spreading,
    propagate_soft_labels,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _clusters(n_per: int = 30, noise: float = 0.3, flip: float = 0.2, seed: int = 0):
    """Two well-separated Gaussian clusters in 6-d, one-hot labels of the cluster with a share of
    them flipped (a noisy q whose errors are scattered)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0]])
    truth = torch.arange(2).repeat_interleave(n_per)
    x = centres[truth] + noise * torch.randn(2 * n_per, 6, generator=g)
    flipped = torch.rand(2 * n_per, generator=g) < flip
    q = torch.nn.functional.one_hot(torch.where(flipped, 1 - truth, truth), 2).float()
    return x, q, truth, flipped


@pytest.mark.parametrize("device", DEVICES)
def test_knn_graph_is_the_brute_force_knn_in_any_block_size(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(57, 5, generator=g).to(device)
    xn = torch.nn.functional.normalize(x, dim=1)
    s = xn @ xn.T
    s.fill_diagonal_(-math.inf)
    want_sim, want_idx = s.topk(4, dim=1)
    for block in (57, 57 * 7, 1 << 20):  # one row per block, 7 rows, everything at once
        idx, sim = knn_graph(x, k=4, block_elements=block)
        assert idx.device.type == device and idx.shape == (57, 4)
        torch.testing.assert_close(sim, want_sim)
        assert torch.equal(idx, want_idx)
        assert not bool((idx == torch.arange(57, device=device).unsqueeze(1)).any()), (
            "a row is its own neighbour"
        )


def test_knn_graph_rejects_bad_input():
    with pytest.raises(ValueError, match="k must"):
        knn_graph(torch.randn(5, 3), k=5)
    with pytest.raises(ValueError, match="finite"):
        knn_graph(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), k=1)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        knn_graph(torch.randn(5), k=1)


def _dense_s(idx: torch.Tensor, sim: torch.Tensor, gamma: float) -> torch.Tensor:
    n = idx.shape[0]
    a = torch.zeros(n, n, dtype=torch.float64)
    a[torch.arange(n).repeat_interleave(idx.shape[1]), idx.reshape(-1)] = (
        sim.reshape(-1).double().clamp_min(0) ** gamma
    )
    w = a + a.T
    d = w.sum(1).rsqrt()
    return d[:, None] * w * d[None, :]


@pytest.mark.parametrize("device", DEVICES)
def test_label_spreading_reaches_zhous_closed_form(device):
    x, q, _, _ = _clusters(n_per=12)
    idx, sim = knn_graph(x, k=5)
    alpha = 0.8
    s = _dense_s(idx, sim, 3.0)
    f = (1 - alpha) * torch.linalg.solve(torch.eye(len(q), dtype=torch.float64) - alpha * s, q.double())
    want = f / f.sum(1, keepdim=True)
    got = label_spreading(q.double().to(device), idx.to(device), sim.to(device), alpha=alpha, iters=200)
    torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=0)
    # the default number of steps is within 1e-4 of the fixed point
    default = label_spreading(q.double(), idx, sim, alpha=alpha)
    assert float((default - want).abs().max()) < 1e-3


def test_label_spreading_fixes_labels_that_disagree_with_their_cluster():
    x, q, truth, flipped = _clusters()
    assert flipped.any(), "the fixture must start with wrong labels"
    idx, sim = knn_graph(x, k=8)
    out = label_spreading(q, idx, sim, alpha=0.9)
    torch.testing.assert_close(out.sum(1), torch.ones(len(q)))
    assert bool((out >= 0).all())
    assert torch.equal(out.argmax(1), truth)


def test_label_spreading_alpha_zero_keeps_q_and_sample_weights_silence_a_seed():
    x, q, _, _ = _clusters(n_per=10)
    idx, sim = knn_graph(x, k=4)
    torch.testing.assert_close(label_spreading(q, idx, sim, alpha=0.0), q)
    # A seed of weight 0 says nothing to its neighbours: spreading with it silenced equals spreading
    # a q in which that row is zero.
    w = torch.ones(len(q))
    w[0] = 0.0
    silenced = q.clone()
    silenced[0] = 0.0
    a = label_spreading(q, idx, sim, alpha=0.7, sample_weights=w)
    b = label_spreading(silenced, idx, sim, alpha=0.7)
    torch.testing.assert_close(a[1:], b[1:])


def test_label_spreading_rejects_bad_input():
    x, q, _, _ = _clusters(n_per=5)
    idx, sim = knn_graph(x, k=3)
    with pytest.raises(ValueError, match="alpha"):
        label_spreading(q, idx, sim, alpha=1.0)
    with pytest.raises(ValueError, match="rows"):
        label_spreading(q[:-1], idx, sim)
    with pytest.raises(ValueError, match="indices must lie"):
        label_spreading(q, idx + len(q), sim)
    with pytest.raises(ValueError, match="sample_weights"):
        label_spreading(q, idx, sim, sample_weights=-torch.ones(len(q)))


def test_join_features_weighs_teachers_equally_and_projects():
    g = torch.Generator().manual_seed(2)
    f1, f2 = torch.randn(20, 3, generator=g), 100 * torch.randn(20, 40, generator=g)  # a wide, loud one
    x = join_features([f1, f2])
    cos = lambda f: (lambda c: c @ c.T)(torch.nn.functional.normalize(f - f.mean(0), dim=1))  # noqa: E731
    torch.testing.assert_close(x @ x.T, (cos(f1) + cos(f2)) / 2, atol=1e-5, rtol=0)
    assert join_features([f1, f2], dim=4).shape == (20, 4)
    with pytest.raises(ValueError, match="same rows"):
        join_features([f1, f2[:-1]])
    with pytest.raises(ValueError, match="sequence"):
        join_features(f1)


def test_propagate_soft_labels_in_one_call():
    x, q, truth, _ = _clusters()
    out = propagate_soft_labels(q, [x[:, :3], x[:, 3:]], k=8, alpha=0.9, dim=None)
    assert out.shape == q.shape and torch.equal(out.argmax(1), truth)
    with pytest.raises(ValueError, match="one row per transfer image"):
        propagate_soft_labels(q[:-1], x)


def test_propagation_settings_validate_and_round_trip():
    p = Propagation.from_dict({"k": 5, "alpha": 0.5})
    assert (p.k, p.alpha, p.dim, p.gamma) == (5, 0.5, 64, 3.0)
    assert Propagation.from_dict(p.to_dict()) == p
    for bad, match in (
        ({"k": 0}, "k must"),
        ({"alpha": 1.0}, "alpha"),
        ({"dim": 0}, "dim"),
        ({"gamma": -1}, "gamma"),
        ({"kk": 3}, "unknown"),
    ):
        with pytest.raises(ValueError, match=match):
            Propagation.from_dict(bad)


def test_join_features_projection_does_not_depend_on_the_global_rng():
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(50, 12, generator=g), torch.randn(50, 9, generator=g)]
    torch.manual_seed(1)
    a = join_features(feats, dim=4)
    torch.manual_seed(2)
    b = join_features(feats, dim=4)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    join_features(feats, dim=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is left as it was
