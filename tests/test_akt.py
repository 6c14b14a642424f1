"""AKT library (zoo/akt, paper 003): the game's signs, D_G, the softmax-layer copy, the four methods,
the divergence check and bad input. Tiny CNNs on 8x8 random images: the whole file runs in seconds."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.akt import (
    METHODS,
    AKTConfig,
    AKTNets,
    akt_discriminator_loss,
    akt_epoch,
    akt_nets_for,
    akt_step,
    build_akt_nets,
    check_divergence,
    classifier_loss,
    copy_head,
    discriminator_loss,
    epoch_batches,
    generator_loss,
    make_optimisers,
    pseudo_labels,
)
from zoo.architectures import build_model
from zoo.artifacts import InputSpec, ModelSpec
from zoo.train import Schedule

NUM_CLASSES = 3
SHAPE = (1, 8, 8)


def _nets(seed: int = 0, arch: str = "cnn", arch_kwargs: dict | None = None) -> AKTNets:
    torch.manual_seed(seed)
    arch_kwargs = {"width": 4, "depth": 2} if arch_kwargs is None else arch_kwargs
    return build_akt_nets(arch, NUM_CLASSES, SHAPE[0], SHAPE[1], d_hidden=(16, 8), **arch_kwargs)


def _batch(seed: int = 0, b: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(b, *SHAPE, generator=gen)
    y_t = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
    x_s = torch.randn(b, *SHAPE, generator=gen) * 2 + 1  # another distribution than the target
    return x_t, y_t, x_s


def _features(nets: AKTNets, x_t: torch.Tensor, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the step feeds the discriminators: M's of x_t (in the joint pass), G's of x_s."""
    nets = copy.deepcopy(nets).train()  # a copy: train-mode BatchNorm updates running statistics
    with torch.no_grad():
        return nets.m_embed(torch.cat([x_t, x_s]))[: len(x_t)], nets.g_embed(x_s)


# ---------------------------------------------------------------------------------------- signs


def test_loss_gradients_point_the_way_of_the_game() -> None:
    real, fake = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    discriminator_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()  # D: raise real logits, lower fake ones
    fake_g = torch.zeros(4, requires_grad=True)
    generator_loss(fake_g).backward()
    assert (fake_g.grad < 0).all()  # G: raise D's logit of its own (fake) features
    assert discriminator_loss(torch.tensor([9.0]), torch.tensor([-9.0])) < 1e-3  # a perfect D pays ~0
    assert torch.allclose(generator_loss(torch.tensor([0.0])), torch.tensor(math.log(2)))
    z = torch.randn(4, 5)  # Eq. 4 with the BCE sign: weighted sum of torch's BCE with real = 1, fake = 0
    bce = lambda logit, y: F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, y))
    expected = 0.3 * (bce(z[0], 1.0) + bce(z[1], 0.0)) + 2.0 * (bce(z[2, :1], 1.0) + bce(z[3, :1], 0.0))
    assert torch.allclose(akt_discriminator_loss(z[0], z[1], z[2, :1], z[3, :1], 0.3, 2.0), expected)
    assert torch.allclose(
        akt_discriminator_loss(z[0], z[1], None, None, 0.3, 0.0), 0.3 * (bce(z[0], 1.0) + bce(z[1], 0.0))
    )


def _adversarial_cfg(**kw: object) -> AKTConfig:
    return AKTConfig(
        **{"method": "akt", "lr_d": 0.05, "lr_g": 0.05, "momentum": 0.0, "d_hidden": (16, 8), **kw}
    )


def test_discriminator_step_lowers_its_loss() -> None:
    nets, cfg = _nets(), _adversarial_cfg()
    opt = make_optimisers(nets, cfg)
    x_t, y_t, x_s = _batch()
    nets.init_generator()
    f_t, f_s = _features(nets, x_t, x_s)
    before = copy.deepcopy(nets)
    akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=0, iteration=0)

    def loss_d(n: AKTNets) -> float:  # torch's BCE, real = 1, fake = 0, for both discriminators
        bce = lambda z, y: F.binary_cross_entropy_with_logits(z, torch.full_like(z, y))
        with torch.no_grad():
            return sum(float(bce(d(f_t), 1.0) + bce(d(f_s), 0.0)) for d in (n.d_i, n.d_g))

    assert loss_d(nets) < loss_d(before)


