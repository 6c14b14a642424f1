"""A multi-label demo data set: Fashion-MNIST mosaics (docs/multilabel.md "Demo data").

Each image is a 2 x 2 grid of 28 x 28 tiles (56 x 56, uint8, gray). It holds k distinct classes,
k drawn uniformly from 1..4; the k classes are drawn without replacement from the 10, each is one
Fashion-MNIST image of that class in one of k tiles chosen at random, and the other tiles are black.
Black (rather than a repeated class) keeps "one tile, one object" and lets the label count vary
visibly, as objects do in MS-COCO images; the target is the set of classes present.

Splits come from the matching Fashion-MNIST splits, so no source image is shared between them:
    "train": the Fashion-MNIST training images minus the validation hold-out,
    "val":   1/6 of the training images (10,000) held apart (a fixed draw, HOLDOUT_SEED, whatever the
             seed: train and val never share a source image),
    "test":  the Fashion-MNIST test images.
Within a split a source image may appear in several mosaics (tiles are drawn with replacement).
Everything is a function of (split, n, seed): the same call gives the same mosaics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist

SPLITS = ("train", "val", "test")
GRID = 2
TILE = 28
MAX_CLASSES = GRID * GRID
VAL_FRACTION = 1 / 6  # 10,000 of Fashion-MNIST's 60,000 training images, the size of its test split
HOLDOUT_SEED = 0
# One stream per split: the same seed gives unrelated draws for train, val and test.
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


def holdout_indices(num_train: int = 60_000) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted indices (train, val) into the Fashion-MNIST training images: val is a fixed draw
    of num_train * VAL_FRACTION of them (HOLDOUT_SEED), train the rest."""
    val_size = int(num_train * VAL_FRACTION)
    if not 0 < val_size < num_train:
        raise ValueError(f"{num_train} training images are too few to hold a validation split apart")
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(num_train)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def plan_mosaics(labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Source indices [n, 4] (tile order: row-major; -1 = black tile) into the images whose class
    `labels` are given, drawing only from `pool`. Each row has 1 to 4 distinct classes."""
    labels, pool = np.asarray(labels), np.asarray(pool)
    classes = np.unique(labels[pool])
    if len(classes) < MAX_CLASSES:
        raise ValueError(f"the pool holds {len(classes)} classes; mosaics need at least {MAX_CLASSES}")
    counts = rng.integers(1, MAX_CLASSES + 1, size=n)
    # Row i takes the first counts[i] classes of a random permutation of the classes, put in the first
    # counts[i] tiles of a random permutation of the tiles (argsort of uniforms: one permutation per row).
    chosen = classes[np.argsort(rng.random((n, len(classes))), axis=1)[:, :MAX_CLASSES]]
    tiles = np.argsort(rng.random((n, MAX_CLASSES)), axis=1)
    rows, slot = np.nonzero(np.arange(MAX_CLASSES)[None, :] < counts[:, None])
    wanted = chosen[rows, slot]
    picked = np.empty(len(rows), dtype=np.int64)
    for c in classes:
        members = pool[labels[pool] == c]
        sel = wanted == c
        picked[sel] = members[rng.integers(len(members), size=int(sel.sum()))]
    sources = np.full((n, MAX_CLASSES), -1, dtype=np.int64)
    sources[rows, tiles[rows, slot]] = picked
    return sources


def compose_mosaics(images: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """uint8 [n, 56, 56] from 28 x 28 source images and a plan [n, 4] (-1 = black tile)."""
    n = len(sources)
    out = np.zeros((n, GRID * TILE, GRID * TILE), dtype=np.uint8)
    for tile in range(MAX_CLASSES):
        r, c = divmod(tile, GRID)
        used = sources[:, tile] >= 0
        out[used, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = images[sources[used, tile]]
    return out


def mosaic_targets(labels: np.ndarray, sources: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot uint8 [n, num_classes]: the classes of the non-black tiles."""
    targets = np.zeros((len(sources), num_classes), dtype=np.uint8)
    rows, tiles = np.nonzero(sources >= 0)
    targets[rows, np.asarray(labels)[sources[rows, tiles]]] = 1
    return targets


def mosaic_plan(split: str, n: int, seed: int = 0, path: str | Path | None = None) -> np.ndarray:
    """The source plan [n, 4] of `fashion_mosaics(split, n, seed)`: indices into the Fashion-MNIST
    training images ("train", "val") or test images ("test"); -1 = black tile."""
    return _load_and_plan(split, n, seed, path)[2]


def _load_and_plan(split: str, n: int, seed: int, path: str | Path | None):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    images, labels = load_fashion_mnist("test" if split == "test" else "train", path=path)
    if split == "test":
        pool = np.arange(len(labels))
    else:
        train, val = holdout_indices(len(labels))
        pool = train if split == "train" else val
    rng = np.random.default_rng([int(seed), _SPLIT_STREAM[split]])
    return images, labels, plan_mosaics(labels, pool, int(n), rng)


def fashion_mosaics(
    split: str, n: int, seed: int = 0, path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [n, 56, 56], targets uint8 {0, 1} [n, 10], class names) of Fashion-MNIST mosaics
    (see the module text). `path`: the Fashion-MNIST directory (default: zoo.data.find_fashion_mnist)."""
    images, labels, sources = _load_and_plan(split, n, seed, path)
    classes = list(FASHION_MNIST_CLASSES)
    return compose_mosaics(images, sources), mosaic_targets(labels, sources, len(classes)), classes
