"""The HTTP API of the inference service, as a FastAPI app built around a backend.

The backend decides how images reach the model: the Serve deployment (serving/app.py) batches them
with ``@serve.batch``; the plain baseline of benchmarks/serve.py calls the classifier directly. Parsing,
limits, authentication and error shapes are the same for both, and live here.

Errors are JSON ``{"error": <code>, "detail": <message>}`` with a 4xx status that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from serving.config import ServeConfig
from serving.inference import CONTENT_TYPES, Classifier, InputError, Prediction, decode_image

INDEX_HTML = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
# Paths open without the bearer token: the health check (load balancers) and the static page, which
# holds no data and sends the token the user types with each of its API calls.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
RAW_TYPES = frozenset(CONTENT_TYPES) | {"application/octet-stream"}
ACCEPTED = "image/png, image/jpeg, image/webp (raw body), multipart/form-data or application/json"


class Backend(Protocol):
    """What the API needs from the model side."""

    def classifier(self) -> Classifier: ...

    async def classify(self, images: list[np.ndarray], top_k: int) -> list[Prediction]: ...

    async def reload(self) -> dict[str, Any]: ...

    def model_status(self) -> dict[str, Any]: ...


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class BearerAuth:
    """ASGI middleware: every path but PUBLIC_PATHS needs ``Authorization: Bearer <token>``; the scheme
    is case-insensitive (RFC 7235: ``bearer`` and ``BEARER`` too), the token is compared in constant
    time. Pure ASGI (not BaseHTTPMiddleware) so it costs next to nothing per request."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = given.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
            if not given:
                detail = "missing bearer token: send 'Authorization: Bearer <token>'"
            elif scheme.lower() != b"bearer":
                detail = "wrong authorization scheme: send 'Authorization: Bearer <token>'"
            else:
                detail = "wrong bearer token"
            response = error_response(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class RequestLineLimit:
    """ASGI middleware: a request whose target (path and query) is over ``limit`` bytes gets a JSON
    414 ``uri_too_long``. The HTTP servers in front (HAProxy's 16 KiB buffer, uvicorn) have larger
    limits of their own, so between this one and theirs the client gets the API's error shape."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
            if size > self.limit:
                detail = (
                    f"request target of {size} bytes is over the limit of {self.limit} bytes: "
                    "send images in the body, not in the URL"
                )
                return await error_response(414, "uri_too_long", detail)(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (Content-Length first, then
    while streaming, so a chunked upload cannot get round it)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InputError(f"bad Content-Length header {declared!r}", 400, "bad_request") from None
        if size > limit:
            raise InputError(
                f"body of {size} bytes is over the limit of {limit} bytes", 413, "body_too_large"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"body is over the limit of {limit} bytes", 413, "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def parse_multipart(request: Request, body: bytes, max_items: int) -> list[bytes]:
    """The files of a multipart/form-data body (any field names), in order."""
    parser = MultiPartParser(
        request.headers, _once(body), max_files=max_items, max_fields=16, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise InputError(
                f"too many files: at most {max_items} per request", 413, "batch_too_large"
            ) from None
        raise InputError(f"bad multipart body: {exc.message}", 400, "bad_multipart") from None
    files = [v for _, v in form.multi_items() if not isinstance(v, str)]
    if not files:
        raise InputError("multipart body holds no file: add the image as a file field", 400, "no_image")
    try:
        return [await f.read() for f in files]
    finally:
        await form.close()


def parse_json_batch(body: bytes, max_items: int) -> tuple[list[bytes], int | None]:
    """``{"images": [<base64 or data: URL>, ...], "top_k": k}`` -> image bytes and top_k."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"body is not valid JSON ({exc})", 400, "bad_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InputError('JSON body must be an object {"images": [<base64 image>, ...]}', 400, "bad_json")
    items, top_k = doc["images"], doc.get("top_k")
    if not items:
        raise InputError('"images" is empty: send at least one base64 image', 400, "empty_batch")
    if len(items) > max_items:
        raise InputError(
            f"batch of {len(items)} images is over the limit of {max_items}: split it", 413, "batch_too_large"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f'"top_k" must be an integer >= 1, got {top_k!r}', 400, "bad_top_k")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(f"images[{i}] is not a base64 string", 400, "bad_base64")
        if item.startswith("data:"):  # data:image/png;base64,....
            item = item.partition(",")[2]
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise InputError(f"images[{i}] is not valid base64", 400, "bad_base64") from None
    return out, top_k


def make_api(backend: Backend, cfg: ServeConfig, title: str = "zoo inference") -> FastAPI:
    """The FastAPI app: ``POST /v1/classify``, ``GET /v1/model``, ``POST /v1/reload``, ``GET /healthz``,
    the page at ``/`` and OpenAPI at ``/docs``; bearer authentication when ``cfg.token`` is set."""
    app = FastAPI(
        title=title,
        version="1",
        description=f"Image classification with {cfg.model_ref} of the model zoo.",
    )

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response(422, "invalid_parameter", "; ".join(parts))

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: 200 while a model is loaded. No token needed."""
        backend.classifier()
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    @app.get("/v1/model", tags=["model"])
    async def model_info() -> dict[str, Any]:
        """Name, version, classes, input contract and lineage of the model being served."""
        return {**backend.classifier().info(), **backend.model_status()}

    @app.post("/v1/reload", tags=["model"])
    async def reload() -> dict[str, Any]:
        """Re-resolve the served alias now (instead of waiting for the poll) and switch if it moved.
        Takes no arguments: the model is only ever the configured registry name and alias."""
        try:
            return await backend.reload()
        except Exception as exc:
            return error_response(503, "reload_failed", f"kept the current model: {exc}")

    @app.post("/v1/classify", tags=["model"], openapi_extra=classify_schema(cfg.max_batch_items))
    async def classify(
        request: Request,
        top_k: int | None = Query(None, ge=1, description=f"classes to return (default {cfg.top_k})"),
    ) -> dict[str, Any]:
        """Top-k classes with probabilities. A raw image body or a multipart form with one file gives
        ``{"model", "predictions"}``; a JSON batch ``{"images": [base64, ...]}`` or a multipart form with
        several files gives ``{"model", "results": [{"predictions"}, ...]}``."""
        images, batch, json_k = await read_images(request, cfg)
        results = await backend.classify(images, top_k or json_k or cfg.top_k)
        return response_body(results, batch)

    if cfg.token:
        app.add_middleware(BearerAuth, token=cfg.token)
    app.add_middleware(RequestLineLimit, limit=cfg.max_request_line_bytes)  # outermost: added last
    return app


def classify_schema(max_items: int) -> dict[str, Any]:
    """The request bodies `POST /v1/classify` takes, for the OpenAPI page."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    images = {"type": "array", "items": {"type": "string", "description": "base64 image or data: URL"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "image/png": binary,
                "image/jpeg": binary,
                "image/webp": binary,
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {**images, "maxItems": max_items},
                            "top_k": {"type": "integer", "minimum": 1},
                        },
                    }
                },
            },
        }
    }