def test_generator_step_raises_the_discriminators_error() -> None:
    nets, cfg = _nets(), _adversarial_cfg()
    opt = make_optimisers(nets, cfg)
    x_t, y_t, x_s = _batch()
    akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=0, iteration=0)  # G := M, then one game round
    _, f_old = _features(nets, x_t, x_s)
    akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=0, iteration=1)
    _, f_new = _features(nets, x_t, x_s)
    with torch.no_grad():  # the error of the discriminators as they are after the step, on fakes
        error = lambda f: float(F.softplus(nets.d_i(f)).mean() + F.softplus(nets.d_g(f)).mean())
        assert error(f_new) > error(f_old)


def test_generator_step_leaves_the_discriminators_and_m_alone() -> None:
    nets, cfg = _nets(), _adversarial_cfg(d_steps=1)
    opt = make_optimisers(nets, cfg)
    names = {id(p) for p in opt.g.param_groups[0]["params"]}
    assert names.isdisjoint(
        id(p) for p in [*nets.m.parameters(), *nets.d_i.parameters(), *nets.g_head.parameters()]
    )
    assert names == {id(p) for p in nets.g_embed.parameters()}


# ------------------------------------------------------------------------------------- D_G, copy


def test_discriminators_have_no_batchnorm_and_d_g_reads_the_batch_mean() -> None:
    nets = _nets()
    for d in (nets.d_i, nets.d_g):
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    f = torch.randn(6, nets.m_head.in_features)
    out = nets.d_g(f)
    assert out.shape == (1,)
    assert torch.allclose(out, nets.d_g(f.mean(0, keepdim=True)))
    assert torch.allclose(out, nets.d_g(f.flip(0)))
    assert nets.d_i(f).shape == (6,)


def test_copy_head_copies_exactly_and_only_the_head() -> None:
    nets = _nets()
    g_before = {k: v.clone() for k, v in nets.g.state_dict().items()}
    copy_head(nets.m_head, nets.g_head)
    assert torch.equal(nets.g_head.weight, nets.m_head.weight) and torch.equal(
        nets.g_head.bias, nets.m_head.bias
    )
    assert nets.g_head.weight.data_ptr() != nets.m_head.weight.data_ptr()  # a copy, not a shared tensor
    head = {"fc.weight", "fc.bias"}
    changed = {k for k, v in nets.g.state_dict().items() if not torch.equal(v, g_before[k])}
    assert changed == head


@pytest.mark.parametrize("arch,arch_kwargs", [("squeezenet", {}), ("mlp", {"hidden": 8, "layers": 1})])
def test_other_architectures_copy_their_head_and_step(arch: str, arch_kwargs: dict) -> None:
    """SqueezeNet's head is its final 1x1 conv read as a Linear (a view): the copy must reach the conv."""
    nets = _nets(arch=arch, arch_kwargs=arch_kwargs)
    before = {k: v.clone() for k, v in nets.g.named_parameters()}
    copy_head(nets.m_head, nets.g_head)
    assert torch.equal(nets.g_head.weight, nets.m_head.weight) and torch.equal(
        nets.g_head.bias, nets.m_head.bias
    )
    head = {k for k, p in nets.g.named_parameters() if any(p is q for q in nets.g_head.parameters())}
    changed = {k for k, p in nets.g.named_parameters() if not torch.equal(p, before[k])}
    assert head and changed <= head and "weight" in " ".join(changed)
    cfg = AKTConfig(d_hidden=(16, 8))
    metrics = akt_step(nets, make_optimisers(nets, cfg), *_batch(), cfg, epoch=0, iteration=0)
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("copy_every,iteration,copied", [(1, 5, True), (2, 4, True), (2, 3, False)])
def test_step_copies_the_head_every_k_iterations(copy_every: int, iteration: int, copied: bool) -> None:
    nets, cfg = _nets(), _adversarial_cfg(copy_every=copy_every)
    opt = make_optimisers(nets, cfg)
    nets.init_generator()
    with torch.no_grad():
        nets.g_head.weight.add_(1.0)  # make G's head differ from M's
    m_head = copy.deepcopy(nets.m_head)  # M's head as it is when G's is copied (before M's update)
    akt_step(nets, opt, *_batch(), cfg, epoch=0, iteration=iteration)
    assert torch.equal(nets.g_head.weight, m_head.weight) is copied


