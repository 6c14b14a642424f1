"""The model format shared by teachers and unified students, its safe loading and the input contract.

A model is a directory with two files:

- `weights.safetensors`: the module's state_dict as safetensors (tensors only, no code);
- `spec.json`: `ModelSpec.to_dict()` = {format_version, arch, arch_kwargs, input: {channels, height,
  width, mean, std}, classes: [...], metadata: {source, metrics, created, ...}}, plus `task` and
  `thresholds` for multi-label models only (written only when not the default, so that a multi-class
  spec.json is byte-identical to the one written before these fields existed).

Loading never unpickles: the module is rebuilt from the allow-list in `zoo.architectures` and only
tensors are read (`safetensors.torch.load_file`, never `torch.load`). Every refusal is an
`ArtifactError` (a ValueError) that names the file and the problem.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.architectures import ARCHITECTURES, build_model
from zoo.labels import normalize_class_name

__all__ = [
    "FORMAT_VERSION",
    "LUMA_WEIGHTS",
    "DEFAULT_THRESHOLD",
    "SPEC_FILE",
    "TASKS",
    "WEIGHTS_FILE",
    "ArtifactError",
    "build_net",
    "InputSpec",
    "ModelSpec",
    "check_artifact",
    "load_model",
    "preprocess",
    "read_spec",
    "save_model",
]

WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"
FORMAT_VERSION = 1
# ITU-R BT.601 luma, as PIL's convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# multiclass: one softmax over the classes (one label per image). multilabel: one sigmoid per class
# (any number of labels per image), label c predicted when sigmoid(logit_c) >= thresholds[c].
TASKS = ("multiclass", "multilabel")
DEFAULT_THRESHOLD = 0.5


class ArtifactError(ValueError):
    """A model artifact (spec, weights, or their match with the architecture) is refused."""


# ----------------------------------------------------------------------------------------------------
# specs


def _is_int(v: object) -> bool:
    # numbers.Integral also admits numpy integers (e.g. from an array's shape)
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) and math.isfinite(v)


def _json_able(name: str, value: object) -> None:
    # NaN is allowed (a metric may be NaN; Python's json writes and reads it back)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{name} must be JSON-serialisable (str/number/bool/list/dict): {e}") from None


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: `channels` (1 or 3) x `height` x `width` float images, scaled to [0, 1]
    and normalised per channel as (x - mean) / std."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise ArtifactError(f"input.channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        for side in ("height", "width"):
            v = getattr(self, side)
            if not _is_int(v) or v < 1:
                raise ArtifactError(f"input.{side} must be a positive integer, got {v!r}")
            object.__setattr__(self, side, int(v))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, str) or not isinstance(v, Sequence) or not all(_is_number(x) for x in v):
                raise ArtifactError(f"input.{name} must be a list of finite numbers, got {v!r}")
            if len(v) != self.channels:
                raise ArtifactError(
                    f"input.{name} has {len(v)} values for {self.channels} channel(s); give one per channel"
                )
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if any(s <= 0 for s in self.std):
            raise ArtifactError(f"input.std must be > 0, got {list(self.std)}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        if not isinstance(d, Mapping):
            raise ArtifactError(f"input must be an object {{channels, height, width, mean, std}}, got {d!r}")
        keys = {"channels", "height", "width", "mean", "std"}
        missing, unknown = sorted(keys - set(d)), sorted(set(d) - keys)
        if missing or unknown:
            raise ArtifactError(
                f"input: missing keys {missing}, unknown keys {unknown}; expected {sorted(keys)}"
            )
        return cls(**{k: d[k] for k in keys})


def _check_thresholds(thresholds: object, num_classes: int) -> list[float]:
    if isinstance(thresholds, str) or not isinstance(thresholds, Sequence):
        raise ArtifactError(
            f"thresholds must be a list of numbers in (0, 1), one per class; got {thresholds!r}"
        )
    if len(thresholds) != num_classes:
        raise ArtifactError(
            f"thresholds has {len(thresholds)} values for {num_classes} classes; give one per class"
        )
    bad = [t for t in thresholds if not _is_number(t) or not 0 < t < 1]
    if bad:
        raise ArtifactError(f"thresholds must be numbers strictly between 0 and 1; got {bad[:4]}")
    return [float(t) for t in thresholds]


@dataclass(frozen=True)
class ModelSpec:
    """spec.json: the architecture and its kwargs, the input contract, the classes in output order,
    and free JSON metadata (source, metrics, created, lineage...).

    `task` is "multiclass" (softmax over the classes; the default) or "multilabel" (one sigmoid per
    class: the model still outputs one logit per class). A multi-label spec has `thresholds`, one
    decision threshold in (0, 1) per class on sigmoid(logit) (0.5 each when not given); a multi-class
    spec has none (None)."""

    arch: str
    classes: list[str]
    input: InputSpec
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "multiclass"
    thresholds: list[float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ArtifactError(f"arch must be a non-empty string, got {self.arch!r}")
        if isinstance(self.classes, str) or not isinstance(self.classes, Sequence) or not self.classes:
            raise ArtifactError(f"classes must be a non-empty list of names, got {self.classes!r}")
        seen: dict[str, str] = {}
        for c in self.classes:
            if not isinstance(c, str):
                raise ArtifactError(f"class {c!r} is not a string")
            key = normalize_class_name(c)
            if not key:
                raise ArtifactError(f"class {c!r} normalises to an empty name")
            if key in seen:
                raise ArtifactError(f"classes {seen[key]!r} and {c!r} are the same after normalisation")
            seen[key] = c
        object.__setattr__(self, "classes", list(self.classes))
        if isinstance(self.input, Mapping):
            object.__setattr__(self, "input", InputSpec.from_dict(self.input))
        if not isinstance(self.input, InputSpec):
            raise ArtifactError(f"input must be an InputSpec, got {type(self.input).__name__}")
        for name in ("arch_kwargs", "metadata"):
            v = getattr(self, name)
            if v is None:
                v = {}
            if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
                raise ArtifactError(f"{name} must be an object with string keys, got {v!r}")
            _json_able(name, dict(v))
            object.__setattr__(self, name, dict(v))
        if self.task not in TASKS:
            raise ArtifactError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.task == "multiclass":
            if self.thresholds is not None:
                raise ArtifactError(
                    "thresholds apply to multi-label models only; set task='multilabel' or drop thresholds"
                )
        else:
            thresholds = self.thresholds
            if thresholds is None:
                thresholds = [DEFAULT_THRESHOLD] * len(self.classes)
            object.__setattr__(self, "thresholds", _check_thresholds(thresholds, len(self.classes)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "input": self.input.to_dict(),
            "classes": list(self.classes),
        }
        # Defaults are left out, so that a multi-class spec.json stays byte-identical to the one written
        # before `task` existed (and every older reader still reads it).
        if self.task != "multiclass":
            d["task"] = self.task
            if any(t != DEFAULT_THRESHOLD for t in self.thresholds or ()):
                d["thresholds"] = list(self.thresholds or ())
        d["metadata"] = dict(self.metadata)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Validate and build; raises ArtifactError naming the offending field."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"a spec must be a JSON object, got {type(d).__name__}")
        required = {"arch", "input", "classes"}
        optional = {"arch_kwargs", "metadata", "format_version", "task", "thresholds"}
        missing = sorted(required - set(d))
        if missing:
            raise ArtifactError(f"spec lacks required field(s) {missing}")
        unknown = sorted(set(d) - required - optional)
        if unknown:
            raise ArtifactError(
                f"spec has unknown field(s) {unknown}; free information goes under 'metadata'"
            )
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"spec format_version {version!r} is not supported (this code reads {FORMAT_VERSION})"
            )
        return cls(
            arch=d["arch"],
            classes=d["classes"],
            input=InputSpec.from_dict(d["input"]),
            arch_kwargs=d.get("arch_kwargs") or {},
            metadata=d.get("metadata") or {},
            task=d.get("task", "multiclass"),
            thresholds=d.get("thresholds"),
        )


def read_spec(directory: str | os.PathLike[str]) -> ModelSpec:
    """Read and validate `<directory>/spec.json` only (no weights, no allow-list check)."""
    path = Path(directory) / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} not found; a model directory holds {SPEC_FILE} and {WEIGHTS_FILE}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    try:
        return ModelSpec.from_dict(data)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------------------------------
# saving


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied or viewed weights).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, spec: ModelSpec, directory: str | os.PathLike[str]) -> Path:
    """Write `weights.safetensors` and `spec.json` into `directory` and return it.

    The model must match the spec (the module built from spec.arch has the same weight names and
    shapes, and `len(spec.classes)` outputs), so that what is saved can be loaded. Files are written
    in a temporary directory, then renamed into place: a new directory appears whole; an existing
    one has its two files replaced (other files in it are kept).
    """
    if not isinstance(spec, ModelSpec):
        raise ArtifactError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    tensors = _state_tensors(model)
    reference = build_net(spec)
    _check_weights(reference, tensors, "the model to save")
    out = _dry_forward(model, spec)
    _check_output(out, spec, "the model to save")

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        with open(tmp / SPEC_FILE, "w", encoding="utf-8") as f:
            json.dump(spec.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if not directory.exists():
            try:
                os.rename(tmp, directory)
                return directory
            except OSError:
                if not directory.is_dir():  # not a concurrent creation: a real failure
                    raise
        if not directory.is_dir():
            raise ArtifactError(f"{directory} exists and is not a directory")
        # Weights first: a crash between the two renames leaves new weights with the old spec,
        # which load_model refuses loudly if they no longer match.
        os.replace(tmp / WEIGHTS_FILE, directory / WEIGHTS_FILE)
        os.replace(tmp / SPEC_FILE, directory / SPEC_FILE)
        return directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# loading


def build_net(spec: ModelSpec) -> nn.Module:
    """The randomly initialised network a spec describes (its allow-listed architecture, classes and
    input size); ArtifactError when the spec cannot be built."""
    if spec.arch not in ARCHITECTURES:
        raise ArtifactError(
            f"unknown architecture: {spec.arch!r} is not allow-listed; allowed: {', '.join(ARCHITECTURES)}"
        )
    try:
        return build_model(
            spec.arch,
            spec.num_classes,
            spec.input.channels,
            (spec.input.height, spec.input.width),
            **spec.arch_kwargs,
        )
    except ArtifactError:
        raise
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"cannot build {spec.arch!r} from the spec: {e}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path} not found; a model directory holds {SPEC_FILE} and {WEIGHTS_FILE}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ArtifactError(
            f"{path} is a pickle / torch.save file, not safetensors; pickles are never loaded (they can run "
            "code). Re-save the state_dict with zoo.artifacts.save_model or safetensors.torch.save_file"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path} is not a valid safetensors file (truncated or corrupt?): {e}") from None


def _check_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Names, shapes and dtype kinds of `tensors` must match `module.state_dict()` exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    kinds = [
        f"{k}: {tensors[k].dtype} vs {expected[k].dtype}"
        for k in expected
        if k in tensors and tensors[k].dtype.is_floating_point != expected[k].dtype.is_floating_point
    ]
    problems = []
    for label, items in (
        ("missing weights", missing),
        ("unexpected weights", unexpected),
        ("shape mismatches (file vs architecture)", shapes),
        ("dtype mismatches (file vs architecture)", kinds),
    ):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ArtifactError(f"{what} does not match the architecture of its spec: " + "; ".join(problems))
    bad = [k for k, t in tensors.items() if t.dtype.is_floating_point and not torch.isfinite(t).all()]
    if bad:
        raise ArtifactError(f"{what} has non-finite values (NaN/inf) in {bad[:8]}")


def _dry_forward(model: nn.Module, spec: ModelSpec) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, spec.input.channels, spec.input.height, spec.input.width, device=device)
            return model(x)
    except Exception as e:  # noqa: BLE001 - any failure of the forward pass is a refusal
        raise ArtifactError(
            f"a forward pass on a zero input of the spec's size {tuple(x.shape)} fails: {e}"
        ) from None
    finally:
        model.train(was_training)


def _check_output(out: object, spec: ModelSpec, what: str) -> None:
    if not isinstance(out, torch.Tensor) or out.shape != (1, spec.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArtifactError(
            f"{what} outputs {shape} for one input, but the spec lists {spec.num_classes} classes; "
            "the output size must equal len(classes)"
        )


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Load a model directory: validate the spec, rebuild the allow-listed architecture, load the
    safetensors weights (checked name by name and shape by shape), check the output size, and return
    (model in eval mode on `device`, spec). `device="auto"` picks CUDA when present. Never unpickles."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"model directory {directory} does not exist")
    spec = read_spec(directory)
    model = build_net(spec)
    weights_path = directory / WEIGHTS_FILE
    tensors = _read_weights(weights_path)
    _check_weights(model, tensors, str(weights_path))
    model.load_state_dict(tensors, strict=True)
    model = model.to(_resolve_device(device)).eval()
    _check_output(_dry_forward(model, spec), spec, f"the model in {directory}")
    return model, spec


def check_artifact(directory: str | os.PathLike[str]) -> ModelSpec:
    """Run every check of `load_model` (on CPU) and return the spec; raises ArtifactError otherwise."""
    return load_model(directory, device="cpu")[1]


# ----------------------------------------------------------------------------------------------------
# input contract


_CHANNELS_IN = (1, 2, 3, 4)


def _to_numpy(image: object) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ArtifactError(f"images must be uint8 numpy arrays, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ArtifactError(
            f"images must be uint8 (0-255), got dtype {image.dtype}; convert with .astype(np.uint8)"
        )
    return image


def _as_bhwc(batch: np.ndarray) -> np.ndarray:
    """[B, H, W] or [B, H, W, C] with C in 1, 2, 3, 4 -> [B, H, W, C]."""
    if batch.ndim == 3:
        return batch[..., None]
    if batch.ndim == 4 and batch.shape[-1] in _CHANNELS_IN:
        return batch
    raise ArtifactError(
        f"image batch must be [B, H, W] or [B, H, W, C] with C in {_CHANNELS_IN}, got shape {batch.shape}"
    )


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, C_in, H, W] -> [B, channels, H, W]: drop alpha (gray+alpha, RGBA), gray -> RGB by repetition,
    RGB -> gray by luma."""
    if x.shape[1] in (2, 4):
        x = x[:, : x.shape[1] - 1]
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    luma = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(dim=1, keepdim=True)


