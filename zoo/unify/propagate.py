"""Lever: smooth the soft labels over the transfer set's k-nearest-neighbour graph (beyond paper 001).

Images of one class sit close together in a teacher's feature space, so where the teachers' logits
mislead q on one image its neighbours usually do not. Label spreading (Zhou et al., *Learning with
Local and Global Consistency*, NIPS 2004), on the kNN graph of Iscen et al. (*Label Propagation for
Deep Semi-supervised Learning*, CVPR 2019):

    A_ij = max(0, s_ij)^gamma for j among the k nearest neighbours of i (cosine similarity s), else 0
    W = A + A^T,  S = D^-1/2 W D^-1/2  (D = diag(W 1))
    F* = (1 - alpha) (I - alpha S)^-1 Y = lim F_t,  F_{t+1} = alpha S F_t + (1 - alpha) Y    (Zhou Eq. 1-4)

with Y = q (every transfer image is a soft-labelled seed; optionally weighted per image), and the new q
is F* with rows renormalised. The graph is built blockwise (``knn_graph``: never an n x n matrix, peak
memory about ``block_elements`` floats) and S is a sparse [n, n] tensor with at most 2 n k entries;
everything runs on the device of the inputs. Features: each teacher's penultimate features
(``zoo.architectures.split_head(model)[0]``), joined by ``join_features`` so that every teacher counts
equally, or the student's own features after a first round.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Propagation", "join_features", "knn_graph", "label_spreading", "propagate_soft_labels"]

# Blocks of queries are sized so that one [b, n] similarity block holds about this many floats (64 MiB).
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Propagation:
    """The lever's settings, as a Recipe carries them (``Recipe.propagation``; None: off): ``k``
    neighbours, ``alpha`` in [0, 1) (how far labels travel), ``dim`` principal components of the
    joined teacher features (None: all), ``gamma`` the similarity exponent. Validated when made."""

    k: int = 10
    alpha: float = 0.8
    dim: int | None = 64
    gamma: float = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"propagation k must be an int >= 1 (neighbours per image); got {self.k!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a < 1:
            raise ValueError(f"propagation alpha must be a number in [0, 1); got {a!r}")
        d = self.dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"propagation dim must be a positive int or null (all features); got {d!r}")
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g < math.inf:
            raise ValueError(f"propagation gamma must be a finite number > 0; got {g!r}")
        object.__setattr__(self, "alpha", float(a))
        object.__setattr__(self, "gamma", float(g))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Propagation:
        """From a config mapping ({k, alpha, dim, gamma}, any subset); ValueError naming an unknown key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"propagation must be a mapping {{k, alpha, dim, gamma}} or null; got {d!r}")
        unknown = sorted(set(d) - {"k", "alpha", "dim", "gamma"})
        if unknown:
            raise ValueError(f"propagation has unknown key(s) {unknown}; allowed: k, alpha, dim, gamma")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_features(features: Tensor, name: str = "features") -> Tensor:
    if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a [n, d] tensor with n >= 2 samples; got {shape}")
    if not features.is_floating_point() or not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} must be finite floating point (one row of features per transfer image)")
    return features


def join_features(features: Sequence[Tensor], dim: int | None = None) -> Tensor:
    """One [n, D] feature matrix from several teachers' [n, d_i] features (the same n images).

    Each teacher's features are centred over the n images and scaled to unit length per image, then
    concatenated and divided by sqrt(N): the cosine similarity of two joined rows is the mean of the
    teachers' cosine similarities, so a wide teacher does not outvote a narrow one. ``dim``: project
    onto the top ``dim`` principal components (randomised, torch.pca_lowrank) to make the kNN search
    cheaper (cost n^2 D); None keeps all sum_i d_i columns."""
    if isinstance(features, Tensor) or len(features) == 0:
        raise ValueError("features must be a non-empty sequence of [n, d_i] tensors, one per teacher")
    n = features[0].shape[0] if isinstance(features[0], Tensor) else None
    parts = []
    for i, f in enumerate(features):
        f = _check_features(f, f"features[{i}]")
        if f.shape[0] != n:
            raise ValueError(
                f"every teacher's features need the same rows; features[{i}] has {f.shape[0]}, not {n}"
            )
        f = f.float() - f.float().mean(0, keepdim=True)
        parts.append(torch.nn.functional.normalize(f, dim=1))
    x = torch.cat(parts, dim=1) / math.sqrt(len(parts))
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int or None; got {dim!r}")
        if dim < x.shape[1]:
            # pca_lowrank starts from a random projection: seeded here, so that the same features give
            # the same q whatever ran before in the process (the stage's output is a function of its inputs).
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                _, _, v = torch.pca_lowrank(x, q=dim, center=False, niter=4)
            x = x @ v[:, :dim]
    return x


