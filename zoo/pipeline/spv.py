"""Stage: SPV, paper 001's supervised benchmark (Table 2): the student's network trained on the union
of the teachers' own labelled data, with the teachers' training recipe. It needs that data, so it
exists for the demo zoo (whose split records it) and for a user's own labelled data (`--spv-data`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from zoo.artifacts import ModelSpec, build_net, preprocess, save_model
from zoo.demo import DemoSplit
from zoo.pipeline.cache import RunDir, StageResult
from zoo.pipeline.datasets import LabelledSet, dataset_for_split
from zoo.pipeline.storage import atomic_dir
from zoo.train import fit_classifier

__all__ = ["VERSION", "demo_spv_data", "spv_stage", "train_spv"]

VERSION = 2  # 2: trained with the shared training core


def demo_spv_data(split: DemoSplit, classes: list[str]) -> LabelledSet:
    """The union of the demo teachers' training data, labels as indices into ``classes``."""
    ds = dataset_for_split(split)
    images, labels = split.spv_data(ds.images_train, ds.labels_train, classes=classes)
    return LabelledSet(images, labels, f"the teachers' data of {split.zoo or 'the demo zoo'}")


def train_spv(
    spec: ModelSpec, data: LabelledSet, *, epochs: int, lr: float, batch_size: int, seed: int, optimizer: str
) -> torch.nn.Module:
    """SPV: ``spec``'s network (the student's) trained supervised on ``data`` (`zoo.train.fit_classifier`)."""
    torch.manual_seed(seed)
    model = build_net(spec)
    return fit_classifier(
        model,
        preprocess(data.images, spec.input),
        torch.as_tensor(data.labels),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        optimizer=optimizer,
        device="cpu",
    )


def spv_stage(run: RunDir, spec: ModelSpec, data: LabelledSet, recipe: dict, seed: int) -> StageResult:
    """Stage: `<run>/spv/`, SPV trained with ``recipe`` (epochs, lr, batch_size, optimizer: the
    teachers' recipe), redone when the student's network, the data or the recipe change."""
    net = replace(spec, metadata={})

    def compute(path, fp) -> None:
        model = train_spv(net, data, seed=seed, **recipe)
        saved = replace(net, metadata={"role": "spv", "train_size": len(data), "source": data.source})
        with atomic_dir(path) as tmp:
            save_model(model.cpu(), saved, tmp)

    inputs = [net.to_dict(), data.fingerprint(), recipe, seed]
    return run.stage("spv", run.spv, VERSION, inputs, compute, sidecar=True)
