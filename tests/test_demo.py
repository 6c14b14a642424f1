"""zoo.demo: the invariants of paper 001's teacher protocol (Sec. 4.1.1) on the split, for the default
configuration and for random ones (hypothesis), its serialisation and its data views. Pure: only
label arrays, no images and no training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.data import FASHION_MNIST_CLASSES
from zoo.demo import DemoConfig, DemoSplit, load_split, make_split, parse_arch, save_split
from zoo.labels import build_label_space

CLASSES = FASHION_MNIST_CLASSES


def _labels(per_class: int, k: int = 10, seed: int = 0) -> np.ndarray:
    """A shuffled, balanced label array (what Fashion-MNIST's label files look like)."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class)).astype(np.int64)


TRAIN = _labels(6000)  # Fashion-MNIST sizes: 60k train, 10k test
TEST = _labels(1000, seed=1)


def check_invariants(split: DemoSplit, cfg: DemoConfig, train: np.ndarray, test: np.ndarray) -> None:
    """Everything the protocol promises, checked from the split and the label arrays alone."""
    union = set(split.union_labels)
    assert len(union) == cfg.n_union_classes
    assert list(split.union_classes) == sorted((CLASSES[c] for c in union), key=lambda n: n.casefold()), (
        "union classes in label-space order"
    )
    assert len(split.teachers) == cfg.n_teachers
    covered: set[int] = set()
    used: list[int] = []
    lo, hi = cfg.classes_per_teacher
    ilo, ihi = cfg.images_per_class
    for t in split.teachers:
        labs = set(t.labels)
        assert labs <= union and len(labs) == len(t.labels)
        if cfg.overlap == "complete":
            assert labs == union
        else:
            assert min(lo, len(union)) <= len(labs) <= min(hi, len(union))
        assert t.classes == tuple(CLASSES[c] for c in t.labels)
        covered |= labs
        idx = np.asarray(t.train_indices)
        per_class = np.bincount(train[idx], minlength=10)
        assert set(np.flatnonzero(per_class)) == labs, "a teacher trains on exactly its classes"
        assert all(ilo <= per_class[c] <= ihi for c in labs), "images per class in range"
        assert parse_arch(_spec(t.arch, t.arch_kwargs)) in [parse_arch(a) for a in cfg.archs]
        used += t.train_indices
    assert covered == union, "every union class is covered by a teacher"
    assert len(used) == len(set(used)), "no image shared between teachers"
    transfer = set(split.transfer_indices)
    assert not transfer & set(used), "the transfer set holds no teacher's image"
    val = set(split.val_indices)
    assert len(val) == cfg.val_size and not val & transfer and not val & set(used)
    assert set(train[list(val)]) <= union, "validation images are of the union classes"
    held: list[int] = []
    for t in split.teachers:  # each owner's held-out slice: its classes, k per class, nobody else's
        per_class = np.bincount(train[list(t.holdout_indices)], minlength=10)
        assert all(per_class[c] == (cfg.holdout_per_class if c in t.labels else 0) for c in range(10))
        held += t.holdout_indices
    assert len(held) == len(set(held)) and not set(held) & (set(used) | transfer | val)
    free = len(train) - len(used) - len(val) - len(held)
    assert len(transfer) == (free if cfg.transfer_size is None else cfg.transfer_size)
    assert all(0 <= i < len(train) for i in transfer)
    assert list(split.eval_indices) == np.flatnonzero(np.isin(test, list(union))).tolist()


def _spec(arch: str, kwargs: dict) -> str:
    return arch + "".join(f":{k}={json.dumps(v)}" for k, v in kwargs.items())


def test_default_split_follows_the_protocol() -> None:
    cfg = DemoConfig()
    split = make_split(cfg, TRAIN, TEST, CLASSES)
    check_invariants(split, cfg, TRAIN, TEST)
    assert len({t.arch + str(t.arch_kwargs) for t in split.teachers}) == min(cfg.n_teachers, len(cfg.archs))
    # The transfer set reaches beyond L_U, as in the paper.
    assert set(TRAIN[list(split.transfer_indices)]) == set(range(10))
    assert len(split.eval_indices) == 1000 * cfg.n_union_classes


def test_complete_overlap() -> None:
    cfg = DemoConfig(overlap="complete", n_teachers=4, images_per_class=(50, 200), seed=3)
    split = make_split(cfg, TRAIN, TEST, CLASSES)
    check_invariants(split, cfg, TRAIN, TEST)
    assert all(set(t.labels) == set(split.union_labels) for t in split.teachers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_teachers=st.integers(1, 7),
    n_union=st.integers(2, 10),
    cpt=st.tuples(st.integers(2, 10), st.integers(0, 6)).map(lambda t: (t[0], t[0] + t[1])),
    ipc=st.tuples(st.integers(50, 200), st.integers(0, 150)).map(lambda t: (t[0], min(200, t[0] + t[1]))),
    transfer=st.one_of(st.none(), st.integers(0, 3000)),
    overlap=st.sampled_from(["random", "complete"]),
    val=st.integers(0, 400),
)
def test_random_configurations_keep_the_invariants(
    seed, n_teachers, n_union, cpt, ipc, transfer, overlap, val
) -> None:
    train, test = _labels(600), _labels(100, seed=2)
    try:
        cfg = DemoConfig(
            seed=seed,
            n_teachers=n_teachers,
            n_union_classes=n_union,
            classes_per_teacher=cpt,
            images_per_class=ipc,
            transfer_size=transfer,
            overlap=overlap,
            val_size=val,
        )
    except ValueError as e:  # only for configurations that cannot cover the union
        assert overlap == "random" and n_teachers * min(cpt[1], n_union) < n_union, e
        return
    try:
        split = make_split(cfg, train, test, CLASSES)
    except ValueError as e:  # only when the data set runs out of images
        assert any(k in str(e) for k in ("training images", "transfer_size", "val_size", "holdout")), e
        return
    check_invariants(split, cfg, train, test)
    assert DemoSplit.from_json(split.to_json()) == split


def test_split_is_seeded_and_streams_are_independent() -> None:
    cfg = DemoConfig(seed=7)
    a, b = make_split(cfg, TRAIN, TEST, CLASSES), make_split(cfg, TRAIN, TEST, CLASSES)
    assert a.to_json() == b.to_json()
    c = make_split(replace(cfg, seed=8), TRAIN, TEST, CLASSES)
    assert c.to_json() != a.to_json()
    # More images per teacher change the images, not the classes, architectures or union.
    d = make_split(replace(cfg, images_per_class=(150, 200)), TRAIN, TEST, CLASSES)
    assert [t.labels for t in d.teachers] == [t.labels for t in a.teachers]
    assert [t.arch for t in d.teachers] == [t.arch for t in a.teachers]
    assert [t.train_indices for t in d.teachers] != [t.train_indices for t in a.teachers]


def test_json_round_trip_and_files(tmp_path: Path) -> None:
    split = replace(make_split(DemoConfig(), TRAIN, TEST, CLASSES), zoo="demo")
    path = save_split(split, tmp_path / "sub" / "split.json")
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary left behind
    back = load_split(path)
    assert back == split and back.zoo == "demo"
    assert DemoConfig.from_dict(back.config) == DemoConfig()


def test_tampered_splits_are_refused() -> None:
    d = make_split(DemoConfig(), TRAIN, TEST, CLASSES).to_dict()

    def refused(mutate, match: str) -> None:
        bad = json.loads(json.dumps(d))
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            DemoSplit.from_dict(bad)

    refused(
        lambda s: s["teachers"][1]["train_indices"].append(s["teachers"][0]["train_indices"][0]), "shares"
    )
    refused(lambda s: s["transfer_indices"].append(s["teachers"][0]["train_indices"][0]), "transfer")
    refused(lambda s: s.update(format=99), "format")
    refused(lambda s: s.pop("teachers"), "not a demo split")
    refused(lambda s: s["teachers"][0].update(classes=["Bag"] * len(s["teachers"][0]["labels"])), "names")

    def uncover(s):
        gone = s["union_labels"][0]
        for t in s["teachers"]:
            if gone in t["labels"]:
                k = t["labels"].index(gone)
                del t["labels"][k], t["classes"][k]

    refused(uncover, "covered by no teacher")
    with pytest.raises(ValueError, match="JSON"):
        DemoSplit.from_json("{not json")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images_per_class": (10, 20)}, "50-200"),
        ({"images_per_class": (100, 300)}, "50-200"),
        ({"n_teachers": 2, "classes_per_teacher": (2, 3)}, "cannot cover"),
        ({"classes_per_teacher": (1, 3)}, ">= 2"),
        ({"overlap": "partial"}, "overlap"),
        ({"archs": ()}, "archs"),
        ({"archs": ("cnn:width",)}, "key=value"),
        ({"transfer_size": -1}, "transfer_size"),
        ({"classes_per_teacher": (5, 3)}, "low"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_data_set_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="training images"):
        make_split(DemoConfig(images_per_class=(200, 200), overlap="complete"), _labels(300), TEST, CLASSES)
    with pytest.raises(ValueError, match="transfer_size"):
        make_split(DemoConfig(transfer_size=59000), TRAIN, TEST, CLASSES)
    with pytest.raises(ValueError, match="only 3 classes"):
        make_split(DemoConfig(), _labels(10, k=3), _labels(5, k=3), CLASSES[:3])
    with pytest.raises(ValueError, match="outside"):
        make_split(DemoConfig(), TRAIN, TEST, CLASSES[:5])


def test_data_views() -> None:
    split = make_split(DemoConfig(seed=1), TRAIN, TEST, CLASSES)
    images = np.arange(len(TRAIN))  # the "image" is its index: views are checked exactly
    images_test = np.arange(len(TEST))
    for i, t in enumerate(split.teachers):
        x, y = split.teacher_data(i, images, TRAIN)
        assert x.tolist() == list(t.train_indices)
        assert [t.labels[k] for k in y] == TRAIN[x].tolist()
        xe, ye = split.teacher_eval(i, images_test, TEST)
        assert set(TEST[xe]) == set(t.labels) and [t.labels[k] for k in ye] == TEST[xe].tolist()
    x, y = split.spv_data(images, TRAIN)
    assert sorted(x.tolist()) == sorted(i for t in split.teachers for i in t.train_indices)
    assert [split.union_classes[k] for k in y] == [CLASSES[c] for c in TRAIN[x]]
    # The evaluation labels follow the label space built from the teachers' classes.
    space = build_label_space([t.classes for t in split.teachers])
    assert space.classes == split.union_classes
    xe, ye = split.eval_set(images_test, TEST, classes=tuple(reversed(space.classes)))
    assert [tuple(reversed(space.classes))[k] for k in ye] == [CLASSES[c] for c in TEST[xe]]
    assert set(TRAIN[split.transfer_images(images)]) == set(range(10))
    split.check_labels(TRAIN, TEST)
    with pytest.raises(ValueError, match="same data set"):
        split.check_labels(TRAIN[::-1], TEST)
    with pytest.raises(ValueError, match="not among"):
        split.eval_set(images_test, TEST, classes=["Bag"])


def test_parse_arch() -> None:
    assert parse_arch("cnn") == ("cnn", {})
    assert parse_arch("cnn:width=32:depth=2") == ("cnn", {"width": 32, "depth": 2})
    assert parse_arch("shufflenet_v2:width_mult=0.5") == ("shufflenet_v2", {"width_mult": 0.5})
    with pytest.raises(ValueError):
        parse_arch("")


def test_validation_set_is_labelled_disjoint_and_leaves_the_rest_unchanged() -> None:
    cfg = DemoConfig(seed=2, val_size=700)
    split = make_split(cfg, TRAIN, TEST, CLASSES)
    val = set(split.val_indices)
    assert len(val) == 700 and split.has_validation
    assert not val & set(split.transfer_indices)
    assert not val & {i for t in split.teachers for i in t.train_indices}
    images = np.arange(len(TRAIN))  # the "image" is its index
    x, y = split.val_set(images, TRAIN)
    assert set(x.tolist()) == val  # training images, never the test split's
    assert [split.union_classes[k] for k in y] == [CLASSES[c] for c in TRAIN[x]]
    # Its own random stream: teachers and transfer set are those of a split without validation set.
    none = make_split(replace(cfg, val_size=0), TRAIN, TEST, CLASSES)
    assert not none.has_validation and "val_indices" not in none.to_dict()
    assert none.transfer_indices == split.transfer_indices
    assert [t.train_indices for t in none.teachers] == [t.train_indices for t in split.teachers]
    # transfer_size=None: the transfer set takes every unused image except the validation set.
    every = make_split(replace(cfg, transfer_size=None), TRAIN, TEST, CLASSES)
    assert not set(every.val_indices) & set(every.transfer_indices) and len(every.val_indices) == 700
    with pytest.raises(ValueError, match="val_size"):
        make_split(replace(cfg, val_size=60000), TRAIN, TEST, CLASSES)
    with pytest.raises(ValueError, match="val_size"):
        DemoConfig(val_size=-1)
    bad = split.to_dict()
    bad["val_indices"].append(bad["transfer_indices"][0])
    with pytest.raises(ValueError, match="validation"):
        DemoSplit.from_dict(bad)


def test_each_teacher_has_its_owners_held_out_slice() -> None:
    cfg = DemoConfig(seed=3)
    split = make_split(cfg, TRAIN, TEST, CLASSES)
    assert split.has_holdout
    images = np.arange(len(TRAIN))  # the "image" is its index
    for i, t in enumerate(split.teachers):
        x, y = split.teacher_holdout(i, images, TRAIN)
        assert set(x.tolist()) == set(t.holdout_indices) and len(x) == 20 * len(t.labels)
        assert [t.labels[k] for k in y] == TRAIN[x].tolist()  # labels index the teacher's own classes
    # Its own stream: everything else is what a split without held-out slices draws.
    none = make_split(replace(cfg, holdout_per_class=0), TRAIN, TEST, CLASSES)
    assert not none.has_holdout and "holdout_indices" not in none.to_dict()["teachers"][0]
    assert none.transfer_indices == split.transfer_indices and none.val_indices == split.val_indices
    assert [t.train_indices for t in none.teachers] == [t.train_indices for t in split.teachers]
    bad = split.to_dict()
    bad["teachers"][1]["holdout_indices"].append(bad["transfer_indices"][0])
    with pytest.raises(ValueError, match="held-out"):
        DemoSplit.from_dict(bad)
    with pytest.raises(ValueError, match="holdout_per_class"):
        DemoConfig(holdout_per_class=-1)


def test_split_saved_before_the_held_out_slices_still_loads() -> None:
    d = make_split(DemoConfig(), TRAIN, TEST, CLASSES).to_dict()
    for t in d["teachers"]:
        del t["holdout_indices"]
    del d["config"]["holdout_per_class"]
    old = DemoSplit.from_dict(d)
    assert not old.has_holdout and old.to_dict() == d
    assert len(old.teacher_holdout(0, np.arange(len(TRAIN)), TRAIN)[0]) == 0


def test_split_saved_before_the_validation_set_still_loads() -> None:
    d = make_split(DemoConfig(), TRAIN, TEST, CLASSES).to_dict()
    del d["val_indices"]
    del d["config"]["val_size"]  # older code knew neither
    old = DemoSplit.from_dict(d)
    assert not old.has_validation and old.val_indices == ()
    assert old.to_dict() == d  # the same dict, so the same fingerprints downstream
    assert DemoSplit.from_json(old.to_json()) == old
