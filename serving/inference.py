"""The model side of the inference service, free of Ray and HTTP: safe image decoding, the classifier
(preprocess -> forward -> softmax -> top-k; for a multi-label model, a sigmoid per label and every
label's probability against its threshold) and the holder that follows a registry alias.

The Serve deployment (serving/app.py) and the plain FastAPI + uvicorn baseline of
benchmarks/serve.py both run these, so the two are compared on the same work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile

from serving.config import ServeConfig
from zoo.artifacts import preprocess
from zoo.data import ImageDecodeError
from zoo.data import decode_image as zoo_decode_image
from zoo.registry import Registry

log = logging.getLogger("zoo.serving")

# Only these decoders are ever tried: a body in any other format (TIFF, BMP, PSD, ...) is refused
# before a less-exercised decoder sees it.
FORMATS = ("PNG", "JPEG", "WEBP")
# zoo.data.ImageDecodeError.code -> (HTTP status, the API's error code)
DECODE_ERRORS: dict[str, tuple[int, str]] = {
    "empty": (400, "empty_image"),
    "not_an_image": (400, "not_an_image"),
    "unsupported_format": (415, "unsupported_image_format"),
    "corrupt": (400, "corrupt_image"),
    "too_large": (413, "image_too_large"),
}
CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}

# A truncated image must fail, never be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class InputError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` a stable error name."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def set_pixel_limit(max_pixels: int) -> None:
    """Make PIL itself refuse decompression bombs too: it warns above MAX_IMAGE_PIXELS and raises
    DecompressionBombError above twice that, at open time (a second line behind decode_image's check)."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def decode_image(data: bytes, *, max_pixels: int, what: str = "the body") -> np.ndarray:
    """Decode a PNG, JPEG or WebP request image with the zoo's one decoder, ``zoo.data.decode_image``
    (what training, evaluation and the job's readers use: 16-bit, palette, alpha, CMYK and EXIF
    orientation are handled alike on every path), to uint8 ``[H, W]`` (grey) or ``[H, W, 3]``.

    The size is read from the header and checked against ``max_pixels`` before any pixel is decoded;
    truncated or corrupt files raise. Every refusal is an :class:`InputError` with the HTTP status of
    DECODE_ERRORS.
    """
    try:
        return zoo_decode_image(data, formats=FORMATS, max_pixels=max_pixels, what=what)
    except ImageDecodeError as exc:
        status, code = DECODE_ERRORS[exc.code]
        raise InputError(str(exc), status, code) from None


@dataclass(frozen=True)
class Prediction:
    """Top-k of one image, with the model version that computed it; for a multi-label model also every
    label's probability (``scores``, in the spec's class order) and threshold. Its JSON is built in one
    place, serving.api.response_body."""

    name: str
    version: int
    classes: list[str]
    probabilities: list[float]
    labels: list[str] | None = None  # multi-label models only: every label, in the spec's order,
    scores: list[float] | None = None  # its own sigmoid probability,
    thresholds: list[float] | None = None  # and the threshold it is predicted at (spec.thresholds)


def pick_device() -> torch.device:
    """CUDA when this process sees a GPU (a Serve replica with num_gpus > 0), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Classifier:
    """One loaded model version: ``predict`` runs the input contract of its spec, the forward pass and
    a softmax top-k. Immutable once built, so a batch that holds it is unaffected by a model switch."""

    model: torch.nn.Module
    spec: Any  # zoo.artifacts.ModelSpec
    record: Any  # zoo.registry.ModelRecord
    device: torch.device
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return int(self.record.version)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], top_k: int | Sequence[int]) -> list[Prediction]:
        """Classify decoded images (uint8 HxW or HxWxC, any sizes); ``top_k`` per image or for all."""
        if not images:
            return []
        ks = [top_k] * len(images) if isinstance(top_k, int) else list(top_k)
        n_classes = len(self.spec.classes)
        x = preprocess(list(images), self.spec.input).to(self.device, non_blocking=True)
        logits = self.model(x).float()
        # multi-label: one sigmoid per label (they do not sum to 1); top-k ranks the labels by it
        multilabel = self.spec.task == "multilabel"
        probs = logits.sigmoid() if multilabel else torch.softmax(logits, dim=1)
        k_max = min(max(ks), n_classes)
        values, indices = probs.topk(k_max, dim=1)
        values, indices = values.cpu().tolist(), indices.cpu().tolist()
        every = probs.cpu().tolist() if multilabel else [None] * len(ks)
        extra = (
            {"labels": list(self.spec.classes), "thresholds": list(self.spec.thresholds)}
            if multilabel
            else {}
        )
        out = []
        for row_v, row_i, k, row_all in zip(values, indices, ks, every):
            k = min(k, n_classes)
            top = [self.spec.classes[i] for i in row_i[:k]]
            scores = {"scores": row_all, **extra} if multilabel else {}
            out.append(Prediction(self.name, self.version, top, row_v[:k], **scores))
        return out

    def warm_up(self) -> None:
        """One forward pass on a blank image, so the first request does not pay for lazy initialisation."""
        s = self.spec.input
        shape = (s.height, s.width) if s.channels == 1 else (s.height, s.width, 3)
        self.predict([np.zeros(shape, dtype=np.uint8)], 1)

    def info(self) -> dict[str, Any]:
        """What GET /v1/model returns about this version."""
        rec, spec = self.record, self.spec
        metadata = dict(spec.metadata or {})
        lineage = metadata.get("lineage")
        if lineage is None and "lineage" in rec.tags:
            lineage = _maybe_json(rec.tags["lineage"])
        return {
            "name": rec.name,
            "version": self.version,
            "uri": f"models:/{rec.name}/{self.version}",
            "aliases": list(rec.aliases),
            "arch": spec.arch,
            "task": spec.task,
            "classes": list(spec.classes),
            **({"thresholds": list(spec.thresholds)} if spec.task == "multilabel" else {}),
            "input": _input_dict(spec.input),
            "lineage": {
                **(lineage if isinstance(lineage, dict) else {"lineage": lineage} if lineage else {}),
                "run_id": rec.run_id,
                "source": rec.source,
                "created_at": rec.created_at,
                "description": rec.description,
            },
            "tags": dict(rec.tags),
            "device": str(self.device),
            "loaded_at": self.loaded_at,
        }


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _input_dict(spec_input: Any) -> dict[str, Any]:
    names = ("channels", "height", "width", "mean", "std")
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k in names
        if (v := getattr(spec_input, k, None)) is not None
    }


def load_classifier(
    registry: Any,
    name: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    device: torch.device | None = None,
) -> Classifier:
    """Load a registered version through the zoo's safe loader (allow-listed architectures, safetensors,
    SHA-256 checked) and warm it up."""
    device = device or pick_device()
    model, spec, record = registry.load(name, version=version, alias=alias, device=str(device))
    model.eval()
    clf = Classifier(model=model, spec=spec, record=record, device=device)
    clf.warm_up()
    return clf


class ChampionTracker:
    """Holds the :class:`Classifier` of ``models:/<name>@<alias>`` and follows the alias.

    ``refresh`` re-resolves the alias; when it points elsewhere the new version is loaded and warmed up
    first, then swapped in by replacing one reference. Work that already took ``current`` (a running
    batch) finishes on the old object; the next batch gets the new one. No request fails on a switch.
    A failed refresh (registry down, damaged artifact) keeps the current model and is reported in
    ``last_error``.
    """

    def __init__(self, cfg: ServeConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.device = device or pick_device()
        self.registry = Registry(cfg.tracking_uri or None, cache_dir=cfg.cache_dir or None)
        self.current: Classifier = load_classifier(
            self.registry, cfg.name, alias=cfg.alias, device=self.device
        )
        self.last_error: str | None = None
        self.last_check: float = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> dict[str, Any]:
        """Re-resolve the alias and switch when it moved. Returns what happened."""
        with self._lock:  # one load at a time (poll and /v1/reload may race)
            previous = self.current.version
            try:
                record = self.registry.get(self.cfg.name, alias=self.cfg.alias)
                if record.version != previous:
                    new = load_classifier(
                        self.registry, self.cfg.name, version=record.version, device=self.device
                    )
                    self.current = new  # the swap: one reference assignment
                    log.info("switched %s from version %s to %s", self.cfg.model_ref, previous, new.version)
                self.last_error = None
            except Exception as exc:  # keep serving the model we have
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not refresh %s: %s", self.cfg.model_ref, self.last_error)
                raise
            finally:
                self.last_check = time.time()
            return {
                "previous": previous,
                "version": self.current.version,
                "switched": self.current.version != previous,
            }

    def start_polling(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` seconds in a daemon thread (registry calls block)."""
        if interval_s <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # already logged and kept in last_error
                    pass

        self._thread = threading.Thread(target=loop, name="zoo-champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def status(self) -> dict[str, Any]:
        return {
            "alias": self.cfg.alias,
            "poll_interval_s": self.cfg.poll_interval_s,
            "last_check": self.last_check,
            "last_error": self.last_error,
        }