# ---------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_a_few_steps_without_nan(method: str) -> None:
    nets = _nets()
    cfg = AKTConfig(method=method, warmup_epochs=1 if method == "pseudo-label" else 0, d_hidden=(16, 8))
    opt = make_optimisers(nets, cfg)
    g_start = copy.deepcopy(nets.g.state_dict())
    dg_start = copy.deepcopy(nets.d_g.state_dict())
    frozen = None
    for epoch in range(3):
        for i in range(2):
            x_t, y_t, x_s = _batch(seed=10 * epoch + i)
            metrics = akt_step(
                nets,
                opt,
                x_t,
                y_t,
                x_s if method != "scratch" else None,
                cfg,
                epoch=epoch,
                iteration=2 * epoch + i,
            )
            assert all(math.isfinite(v) for v in metrics.values()), metrics
            if method == "pseudo-label" and epoch >= 1 and frozen is None:
                frozen = copy.deepcopy(nets.g.state_dict())
    keys = set(metrics)
    assert {"loss_m", "loss_m_target"} <= keys
    assert ("agreement" in keys) == (method != "scratch")
    assert ("d_acc" in keys) == (method in ("akt-di", "akt"))
    assert ("dg_acc" in keys) == (method == "akt")
    g_end = nets.g.state_dict()
    dg_trained = not all(torch.equal(v, nets.d_g.state_dict()[k]) for k, v in dg_start.items())
    assert dg_trained == (method == "akt")
    if method == "scratch":  # G is never touched
        assert all(torch.equal(g_start[k], g_end[k]) for k in g_start)
    if method == "pseudo-label":  # G is M frozen at the end of the warm-up: it never changes after
        assert all(torch.equal(frozen[k], g_end[k]) for k in frozen)
        assert not all(torch.equal(g_start[k], g_end[k]) for k in g_start)
    assert all(torch.isfinite(p).all() for p in nets.parameters())


def test_warmup_trains_m_on_the_target_then_g_starts_as_a_copy_of_m() -> None:
    nets = _nets()
    cfg = AKTConfig(method="akt", warmup_epochs=1, d_hidden=(16, 8))
    opt = make_optimisers(nets, cfg)
    x_t, y_t, x_s = _batch()
    assert set(akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=0, iteration=0)) == {"loss_m", "loss_m_target"}
    assert not bool(nets.generator_ready)
    nets.init_generator()
    assert all(torch.equal(a, b) for a, b in zip(nets.m.state_dict().values(), nets.g.state_dict().values()))
    assert bool(nets.generator_ready) and "generator_ready" in nets.state_dict()


def test_pseudo_labels_and_eq6() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    hard, w = pseudo_labels(logits, "hard", threshold=0.5)
    assert hard.tolist() == [0, 1] and w.tolist() == [1.0, 0.0]
    soft, w = pseudo_labels(logits, "soft")
    assert torch.allclose(soft, logits.softmax(1)) and w.tolist() == [1.0, 1.0]
    m_t, y_t, m_s = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(2, 3)
    loss = classifier_loss(m_t, y_t, m_s, hard, torch.tensor([1.0, 0.0]), lambda_s=0.5)
    expected = (
        F.cross_entropy(m_t, y_t) + 0.5 * F.cross_entropy(m_s[:1], hard[:1]) / 2
    )  # 1/b counts the dropped
    assert torch.allclose(loss.total, expected)
    soft_loss = classifier_loss(m_t, y_t, m_s, soft, None, lambda_s=1.0)
    assert torch.allclose(soft_loss.source, -(soft * m_s.log_softmax(1)).sum(1).mean())
    assert classifier_loss(m_t, y_t).source is None


