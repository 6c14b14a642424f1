"""Train a multi-label network in this process, on the training core (`zoo.train.fit`) with the losses of
`zoo.multilabel.loss_fn`: the demo zoo's teachers (the recipe "none": BCE on their labels) and the
reproduction's many small students. The jobs train the same losses on Ray Train
(`zoo.pipeline.training.train_network`), whose workers seed and build the network as here.

    model = fit_multilabel(spec, images, targets, schedule)                       # BCE only
    model = fit_multilabel(spec, images, targets, schedule, DistillRecipe("3d"), teacher=logits)
    model = fit_union(spec, images, logits [n, N, L], mask [N, L], schedule)      # the unified student
    logits = predict_multilabel(model, spec, images)                              # [n, C] logits
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.artifacts import ModelSpec, build_net, preprocess
from zoo.train import LossFn, Schedule, fit, pick_device, predict_logits

from .loss_fn import DistillRecipe, distill_loss_fn, second_view, union_loss_fn

__all__ = ["fit_multilabel", "fit_spec", "fit_union", "predict_multilabel"]


def fit_spec(spec: ModelSpec, x: Tensor, loss: LossFn, schedule: Schedule) -> nn.Module:
    """``spec``'s network, seeded by ``schedule.seed`` as a Ray Train worker builds it, trained with
    ``loss(out, idx)`` on the preprocessed images ``x`` (on their device; a loss with ``bind`` is given
    the network first, as the runner does). Returns it in eval mode."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(schedule.seed)  # the initial weights, as a Ray Train worker draws them
        model = build_net(spec).to(x.device)
        if hasattr(loss, "bind"):
            loss.bind(model)
        fit(model, x, loss, schedule)
    return model.eval()


def fit_multilabel(
    spec: ModelSpec,
    images: Any,
    targets: Any,
    schedule: Schedule,
    recipe: DistillRecipe = DistillRecipe("none"),
    *,
    teacher: Tensor | None = None,
    teacher_view2: Tensor | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """``spec``'s network trained on uint8 ``images`` (preprocessed to ``spec.input`` here) with 0/1
    ``targets`` [n, C] and ``recipe``'s loss (`distill_loss_fn`: teacher logits [n, C] on the same
    images, and on their second views for the views pairing)."""
    dev = pick_device(device)
    x = preprocess(images, spec.input).to(dev)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float32, device=dev)
    put = lambda t: None if t is None else torch.as_tensor(t, dtype=torch.float32).to(dev)  # noqa: E731
    views = recipe.pairing == "views"
    loss = distill_loss_fn(
        recipe, y, put(teacher), images=x if views else None, teacher_view2=put(teacher_view2)
    )
    return fit_spec(spec, x, loss, schedule)


def fit_union(
    spec: ModelSpec,
    images: Any,
    logits: Tensor,
    mask: Tensor,
    schedule: Schedule,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
) -> nn.Module:
    """The unified multi-label student: ``spec``'s network trained on uint8 ``images`` with
    `union_loss_fn` over the teachers' logits [n, N, L] on the union label space and their mask [N, L]."""
    dev = pick_device(device)
    x = preprocess(images, spec.input).to(dev)
    return fit_spec(spec, x, union_loss_fn(logits.to(dev), mask.to(dev), temperature), schedule)


@torch.no_grad()
def predict_multilabel(model: nn.Module, spec: ModelSpec, images: Any, flip: bool = False) -> Tensor:
    """The logits [n, C] of ``model`` on uint8 ``images`` (on the CPU); ``flip``: on their second views."""
    out = []
    for i in range(0, len(images), 1024):
        x = preprocess(images[i : i + 1024], spec.input)
        out.append(predict_logits(model, second_view(x) if flip else x))
    return torch.cat(out)