async def read_images(request: Request, cfg: ServeConfig) -> tuple[list[Any], bool, int | None]:
    """(decoded images, whether the request was a batch, the JSON body's top_k) of a classify request;
    InputError (415, 400, 413, 422) for what cannot be served."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in RAW_TYPES and media not in ("multipart/form-data", "application/json"):
        raise InputError(
            f"unsupported content type {media or 'none'!r}: send {ACCEPTED}", 415, "unsupported_media_type"
        )
    body = await read_body(request, cfg.max_body_bytes)
    if not body:
        raise InputError("empty body: send an image", 400, "empty_body")
    batch, json_k = True, None
    if media == "application/json":
        blobs, json_k = parse_json_batch(body, cfg.max_batch_items)
    elif media == "multipart/form-data":
        blobs = await parse_multipart(request, body, cfg.max_batch_items)
        batch = len(blobs) > 1
    else:
        blobs, batch = [body], False
    names = [f"images[{i}]" for i in range(len(blobs))] if batch else ["the image"]
    return [decode_image(b, max_pixels=cfg.max_pixels, what=n) for b, n in zip(blobs, names)], batch, json_k


def response_body(results: Sequence[Prediction], batch: bool) -> dict[str, Any]:
    """The JSON answer of /v1/classify, built here only: ``{"predictions", "model"}`` for one image,
    ``{"model", "results": [{"predictions", "model"}, ...]}`` for a batch; a multi-label model's answers
    also hold every label's probability and decision (prediction_json)."""
    first = prediction_json(results[0])
    if not batch:
        return first
    return {"model": first["model"], "results": [prediction_json(r) for r in results]}


def prediction_json(p: Prediction) -> dict[str, Any]:
    """One image's answer: its top-k classes with probabilities and the model version that gave them.
    A multi-label model's also has ``"task": "multilabel"``, ``"labels"``: every label with its own
    probability, its threshold and whether it is predicted (probability >= threshold), in the model's
    class order, and ``"predicted"``: the predicted labels, most probable first."""
    out = {
        "predictions": [{"class": c, "probability": round(x, 6)} for c, x in zip(p.classes, p.probabilities)],
        "model": {"name": p.name, "version": p.version},
    }
    if p.scores is not None:
        labels = [
            {"class": c, "probability": round(x, 6), "threshold": t, "predicted": x >= t}
            for c, x, t in zip(p.labels, p.scores, p.thresholds)
        ]
        ranked = sorted((d for d in labels if d["predicted"]), key=lambda d: -d["probability"])
        out.update(task="multilabel", labels=labels, predicted=[d["class"] for d in ranked])
    return out
