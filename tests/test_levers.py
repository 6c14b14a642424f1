"""Levers beyond paper 001 (zoo/unify/{calibration,confidence,self_training,sharpen}.py, the core's
augmentation): the pure functions, and that each option of a Recipe reaches the student's loss
through build_targets / make_loss / train_trial. Fast: tiny tensors, one tiny training run per option."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zoo.artifacts import InputSpec, ModelSpec
from zoo.pipeline.sweep import SweepData, train_trial
from zoo.train import Schedule, random_translate
from zoo.unify import estimate_soft_labels, soft_cross_entropy
from zoo.unify.calibration import (
    TeacherCalibration,
    apply_teacher_temperatures,
    calibration_from_metadata,
    fit_calibration,
    fit_temperature,
    in_class_pvalues,
    teacher_pvalues,
)
from zoo.unify.confidence import confidence_scores, in_union_weights, sample_weights
from zoo.unify.propagate import Propagation, propagate_soft_labels
from zoo.unify.recipe import Q_LEVERS_OFF, Recipe, build_targets, make_loss
from zoo.unify.self_training import add_student_teacher
from zoo.unify.sharpen import sharpen

MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)


def _logits(b: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 4, generator=g) * 3


# ------------------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(t_true):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6000, 4, generator=g) * 2
    labels = torch.multinomial(torch.softmax(base, -1), 1, generator=g).squeeze(1)
    # A teacher whose logits are t_true times too large (over-confident for t_true > 1).
    t = fit_temperature(base * t_true, labels)
    assert abs(t - t_true) / t_true < 0.1


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="equally many"):
        fit_temperature(torch.randn(5, 3), torch.tensor([0, 1]))


def test_apply_teacher_temperatures_divides_each_teacher():
    z = _logits()
    out = apply_teacher_temperatures(z, [2.0, 0.5])
    assert torch.allclose(out[:, 0], z[:, 0] / 2) and torch.allclose(out[:, 1], z[:, 1] * 2)
    with pytest.raises(ValueError, match="one per teacher"):
        apply_teacher_temperatures(z, [1.0])
    with pytest.raises(ValueError, match="> 0"):
        apply_teacher_temperatures(z, [1.0, 0.0])


def test_calibration_changes_which_teacher_wins_a_disagreement():
    # Teacher 0 says class 1, teacher 1 says class 2, equally sure: CE picks by the margins. Cooling
    # teacher 1 (t > 1: it is over-confident) hands class 1 the win.
    z = torch.zeros(1, 2, 4)
    z[0, 0] = torch.tensor([0.0, 4.0, 0.0, 0.0])
    z[0, 1] = torch.tensor([0.0, 0.0, 4.5, 0.0])
    before = estimate_soft_labels(z, MASK, "ce", 1.0).argmax(-1).item()
    after = estimate_soft_labels(apply_teacher_temperatures(z, [1.0, 3.0]), MASK, "ce", 1.0).argmax(-1).item()
    assert (before, after) == (2, 1)


# ------------------------------------------------------------------------------------- confidence
def test_confidence_scores_ignore_masked_entries_and_rank_confident_samples_first():
    z = torch.zeros(2, 2, 4)
    z[0, 0, 0] = 8.0  # teacher 0 is sure of sample 0
    z[:, 0, 3] = float("inf")  # masked: must not count
    z[:, 1, 0] = float("nan")  # masked
    c = confidence_scores(z, MASK)
    assert torch.isfinite(c).all() and c[0] > 0.99 and abs(c[1] - 1 / 3) < 1e-6


def test_sample_weights_have_mean_one_and_threshold_drops():
    z = _logits(64)
    s = sample_weights(z, MASK, "confidence")
    assert abs(float(s.mean()) - 1) < 1e-5 and (s > 0).all()
    c = confidence_scores(z, MASK)
    thr = float(c.median())
    s2 = sample_weights(z, MASK, "confidence", threshold=thr)
    assert torch.equal(s2 == 0, c < thr)
    assert sample_weights(z, MASK, "none") is None
    with pytest.raises(ValueError, match="sample_weighting"):
        sample_weights(z, MASK, "entropy")


def test_sample_weights_in_soft_cross_entropy():
    out, q = torch.randn(8, 4), torch.softmax(torch.randn(8, 4), -1)
    w = torch.rand(4) + 0.5
    a = soft_cross_entropy(out, q, 3.0, w, sample_weights=torch.ones(8))
    assert torch.allclose(a, soft_cross_entropy(out, q, 3.0, w))
    s = torch.zeros(8)
    s[0] = 8.0  # all the weight on sample 0
    assert torch.allclose(
        soft_cross_entropy(out, q, 3.0, sample_weights=s), soft_cross_entropy(out[:1], q[:1], 3.0)
    )


# ---------------------------------------------------------------------------------------- augment
def test_random_translate_shifts_each_sample_and_is_seeded():
    x = torch.randn(16, 1, 8, 8)
    y = random_translate(x, torch.Generator().manual_seed(0), pad=1)
    assert y.shape == x.shape
    assert torch.equal(y, random_translate(x, torch.Generator().manual_seed(0), pad=1))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifts = set()
    for b in range(16):
        found = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(y[b], padded[b, :, dy : dy + 8, dx : dx + 8])
        ]
        assert found, f"sample {b} is not a translation of its input"
        shifts.add(found[0])
    assert len(shifts) > 1  # per-sample shifts, not one per batch
    assert torch.equal(random_translate(x, torch.Generator(), pad=0), x)


# ---------------------------------------------------------------------------------- self-training
def test_add_student_teacher_appends_a_teacher_over_all_classes():
    z, s = _logits(8), torch.randn(8, 4)
    z2, m2 = add_student_teacher(z, MASK, s)
    assert z2.shape == (8, 3, 4) and m2[2].all() and torch.equal(z2[:, 2], s) and torch.equal(m2[:2], MASK)
    q = estimate_soft_labels(z2, m2, "ce", 3.0)
    assert torch.allclose(q.sum(-1), torch.ones(8), atol=1e-5)
    with pytest.raises(ValueError, match="student_logits"):
        add_student_teacher(z, MASK, torch.randn(8, 3))


# ------------------------------------------------------------------- the options reach the student
def _cfg(**levers) -> Recipe:
    return Recipe(**{"method": "ce", "mode": "bs", "temperature": 3.0, **levers})


def test_build_targets_and_make_loss_honour_the_levers():
    z = _logits(32)
    base = build_targets(z, MASK, _cfg())
    assert base.sample_weights is None
    calib = build_targets(z, MASK, _cfg(teacher_temperatures=[1.0, 4.0]))
    assert not torch.allclose(calib.q, base.q)
    weighted = build_targets(z, MASK, _cfg(sample_weighting="confidence"))
    assert weighted.sample_weights.shape == (32,)
    out, idx = torch.randn(32, 4), torch.arange(32)
    dev = torch.device("cpu")
    l0 = make_loss(_cfg(), base, dev)(out, idx)
    l1 = make_loss(_cfg(), weighted, dev)(out, idx)
    assert not torch.allclose(l0, l1)
    selfed = build_targets(z, MASK, _cfg(), student_logits=torch.randn(32, 4) * 5)
    assert not torch.allclose(selfed.q, base.q)
    bp = build_targets(z, MASK, _cfg(mode="bp"))
    assert bp.q is None and bp.logits is not None and bp.mask is not None


def _tiny_data() -> SweepData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g)
    z = _logits(48, seed=2)
    return SweepData(
        train_images=x[:40],
        train_logits=z[:40],
        holdout_images=x[40:],
        holdout_logits=z[40:],
        mask=MASK,
        classes=["a", "b", "c", "d"],
        val_images=x[:16],
        val_labels=torch.arange(16) % 4,
    )


SPEC = ModelSpec("mlp", ["a", "b", "c", "d"], InputSpec(1, 8, 8, (0.0,), (1.0,)), {"hidden": 16, "layers": 1})


def _schedule(epochs: int, lr: float) -> Schedule:
    return Schedule(epochs=epochs, lr=lr, batch_size=16, seed=0)


def test_each_lever_reaches_train_trial():
    data = _tiny_data()
    one = _schedule(1, 0.1)
    loss = [train_trial(data, SPEC, one, _cfg())[-1]["train_loss"]]
    for levers in (
        {"teacher_temperatures": [1.0, 5.0]},
        {"sample_weighting": "confidence"},
        {"augment": True},
        {"self_train_rounds": 1},
    ):
        loss.append(train_trial(data, SPEC, one, _cfg(**levers))[-1]["train_loss"])
    assert len(set(loss)) == len(loss), f"some option changed nothing: {loss}"
    with pytest.raises(ValueError, match="one per teacher"):
        train_trial(data, SPEC, one, _cfg(teacher_temperatures=[1.0]))
    with pytest.raises(ValueError, match="self_train_rounds"):
        _cfg(self_train_rounds=-1)


def test_the_job_path_carries_calibration_and_sample_weights(tmp_path):
    """Main job: write_soft_labels (stage 4) applies the temperatures and writes the sample weights;
    load_targets (the Ray Train worker's reader) hands them to make_loss."""
    import json

    import pyarrow as pa

    from zoo.labels import build_label_space
    from zoo.pipeline.soft_labels import load_targets, write_soft_labels
    from zoo.pipeline.storage import write_parquet_atomic
    from zoo.unify.calibration import apply_teacher_temperatures as cool
    from zoo.unify.confidence import sample_weights as weigh

    space = build_label_space([["a", "b", "c"], ["b", "c", "d"]], ["t0", "t1"])
    z = _logits(24) * space.mask
    ids = [f"s{i}" for i in range(24)]
    col = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1).numpy()), 2 * space.num_classes)
    meta = {
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.mask": json.dumps(space.mask.tolist()),
        "zoo.teachers": json.dumps([{"name": n, "version": 1, "run_id": None} for n in space.teachers]),
    }
    logits = write_parquet_atomic(pa.table({"id": ids, "logits": col}), tmp_path / "logits.parquet", meta)
    levered = _cfg(teacher_temperatures=[1.0, 4.0], sample_weighting="confidence")
    out = write_soft_labels(logits, tmp_path / "q.parquet", levered)
    t = load_targets(out, ids[::-1], list(space.classes), levered)
    zc = cool(z, [1.0, 4.0])
    torch.testing.assert_close(t.q, estimate_soft_labels(zc, space.mask, "ce", 3.0).float().flip(0))
    torch.testing.assert_close(t.sample_weights, weigh(zc, space.mask).float().flip(0))
    plain = load_targets(
        write_soft_labels(logits, tmp_path / "p.parquet", _cfg()), ids, list(space.classes), _cfg()
    )
    assert plain.sample_weights is None


