"""The multi-label demo: Fashion-MNIST mosaics on disk and multi-label teachers in the zoo, so that the
multi-label jobs run on the demo data (docs/multilabel.md "Demo zoo").

    build = build_multilabel_zoo("fmnist-ml", "data/mosaics", MultilabelDemoConfig())

- the mosaics' train/val/test splits as Parquet in ``data_dir`` (`zoo.multilabel.write_fashion_mosaics`;
  kept when already there with the same sizes and seed);
- ``<name>-all``: one bigger teacher over all 10 labels, trained on the whole train split (tags
  zoo=<name>-all, role=teacher): the distillation job's teacher;
- ``<name>-t0``..: teachers over overlapping label subsets (`subset_labels`), each trained on its own
  share of the train split with its own labels only, as separate parties would (tags zoo=<name>,
  role=teacher): a zoo for the multi-label unification.

Teachers train one after the other in this process on the training core (`zoo.multilabel.fit`); each is
registered with `task: multilabel` (thresholds 0.5) and its test mAP on its own labels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifacts import ModelSpec
from zoo.data import FASHION_MNIST_CLASSES
from zoo.multilabel import multilabel_metrics, read_multilabel, write_fashion_mosaics
from zoo.multilabel.fit import fit_multilabel, predict_multilabel
from zoo.pipeline.datasets import input_spec_for
from zoo.registry import Registry
from zoo.train import Schedule

__all__ = ["MultilabelDemoConfig", "build_multilabel_zoo", "format_rows", "subset_labels"]

MOSAICS_FILE = "mosaics.json"  # what the data directory holds (sizes, seed), to reuse it when unchanged


@dataclass(frozen=True)
class MultilabelDemoConfig:
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 6000, "val": 1000, "test": 2000})
    seed: int = 0
    teachers: int = 3
    labels_per_teacher: int = 5
    big: dict[str, Any] = field(default_factory=lambda: {"width": 32, "depth": 4})  # <name>-all
    small: dict[str, Any] = field(default_factory=lambda: {"width": 16, "depth": 4})  # <name>-t<i>
    epochs: int = 4
    lr: float = 2e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.labels_per_teacher <= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"labels_per_teacher must be in 1..10, got {self.labels_per_teacher}")
        if self.teachers < 0 or any(n < 1 for n in self.sizes.values()) or "train" not in self.sizes:
            raise ValueError(f"need teachers >= 0 and positive split sizes with a train split; got {self}")
        Schedule(self.epochs, self.lr, self.batch_size, "adam", seed=self.seed)  # validates them


def subset_labels(num_classes: int, teachers: int, per_teacher: int) -> list[list[int]]:
    """Overlapping label subsets: teacher i knows ``per_teacher`` consecutive labels (cyclically) from
    i * ceil(num_classes / teachers), so the subsets cover every label and neighbours share some."""
    step = -(-num_classes // max(teachers, 1))
    return [sorted({(i * step + k) % num_classes for k in range(per_teacher)}) for i in range(teachers)]


def _mosaics(data_dir: Path, cfg: MultilabelDemoConfig, log: Callable[[str], None]) -> None:
    wanted = {"sizes": cfg.sizes, "seed": cfg.seed}
    record = data_dir / MOSAICS_FILE
    if record.is_file() and json.loads(record.read_text()) == wanted:
        log(f"[data] mosaics already in {data_dir}: {cfg.sizes}, seed {cfg.seed}")
        return
    log(f"[data] writing Fashion-MNIST mosaics to {data_dir}: {cfg.sizes}, seed {cfg.seed}")
    write_fashion_mosaics(data_dir, dict(cfg.sizes), seed=cfg.seed)
    record.write_text(json.dumps(wanted))


def _train(
    registry: Registry, name: str, tags: dict[str, str], classes: Sequence[int], kwargs: dict[str, Any],
    train: Any, sel: np.ndarray, test: Any, cfg: MultilabelDemoConfig, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """One teacher: its labels' columns of its share of the train split; registered with its test mAP."""
    t0 = time.perf_counter()
    names = [train.classes[c] for c in classes]
    spec = ModelSpec("cnn", names, input_spec_for(train.images), dict(kwargs), task="multilabel")
    schedule = Schedule(cfg.epochs, cfg.lr, cfg.batch_size, "adam", seed=seed)
    model = fit_multilabel(spec, train.images[sel], train.targets[sel][:, classes], schedule)
    scores = predict_multilabel(model, spec, test.images).sigmoid()
    m = multilabel_metrics(scores, test.targets[:, classes])
    metrics = {"mAP": m["mAP"], "CF1": m["CF1"], "OF1": m["OF1"], "train_images": int(len(sel))}
    spec = ModelSpec(spec.arch, names, spec.input, spec.arch_kwargs, {"metrics": metrics}, task="multilabel")
    record = registry.register_model(name, model, spec, tags={**tags, "role": "teacher"})
    return {"name": name, "version": record.version, "labels": names, **metrics,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def build_multilabel_zoo(
    name: str,
    data_dir: str | Path,
    cfg: MultilabelDemoConfig = MultilabelDemoConfig(),
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Write the mosaics (unless there) and train and register the demo teachers (see the module text);
    returns one row per teacher (name, version, labels, test mAP / CF1 / OF1 on its labels, seconds)."""
    data_dir = Path(data_dir)
    _mosaics(data_dir, cfg, log)
    train, test = (read_multilabel(data_dir / f"{s}.parquet") for s in ("train", "test"))
    registry = Registry(tracking_uri)
    log(f"[teachers] {name}-all over all {len(train.classes)} labels, {len(train)} images")
    rows = [
        _train(registry, f"{name}-all", {"zoo": f"{name}-all"}, range(len(train.classes)), cfg.big,
               train, np.arange(len(train)), test, cfg, cfg.seed)
    ]  # fmt: skip
    shares = np.array_split(np.random.default_rng(cfg.seed).permutation(len(train)), max(cfg.teachers, 1))
    for i, labels in enumerate(subset_labels(len(train.classes), cfg.teachers, cfg.labels_per_teacher)):
        log(f"[teachers] {name}-t{i} over {[train.classes[c] for c in labels]}, {len(shares[i])} images")
        rows.append(
            _train(registry, f"{name}-t{i}", {"zoo": name}, labels, cfg.small, train, np.sort(shares[i]),
                   test, cfg, cfg.seed + 1 + i)
        )  # fmt: skip
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The teachers built, as a table."""
    out = [f"{'teacher':<20} {'version':>7} {'images':>7} {'mAP':>7} {'CF1':>7} {'OF1':>7}  labels"]
    for r in rows:
        out.append(
            f"{r['name']:<20} {r['version']:>7} {r['train_images']:>7} {r['mAP']:>7.3f} {r['CF1']:>7.3f} "
            f"{r['OF1']:>7.3f}  {', '.join(r['labels'])}"
        )
    return "\n".join(out)