# ------------------------------------------------------------------------------------- an epoch


@pytest.mark.parametrize("n_t,n_s,world", [(10, 37, 1), (37, 10, 1), (10, 37, 2), (5, 0, 1), (7, 7, 3)])
def test_epoch_batches_pass_over_the_larger_set_and_cycle_the_smaller(n_t: int, n_s: int, world: int) -> None:
    shards = [epoch_batches(n_t, n_s, 8, seed=1, epoch=2, world=world, rank=r) for r in range(world)]
    assert len({len(b) for b in shards}) == 1  # every rank takes as many steps (DDP would wait forever)
    for n, k in ((n_t, 0), (n_s, 1)):
        if n == 0:
            assert all(s is None for b in shards for _, s in b)
            continue
        seen = torch.cat([pair[k] for b in shards for pair in b])
        assert set(seen.tolist()) == set(range(n))  # every image of both sets in an epoch
        for b in shards:
            sizes = {len(pair[k]) for pair in b}
            assert len(sizes) == 1 and all(len(set(pair[k].tolist())) == len(pair[k]) for pair in b)
    larger = max(n_t, n_s)
    assert len(shards[0]) == math.ceil(math.ceil(larger / world) / math.ceil(8 / world))
    again = epoch_batches(n_t, n_s, 8, seed=1, epoch=2, world=world, rank=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, shards[0]))  # a function of (seed, epoch)
    other = epoch_batches(n_t, n_s, 8, seed=1, epoch=3, world=world, rank=0)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, shards[0]))