def test_job_config_validates_the_lever_options_and_passes_them_to_the_student():
    from zoo.config import ConfigError, config_from_args, load_config

    cfg = config_from_args(["--sample-weighting", "confidence", "--augment"])
    recipe = cfg.recipe(["t0", "t1"])
    assert (recipe.sample_weighting, recipe.augment) == ("confidence", True)
    for bad, match in (
        ({"sample_weighting": "entropy"}, "sample_weighting"),
        ({"sample_weighting": "confidence", "mode": "bp"}, "bp"),
        ({"teacher_temperatures": {"t0": 0}}, "teacher_temperatures"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(overrides=bad)


def test_a_diverging_student_stops_with_a_warning():
    """A NaN loss (here: an absurd lr on the logit-space BP loss) ends the trial at that epoch with a
    RuntimeWarning instead of training NaN weights for the remaining epochs."""
    data = _tiny_data()
    recipe = Recipe(method="mf-lf", mode="bp", temperature=1.0)
    with pytest.warns(RuntimeWarning, match="not finite"):
        history = train_trial(data, SPEC, _schedule(5, 1e12), recipe)
    assert len(history) < 5 and not math.isfinite(history[-1]["train_loss"])
    sane = train_trial(data, SPEC, _schedule(2, 0.01), recipe)
    assert len(sane) == 2 and all(math.isfinite(h["train_loss"]) for h in sane)


# --------------------------------------------------------- what a teacher's owner ships (issue 18)
def _separable(m: int = 60, classes: int = 3, margin: float = 6.0, seed: int = 3):
    """A teacher that gets every held-out image right with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(m) % classes
    logits = torch.randn(m, classes, generator=g) + margin * torch.nn.functional.one_hot(labels, classes)
    return logits, labels


def test_fit_temperature_prior_count_keeps_a_perfect_teacher_off_the_bracket():
    z, y = _separable()
    assert fit_temperature(z, y) < 0.1  # the NLL falls towards 0 as t -> 0 (flat in float64 at the end)
    t = fit_temperature(z, y, prior_count=1.0)
    assert 0.1 < t < 20
    # the prior fades with more data: 10x the images, a smaller pull towards uniform, a lower t
    z10, y10 = _separable(m=600)
    assert fit_temperature(z10, y10, prior_count=1.0) < t
    with pytest.raises(ValueError, match="prior_count"):
        fit_temperature(z, y, prior_count=-1)


def test_teacher_calibration_round_trips_and_validates():
    z, y = _separable()
    cal = fit_calibration(z, y, num_quantiles=10)
    assert len(cal.quantiles) == 11 and list(cal.quantiles) == sorted(cal.quantiles)
    assert cal.n == 60 and cal.accuracy == 1.0 and cal.temperature == fit_temperature(z, y, prior_count=1.0)
    back = TeacherCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    good = cal.to_dict()
    bad = {
        "unknown field": {**good, "colour": "blue"},
        "lacks": {k: v for k, v in good.items() if k != "temperature"},
        "temperature": {**good, "temperature": 0.0},
        "non-decreasing": {**good, "quantiles": [0.9, 0.5]},
        "finite numbers": {**good, "quantiles": [0.1, float("nan")]},
        "n ": {**good, "n": 0},
        "score": {**good, "score": "energy"},
        "version": {**good, "version": 2},
    }
    for match, d in bad.items():
        with pytest.raises(ValueError, match=match):
            TeacherCalibration.from_dict(d)
    with pytest.raises(ValueError, match="JSON object"):
        TeacherCalibration.from_dict([1, 2])


def test_calibration_from_metadata_old_specs_have_none():
    cal = fit_calibration(*_separable())
    assert calibration_from_metadata({}) is None and calibration_from_metadata(None) is None
    assert calibration_from_metadata({"source": "x"}) is None
    assert calibration_from_metadata({"calibration": cal.to_dict()}) == cal
    with pytest.raises(ValueError, match="metadata"):
        calibration_from_metadata({"calibration": {"temperature": 1.0}})


def test_in_class_pvalues_are_uniform_on_the_owners_images_and_low_on_strangers():
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(400) % 3
    own = torch.randn(400, 3, generator=g) + 4 * torch.nn.functional.one_hot(labels, 3)
    cal = fit_calibration(own[:200], labels[:200])
    p_own = in_class_pvalues(own[200:], cal)  # fresh images of its classes
    strangers = torch.randn(200, 3, generator=g)  # no class stands out: low confidence
    p_far = in_class_pvalues(strangers, cal)
    assert bool(((p_own >= 0) & (p_own <= 1)).all()) and abs(float(p_own.mean()) - 0.5) < 0.1
    assert float(p_far.mean()) < 0.1 < float(p_own.mean())
    # monotone in the teacher's confidence; below every owner score 0, above every one 1
    sure = torch.tensor([[0.0, 0.0, 50.0]])
    unsure = torch.zeros(1, 3)
    assert float(in_class_pvalues(sure, cal)) == 1.0 and float(in_class_pvalues(unsure, cal)) == 0.0
    conf = torch.linspace(0, 8, 30).unsqueeze(1) * torch.tensor([[1.0, 0.0, 0.0]])
    p = in_class_pvalues(conf, cal)
    assert bool((p[1:] >= p[:-1]).all())


def test_teacher_pvalues_read_each_teachers_own_classes_and_in_union_weights_drop():
    cal = fit_calibration(*_separable(classes=3))
    z = torch.zeros(4, 2, 4)
    z[:, 0, 3] = float("inf")  # masked for teacher 0: must not count
    z[:, 1, 0] = float("nan")  # masked for teacher 1
    z[0, 0, :3] = torch.tensor([9.0, 0.0, 0.0])  # teacher 0 sure of sample 0
    z[1, 1, 1:] = torch.tensor([0.0, 0.0, 9.0])  # teacher 1 sure of sample 1
    p = teacher_pvalues(z, MASK, [cal, cal])
    assert p.shape == (4, 2) and bool(torch.isfinite(p).all())
    assert p[0, 0] > 0.5 and p[1, 1] > 0.5 and float(p[2:].max()) == 0.0
    s = in_union_weights(z, MASK, [cal, cal], threshold=0.05)
    assert torch.equal(s > 0, torch.tensor([True, True, False, False])) and abs(float(s.mean()) - 1) < 1e-6
    soft = in_union_weights(z, MASK, [cal, cal], soft=True)
    assert torch.allclose(soft, p.amax(1) / p.amax(1).mean())
    with pytest.raises(ValueError, match="one per teacher"):
        teacher_pvalues(z, MASK, [cal])
    with pytest.raises(ValueError, match="threshold"):
        in_union_weights(z, MASK, [cal, cal], threshold=1.0)
    with pytest.raises(ValueError, match="lower it"):
        in_union_weights(z[2:], MASK, [cal, cal])


# ---------------------------------------------------------------------------------------- sharpen
def test_sharpen_keeps_the_argmax_and_lowers_the_entropy():
    q = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(5)), -1)
    entropy = lambda p: -(p * p.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    torch.testing.assert_close(sharpen(q, 1.0), q)
    half = sharpen(q, 0.5)
    torch.testing.assert_close(half, q**2 / (q**2).sum(-1, keepdim=True))
    assert torch.equal(half.argmax(-1), q.argmax(-1)) and bool((entropy(half) < entropy(q)).all())
    hard = sharpen(q, 0)
    assert torch.equal(hard, torch.nn.functional.one_hot(q.argmax(-1), 5).float())
    tiny = torch.tensor([[1.0, 0.0, 0.0]])  # zeros stay zero, no 0/0
    torch.testing.assert_close(sharpen(tiny, 0.3), tiny)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            sharpen(q, bad)


# ------------------------------------------------------------- the levers on q as Recipe options (issue 18)
def _features(b: int, seed: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 6, generator=g), torch.randn(b, 3, generator=g)]


def test_recipe_validates_the_levers_on_q_and_round_trips():
    r = _cfg(sharpen=0, estimation_temperature=1, propagation={"k": 4, "dim": None})
    assert r.sharpen == 0.0 and r.q_temperature == 1.0 and r.propagation == Propagation(k=4, dim=None)
    assert Recipe(**json.loads(json.dumps(r.to_dict()))) == r  # the lineage's JSON makes the same recipe
    assert _cfg().q_temperature == 3.0 and _cfg().propagation is None
    for bad, match in (
        ({"sharpen": 1.5}, "sharpen"),
        ({"sharpen": True}, "sharpen"),
        ({"estimation_temperature": 0}, "estimation_temperature"),
        ({"propagation": {"alpha": 2}}, "alpha"),
        ({"propagation": 3}, "propagation"),
        ({"mode": "bp", "sharpen": 0}, "turn them off for bp"),
        ({"mode": "bp", "propagation": {}}, "turn them off for bp"),
    ):
        with pytest.raises(ValueError, match=match):
            _cfg(**bad)
    assert _cfg(sharpen=0).replace(mode="bp", **Q_LEVERS_OFF).mode == "bp"


def test_build_targets_estimates_at_its_temperature_then_propagates_then_sharpens():
    z, f = _logits(40), _features(40)
    base = build_targets(z, MASK, _cfg())
    t1 = build_targets(z, MASK, _cfg(estimation_temperature=1.0))
    torch.testing.assert_close(t1.q, estimate_soft_labels(z, MASK, "ce", 1.0).float())
    with pytest.raises(ValueError, match="features"):
        build_targets(z, MASK, _cfg(propagation={}))
    prop = build_targets(z, MASK, _cfg(propagation={"k": 5, "dim": None}), features=f)
    torch.testing.assert_close(prop.q, propagate_soft_labels(base.q, f, k=5, dim=None))
    assert not torch.allclose(prop.q, base.q)
    both = build_targets(z, MASK, _cfg(propagation={"k": 5, "dim": None}, sharpen=0.0), features=f)
    assert torch.equal(both.q, sharpen(prop.q, 0))
    # BS balances the estimated class distribution: the weights of q before it is sharpened
    torch.testing.assert_close(both.class_weights, prop.class_weights)
    half = build_targets(z, MASK, _cfg(sharpen=0.5))
    torch.testing.assert_close(half.q, sharpen(base.q, 0.5))


def test_the_levers_on_q_reach_train_trial():
    import dataclasses

    data = dataclasses.replace(_tiny_data(), train_features=_features(40))
    one = _schedule(1, 0.1)
    loss = [
        train_trial(data, SPEC, one, _cfg(**levers))[-1]["train_loss"]
        for levers in ({}, {"sharpen": 0.0}, {"estimation_temperature": 1.0}, {"propagation": {"k": 4}})
    ]
    assert len(set(loss)) == len(loss), f"some option changed nothing: {loss}"
    with pytest.raises(ValueError, match="features"):
        train_trial(_tiny_data(), SPEC, one, _cfg(propagation={}))


def _write_run(tmp_path, b: int = 24):
    """logits.parquet and features.parquet of two teachers, as the inference stage writes them."""
    import pyarrow as pa

    from zoo.labels import build_label_space
    from zoo.pipeline.storage import vector_column, write_parquet_atomic

    space = build_label_space([["a", "b", "c"], ["b", "c", "d"]], ["t0", "t1"])
    z, f = _logits(b) * space.mask, _features(b)
    ids = [f"s{i}" for i in range(b)]
    teachers = json.dumps([{"name": n, "version": 1, "run_id": None} for n in space.teachers])
    meta = {
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.mask": json.dumps(space.mask.tolist()),
        "zoo.teachers": teachers,
    }
    cols = {"id": ids, "logits": vector_column(z.reshape(b, -1).numpy())}
    logits = write_parquet_atomic(pa.table(cols), tmp_path / "logits.parquet", meta)
    feats = [
        {"name": n, "version": 1, "column": f"f{i}", "dim": x.shape[1]}
        for i, (n, x) in enumerate(zip(space.teachers, f))
    ]
    fcols = {"id": ids, **{d["column"]: vector_column(x.half().numpy()) for d, x in zip(feats, f)}}
    meta = {"zoo.features": json.dumps(feats), "zoo.teachers": teachers}
    features = write_parquet_atomic(pa.table(fcols), tmp_path / "features.parquet", meta)
    return space, ids, z, [x.half().float() for x in f], logits, features


def test_the_soft_labels_stage_propagates_over_the_features_file_with_the_owners_temperatures(tmp_path):
    """Main job: the owners' temperatures (from the teachers' specs) reach the recipe, and the
    soft-labels stage reads features.parquet when the recipe propagates; load_targets hands the
    student that q."""
    from zoo.artifacts import InputSpec, ModelSpec
    from zoo.config import load_config
    from zoo.pipeline.cache import RunDir, StageResult
    from zoo.pipeline.soft_labels import TargetError, load_targets, soft_labels_stage
    from zoo.pipeline.unify import owner_temperatures

    space, ids, z, f, logits_path, features_path = _write_run(tmp_path)
    cfg = load_config(overrides={"owner_calibration": True, "propagate": True, "sharpen": 0.0,
                                 "propagation": {"k": 5, "dim": None}})  # fmt: skip
    cal = fit_calibration(*_separable(classes=3)).to_dict()
    spec = lambda meta: ModelSpec("mlp", ["a", "b", "c"], InputSpec(1, 8, 8, (0.0,), (1.0,)), {}, meta)  # noqa: E731
    said = []
    owners = owner_temperatures([("t0", spec({"calibration": cal})), ("t1", spec({}))], cfg, said.append)
    assert owners == {"t0": cal["temperature"]} and "t1: no owner's calibration" in said[0]
    recipe = cfg.recipe(list(space.teachers), owners)
    assert recipe.teacher_temperatures == (cal["temperature"], 1.0)
    run = RunDir(tmp_path / "run").ensure()
    logits = StageResult("inference", logits_path, "fp", False, 0.0)
    out = soft_labels_stage(run, logits, recipe, features_path)
    t = load_targets(out.path, ids, list(space.classes), recipe)
    expect = build_targets(z, space.mask, recipe, features=f)
    torch.testing.assert_close(t.q, expect.q)
    assert soft_labels_stage(run, logits, recipe, features_path).skipped
    with pytest.raises(TargetError, match="features"):
        soft_labels_stage(RunDir(tmp_path / "other").ensure(), logits, recipe, None)


def test_job_config_flags_turn_the_levers_on_q_on_and_off(tmp_path):
    from zoo.config import config_from_args, load_config

    plain = tmp_path / "plain.yaml"  # the dataclass's defaults (configs/default.yaml turns levers on)
    plain.write_text("{}\n")
    on = config_from_args(
        ["--config", str(plain), "--owner-calibration", "--sharpen", "0", "--propagate",
         "--estimation-temperature", "1"]
    )  # fmt: skip
    r = on.recipe(["t0", "t1"], {"t0": 2.0})
    assert r.teacher_temperatures == (2.0, 1.0) and r.sharpen == 0 and r.propagation == Propagation()
    assert r.q_temperature == 1.0
    off = config_from_args(
        ["--config", str(plain), "--no-owner-calibration", "--no-propagate", "--sharpen", "1"]
    )
    assert off.recipe(["t0", "t1"], {"t0": 2.0}) == Recipe()
    # the embedded default: the owners' temperatures and q at T = 1 (issue 18's measurement)
    default = config_from_args([]).recipe(["t0", "t1"], {"t0": 2.0})
    assert default.teacher_temperatures == (2.0, 1.0) and default.q_temperature == 1.0
    assert default.temperature == 3.0 and default.propagation is None and default.sharpen == 1.0
    off = config_from_args(["--no-owner-calibration", "--estimation-temperature", "3"])
    assert off.recipe(["t0", "t1"], {"t0": 2.0}).replace(estimation_temperature=None) == Recipe()
    # the config's own temperatures win over the owners'; bp leaves the levers on q off
    cfg = load_config(
        overrides={"owner_calibration": True, "teacher_temperatures": {"t0": 5.0}, "sharpen": 0}
    )
    assert cfg.recipe(["t0", "t1"], {"t0": 2.0, "t1": 3.0}).teacher_temperatures == (5.0, 3.0)
    bp = load_config(overrides={"mode": "bp", "sharpen": 0, "propagate": True})
    assert bp.recipe(["t0"]).replace(mode="bs") == Recipe(mode="bs")
    with pytest.raises(ValueError, match="sharpen"):
        load_config(overrides={"sharpen": 2})


def test_the_sweep_carries_the_levers_and_reads_the_features_of_its_training_images(tmp_path):
    """prepare_data takes the teachers' features of the trials' training images from features.parquet
    (the propagation lever of the job's recipe); a BP grid point turns the levers on q off."""
    from zoo.data import synthetic_images
    from zoo.pipeline.sweep import SweepConfig, prepare_data, trial_config
    from zoo.pipeline.transfer import materialize_transfer_set

    space, ids, z, f, logits_path, features_path = _write_run(tmp_path, b=40)
    images, _ = synthetic_images(40, 4, size=8, seed=0)
    transfer = materialize_transfer_set((images, ids), tmp_path / "transfer.parquet")
    spec = ModelSpec("mlp", list(space.classes), SPEC.input, {"hidden": 16, "layers": 1})
    cfg = SweepConfig(transfer_limit=30, proxy_holdout=6)
    data = prepare_data(transfer, logits_path, spec, cfg, features_path=features_path)
    # the rows of the training images: find each training row's logits among all, take its features
    rows = [int(torch.nonzero((z == zi).all(-1).all(-1))[0]) for zi in data.train_logits]
    for got, full in zip(data.train_features, f):
        torch.testing.assert_close(got, full[rows])
    job = _cfg(sharpen=0.0, propagation={"k": 4}, teacher_temperatures=[2.0, 1.0])
    trial, _ = trial_config(
        {"method": "ce", "mode": "bp", "temperature": 1.0, "lr": 0.1}, job, _schedule(1, 0.1)
    )
    assert trial.replace(mode="bs") == _cfg(temperature=1.0, teacher_temperatures=[2.0, 1.0])
    trial, _ = trial_config(
        {"method": "sd", "mode": "e", "temperature": 1.0, "lr": 0.1}, job, _schedule(1, 0.1)
    )
    assert trial.propagation == Propagation(k=4) and trial.sharpen == 0.0
    assert train_trial(data, spec, _schedule(1, 0.1), trial)[-1]["train_loss"] > 0


def test_the_summary_names_the_levers_on_q():
    """The job's summary says which levers on q its recipe used (the default turns two on)."""
    from zoo.pipeline.report import _levers_line

    assert _levers_line(Recipe()) == [] and _levers_line(Recipe(teacher_temperatures=(1.0, 1.0))) == []
    line = _levers_line(Recipe(teacher_temperatures=(1.2, 1.0), estimation_temperature=1.0, sharpen=0.5))
    expected = "per-teacher temperatures 1.20, 1.00, q estimated at T=1, sharpened (tau 0.5)"
    assert line == [f"levers on q: {expected}"]
