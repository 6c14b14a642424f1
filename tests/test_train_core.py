"""The training core (zoo/train.py): the pieces every trainer of the project stands on. Tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.train import (
    Schedule,
    classification_loss,
    epoch_order,
    evaluate,
    fit,
    fit_classifier,
    random_translate,
    train_epoch,
)


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two separable classes of 1x4x4 images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3 + (y.float() * 2 - 1)[:, None, None, None]
    return x, y


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def test_schedule_steps_once_and_validates() -> None:
    s = Schedule(epochs=10, lr=0.1, batch_size=4)
    assert [s.lr_at(e) for e in (0, 4, 5, 9)] == [0.1, 0.1, pytest.approx(0.01), pytest.approx(0.01)]
    assert Schedule(epochs=1, lr=0.1, batch_size=4).lr_at(0) == 0.1  # too short for a second part
    opt = s.make_optimizer(_net().parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert s.set_lr(opt, 7) == pytest.approx(0.01) and opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert isinstance(
        Schedule(1, 0.1, 4, optimizer="adam").make_optimizer(_net().parameters()), torch.optim.Adam
    )
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"lr": math.inf}, {"batch_size": 0}, {"optimizer": "lion"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Schedule(**{"epochs": 2, "lr": 0.1, "batch_size": 4, **bad})


def test_the_budget_follows_the_data() -> None:
    s = Schedule(epochs=5, lr=0.05, batch_size=128)
    assert s.for_data(20000, 750).epochs == 5  # 157 steps an epoch: 785 >= 750, unchanged
    assert s.for_data(400, 750).epochs == 188  # 4 steps an epoch
    assert s.for_data(400, 1).epochs == 5 and s.for_data(400, 750).lr == s.lr


def test_train_epoch_lowers_the_loss_and_skips_a_trailing_single_sample() -> None:
    x, y = _data(65)  # 65 = 4 batches of 16 and a batch of one, which BatchNorm could not train on
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = Schedule(3, 0.1, 16).make_optimizer(model.parameters())
    loss = classification_loss(y)
    first = train_epoch(model, opt, x, loss, epoch_order(65, 0, 0), 16)
    for epoch in range(1, 4):
        last = train_epoch(model, opt, x, loss, epoch_order(65, 0, epoch), 16)
    assert math.isfinite(first) and last < first


def test_fit_reports_every_epoch_stops_on_request_and_on_nan() -> None:
    x, y = _data()
    seen = []

    def on_epoch(epoch, model, metrics):
        metrics["accuracy"] = evaluate(model, x, y)
        seen.append(epoch)
        return epoch == 2  # stop after the third epoch

    history = fit(_net(), x, classification_loss(y), Schedule(10, 0.1, 16), on_epoch=on_epoch)
    assert seen == [0, 1, 2] and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["accuracy"] > 0.9 and history[-1]["lr"] == 0.1
    with pytest.warns(RuntimeWarning, match="not finite"):
        diverged = fit(_net(), x, classification_loss(y), Schedule(5, 1e30, 16))
    assert len(diverged) < 5 and not math.isfinite(diverged[-1]["train_loss"])


def test_fit_classifier_is_seeded_and_leaves_the_global_rng_alone() -> None:
    x, y = _data()
    a, b = _net(1), _net(1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    fit_classifier(a, x, y, epochs=3, lr=0.01, batch_size=16, seed=5, augment=True)
    after = torch.rand(1)
    fit_classifier(b, x, y, epochs=3, lr=0.01, batch_size=16, seed=5, augment=True)
    assert torch.equal(before, after)  # the global stream is restored
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # the same seed, the same model
    assert not a.training and evaluate(a, x, y) > 0.9
    with pytest.raises(ValueError, match="equally many"):
        fit_classifier(_net(), x, y[:-1], epochs=1, lr=0.01, batch_size=16, seed=0)


def test_classification_loss_hard_soft_and_weighted() -> None:
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    idx = torch.arange(2)
    hard = classification_loss(torch.tensor([0, 1]))(out, idx)
    soft = classification_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))(out, idx)
    torch.testing.assert_close(hard, soft)  # one-hot soft labels are the hard labels
    w = torch.tensor([2.0, 0.0])
    weighted = classification_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), w)(out, idx)
    torch.testing.assert_close(weighted, -torch.log_softmax(out, 1)[0, 0] * 2 / 2)


def test_epoch_order_and_augmentation_are_seeded() -> None:
    assert torch.equal(epoch_order(10, 3, 1), epoch_order(10, 3, 1))
    assert sorted(epoch_order(10, 3, 1).tolist()) == list(range(10))
    x = torch.randn(4, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    assert random_translate(x, g).shape == x.shape