def knn_graph(features: Tensor, k: int = 10, block_elements: int = _BLOCK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """(indices [n, k] int64, similarities [n, k]): each row's k most cosine-similar other rows.

    Exact, computed in blocks of b = block_elements // n query rows against all n rows (one [b, n]
    matrix at a time), so memory stays O(n k + block_elements) and the work is O(n^2 d), on the
    features' device. A row is never its own neighbour."""
    x = _check_features(features)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, n - 1] = [1, {n - 1}]; got {k!r}")
    x = torch.nn.functional.normalize(x.float(), dim=1)
    b = max(1, int(block_elements) // n)
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
    sim = torch.empty(n, k, dtype=x.dtype, device=x.device)
    for start in range(0, n, b):
        stop = min(start + b, n)
        s = x[start:stop] @ x.T
        rows = torch.arange(stop - start, device=x.device)
        s[rows, rows + start] = -math.inf  # not its own neighbour
        sim[start:stop], idx[start:stop] = s.topk(k, dim=1)
    return idx, sim


def _normalized_affinity(indices: Tensor, similarities: Tensor, gamma: float) -> Tensor:
    """Sparse (CSR) S = D^-1/2 (A + A^T) D^-1/2 [n, n] from the kNN lists (Iscen et al. Eq. 9-10)."""
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    vals = similarities.reshape(-1).clamp_min(0).pow(gamma)
    both = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    # coalesce() sums the two copies of an edge that is in both kNN lists (W = A + A^T).
    w = torch.sparse_coo_tensor(both, torch.cat([vals, vals]), (n, n), check_invariants=False).coalesce()
    i, v = w.indices(), w.values()
    deg = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, i[0], v)
    inv_sqrt = deg.clamp_min(1e-12).rsqrt()
    s = torch.sparse_coo_tensor(i, v * inv_sqrt[i[0]] * inv_sqrt[i[1]], (n, n), check_invariants=False)
    # CSR: its sparse @ dense product is an order of magnitude faster than COO's on CPU (measured:
    # 16x at n = 20k, k = 20). Its "beta" notice is silenced: only the product is used, which is stable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return s.coalesce().to_sparse_csr()


def label_spreading(
    q: Tensor,
    indices: Tensor,
    similarities: Tensor,
    alpha: float = 0.8,
    gamma: float = 3.0,
    iters: int | None = None,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """Soft labels [n, L] spread over the kNN graph (Zhou et al. 2004, Eq. 1-4), rows summing to 1.

    q [n, L] (rows summing to 1), indices / similarities [n, k] from knn_graph. Y = q, scaled per row
    by ``sample_weights`` [n] >= 0 when given (a seed's say in its neighbours' labels, e.g. how sure
    we are that the image is of a union class). alpha in [0, 1): how far labels travel (0 returns q;
    0.8 measured best of 0.5-0.99 in issue 18's exploration: 0.9 and above hurt on one trial);
    gamma: the similarity exponent of Iscen et al. (3). ``iters`` fixed-point steps
    F <- alpha S F + (1 - alpha) Y; the default, ceil(log(1e-4) / log(alpha)), brings the error under
    1e-4 of the fixed point (the spectral radius of alpha S is at most alpha). Float32 or float64 as q."""
    if not isinstance(q, Tensor) or q.dim() != 2 or not q.is_floating_point():
        raise ValueError("q must be a floating-point [n, L] tensor of soft labels")
    n = q.shape[0]
    if not isinstance(indices, Tensor) or indices.dim() != 2 or indices.shape[0] != n:
        raise ValueError(f"indices must be [n, k] with n = {n} rows (knn_graph on the same images)")
    if not isinstance(similarities, Tensor) or similarities.shape != indices.shape:
        raise ValueError(f"similarities must have the shape of indices {tuple(indices.shape)}")
    if bool((indices < 0).any()) or bool((indices >= n).any()):
        raise ValueError(f"indices must lie in [0, {n}); rebuild them with knn_graph on these images")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must lie in [0, 1); got {alpha!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0; got {gamma!r}")
    if iters is None:
        iters = 0 if alpha == 0 else math.ceil(math.log(1e-4) / math.log(alpha))
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0 or None; got {iters!r}")
    y = q
    if sample_weights is not None:
        if tuple(sample_weights.shape) != (n,) or bool((sample_weights < 0).any()):
            raise ValueError(f"sample_weights must be [n] = [{n}] and >= 0")
        y = q * sample_weights.to(q.dtype).unsqueeze(1)
    s = _normalized_affinity(indices.to(q.device), similarities.to(q.device, q.dtype), float(gamma))
    f = y
    for _ in range(iters):
        f = alpha * (s @ f) + (1 - alpha) * y
    f = f.clamp_min(0)
    total = f.sum(1, keepdim=True)
    # A row that received no mass at all (weight 0 and no weighted neighbour) keeps its own q.
    return torch.where(total > 0, f / total.clamp_min(torch.finfo(f.dtype).tiny), q)


def propagate_soft_labels(
    q: Tensor,
    features: Tensor | Sequence[Tensor],
    k: int = 10,
    alpha: float = 0.8,
    gamma: float = 3.0,
    dim: int | None = 64,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """The lever in one call: q [n, L] spread over the kNN graph of ``features`` (one [n, d] tensor, or
    one per teacher, joined by join_features and projected to ``dim`` principal components)."""
    x = join_features(features, dim) if not isinstance(features, Tensor) else _check_features(features)
    if x.shape[0] != q.shape[0]:
        raise ValueError(
            f"features have {x.shape[0]} rows but q has {q.shape[0]}: one row per transfer image"
        )
    indices, sims = knn_graph(x.to(q.device), k)
    return label_spreading(q, indices, sims, alpha, gamma, sample_weights=sample_weights)