@pytest.mark.parametrize("method", METHODS)
def test_akt_epoch_runs_the_steps_and_the_schedule(method: str) -> None:
    spec = ModelSpec("cnn", ["a", "b", "c"], InputSpec(*SHAPE, (0.0,), (1.0,)), {"width": 4, "depth": 2})
    torch.manual_seed(0)
    nets = akt_nets_for(spec, (16, 8))
    assert tuple(nets.input_shape) == SHAPE and nets.num_classes == 3
    cfg = AKTConfig(method=method, warmup_epochs=0 if method == "scratch" else 1, d_hidden=(16, 8))
    opt = make_optimisers(nets, cfg)
    schedule = Schedule(epochs=4, lr=cfg.lr_m, batch_size=6, lr_step_at=0.75, seed=0)
    gen = torch.Generator().manual_seed(0)
    x_t, y_t = torch.randn(12, *SHAPE, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    x_s = torch.randn(18, *SHAPE, generator=gen)
    history = [akt_epoch(nets, opt, x_t, y_t, x_s, cfg, schedule, epoch=e) for e in range(4)]
    assert all(h["iterations"] == 3 for h in history)  # ceil(18 / 6): one pass over the source
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    assert opt.m.param_groups[0]["lr"] == pytest.approx(0.001)
    if opt.g is not None:  # G's rate steps with M's; the discriminators' does not (the paper)
        assert opt.g.param_groups[0]["lr"] == pytest.approx(0.001)
        assert opt.d.param_groups[0]["lr"] == cfg.lr_d
    assert history[0]["samples"] == 18 and history[0]["train_loss"] == history[0]["loss_m"]  # warm-up/scratch
    uses = method != "scratch"
    assert history[-1]["samples"] == (36 if uses else 18) and ("agreement" in history[-1]) == uses
    assert all(math.isfinite(v) for h in history for v in h.values())
    with pytest.raises(ValueError, match="needs source images"):
        akt_epoch(nets, opt, x_t, y_t, None, AKTConfig(method="akt", d_hidden=(16, 8)), schedule, epoch=0)


# ------------------------------------------------------------------------------------ divergence


def test_check_divergence() -> None:
    cfg = AKTConfig(divergence_patience=3, divergence_accuracy=0.99)
    healthy = [{"d_acc": 0.7, "loss_m": 1.0}] * 5
    assert check_divergence([], cfg) is None
    assert check_divergence(healthy, cfg) is None
    won = healthy + [{"d_acc": 1.0, "loss_m": 1.0}] * 3
    assert "discriminator" in check_divergence(won, cfg) and "epochs 5-7" in check_divergence(won, cfg)
    assert check_divergence(won[:-1], cfg) is None  # two epochs won are not yet three
    assert check_divergence(healthy + [{"d_acc": 1.0}, {"d_acc": 0.9}, {"d_acc": 1.0}], cfg) is None
    nan = healthy + [{"d_acc": 0.7, "loss_g": float("nan")}]
    assert "loss_g" in check_divergence(nan, cfg) and "epoch 5" in check_divergence(nan, cfg)
    assert check_divergence([{"loss_m": 0.1}] * 10, cfg) is None  # no game (scratch): never "won"


# -------------------------------------------------------------------------------------- bad input


def test_mismatched_architectures_are_refused() -> None:
    cnn = lambda **kw: build_model("cnn", NUM_CLASSES, 1, 8, **kw)
    with pytest.raises(ValueError, match="same architecture"):
        AKTNets(cnn(width=4), cnn(width=8), SHAPE)
    with pytest.raises(ValueError, match="same architecture"):
        AKTNets(cnn(), build_model("mlp", NUM_CLASSES, 1, 8), SHAPE)
    with pytest.raises(ValueError, match="same architecture"):
        AKTNets(cnn(), build_model("cnn", NUM_CLASSES + 1, 1, 8), SHAPE)


def test_bad_batches_are_refused() -> None:
    nets, cfg = _nets(), AKTConfig(d_hidden=(16, 8))
    opt = make_optimisers(nets, cfg)
    x_t, y_t, x_s = _batch()
    step = lambda *a: akt_step(nets, opt, *a, cfg, epoch=0, iteration=0)
    with pytest.raises(ValueError, match="x_t"):
        step(torch.randn(8, 1, 10, 10), y_t, x_s)
    with pytest.raises(ValueError, match="x_t"):
        step(torch.randn(8, 3, 8, 8), y_t, x_s)
    with pytest.raises(ValueError, match="x_s"):
        step(x_t, y_t, torch.randn(8, 1, 9, 8))
    with pytest.raises(ValueError, match="empty source"):
        step(x_t, y_t, x_s[:0])
    with pytest.raises(ValueError, match="empty source"):
        step(x_t, y_t, None)
    with pytest.raises(ValueError, match="y_t"):
        step(x_t, y_t + NUM_CLASSES, x_s)
    with pytest.raises(ValueError, match="y_t"):
        step(x_t, y_t.float(), x_s)
    with pytest.raises(ValueError, match="x_t"):
        step(x_t[:0], y_t[:0], x_s)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"method": "transfer"}, "method"),
        ({"lambda_s": -1.0}, "lambda_s"),
        ({"lr_d": 0.0}, "lr_d"),
        ({"d_steps": 0}, "d_steps"),
        ({"copy_every": 1.5}, "copy_every"),
        ({"pseudo_labels": "argmax"}, "pseudo_labels"),
        ({"confidence_threshold": 1.0}, "confidence_threshold"),
        ({"method": "pseudo-label"}, "warmup_epochs"),
        ({"lambda_di": 0.0, "lambda_dg": 0.0}, "lambda_di"),
        ({"d_hidden": [16]}, "d_hidden"),
        ({"lr_m": float("nan")}, "lr_m"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AKTConfig(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        AKTConfig().lambda_s = 2.0  # type: ignore[misc]