def _preprocess_same_size(batch: np.ndarray, spec: InputSpec) -> torch.Tensor:
    batch = np.ascontiguousarray(_as_bhwc(batch))
    if not batch.flags.writeable:  # e.g. zero-copy from Arrow: torch warns on read-only arrays
        batch = batch.copy()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] != 1 and spec.channels == 1:  # fewer channels first: less to resize
        x = _convert_channels(x, 1)
    h, w = x.shape[-2:]
    if (h, w) != (spec.height, spec.width):
        downscale = spec.height < h or spec.width < w
        x = F.interpolate(
            x, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=downscale
        )
    x = _convert_channels(x, spec.channels)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def preprocess(images: np.ndarray | Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Turn uint8 images into the model input: float32 [B, spec.channels, spec.height, spec.width].

    images: a uint8 array [B, H, W] or [B, H, W, C] (vectorised), or a list of H x W / H x W x C uint8
    arrays of any sizes (grouped by size, each group vectorised). C may be 1 (gray), 2 (gray + alpha),
    3 (RGB) or 4 (RGBA); alpha is dropped. A 3-D array is always a batch [B, H, W].
    Channels are converted (gray -> RGB by repetition, RGB -> gray by luma 0.299/0.587/0.114), images
    resized bilinearly (antialiased when downscaling), scaled to [0, 1], then normalised with
    (x - mean) / std.
    """
    if isinstance(spec, ModelSpec):
        spec = spec.input
    if not isinstance(spec, InputSpec):
        raise ArtifactError(f"spec must be an InputSpec, got {type(spec).__name__}")
    if isinstance(images, np.ndarray | torch.Tensor):
        batch = _to_numpy(images)
        if batch.ndim == 2:
            raise ArtifactError(f"a 2-D array {batch.shape} is one image; pass [image] or image[None]")
        return _preprocess_same_size(batch, spec)
    if isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise ArtifactError(
            f"images must be a uint8 array or a list of uint8 arrays, got {type(images).__name__}"
        )
    out = torch.empty(len(images), spec.channels, spec.height, spec.width, dtype=torch.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    arrays = []
    for i, image in enumerate(images):
        a = _to_numpy(image)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in _CHANNELS_IN:
            raise ArtifactError(
                f"image {i} must be H x W or H x W x C with C in {_CHANNELS_IN}, got shape {a.shape}"
            )
        arrays.append(a)
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        out[idx] = _preprocess_same_size(np.stack([arrays[i] for i in idx]), spec)
    return out
