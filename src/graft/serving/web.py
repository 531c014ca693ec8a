"""`graft serve`, HTTP: ``POST /identify`` (photos of one observation -> ranked labels), ``GET /health``, ``GET /labels``,
the OpenAPI docs, and a web page at ``/``. The model loads once, in the background (``/health`` answers 503 until
it is ready); requests run concurrently in FastAPI's thread pool. Bad input is a 4xx JSON answer, never a crash.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image

from graft.data.images import MAX_PIXELS
from graft.device import Device, resolve_device
from graft.errors import ImageError, ImageTooLarge
from graft.model.identification import Model, identify_images
from graft.run import read_manifest
from graft.serving.gate import Gate, GateRules
from graft.serving.keys import KeyRefused, KeyRing, rate_limit_headers, redact_keys_in_access_logs
from graft.serving.plantnet import PREFIX as PLANTNET_PREFIX
from graft.serving.plantnet import plantnet_error, plantnet_router
from graft.serving.related import RelatedImages


@dataclass(frozen=True)
class Limits:
    max_files: int = 12
    max_bytes: int = 15 * 1024 * 1024  # per file
    max_pixels: int = MAX_PIXELS  # per image, from the header: refuses decompression bombs before decoding

    @property
    def max_request_bytes(self) -> int:
        """A whole request: every file at its limit, plus room for the multipart headers and form fields."""
        return self.max_files * (self.max_bytes + 16 * 1024) + 64 * 1024


def create_app(run_dir: str | Path, engine: str = "auto", limits: Limits = Limits(), *, keys: KeyRing | None = None,
               cors_origins: Sequence[str] = (), projects: dict[str, str | Path] | None = None,
               batch_window_ms: float = 0.0, device: str | Device = "auto") -> FastAPI:
    """The app serving ``run_dir`` (project ``all`` of the Pl@ntNet-compatible API) and any further ``projects``
    (name -> run). ``keys``: API keys with daily quotas (None: open). ``cors_origins``: origins a browser app may call
    from ("*" for any). ``batch_window_ms``: micro-batching of concurrent requests (ONNX engine; 0 = off).
    ``device``: where the models compute; resolved here, so an absent GPU stops the server before it starts."""
    from graft.serving.inference import load_engine

    device = resolve_device(device)
    runs = {"all": Path(run_dir)} | {name: Path(path) for name, path in (projects or {}).items()}
    state: dict = {"engines": {}, "errors": {}}

    def load() -> None:
        for name, run in runs.items():
            try:
                state["engines"][name] = load_engine(run, engine, batch_window_ms, device)
            except Exception as error:  # reported by /health rather than killing the server
                state["errors"][name] = str(error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load, daemon=True).start()
        yield

    decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="graft-upload")
    app = FastAPI(title="graft", description="Identify a subject from several photos of it.", lifespan=lifespan)
    app.add_middleware(Gate, rules=GateRules(keys, limits.max_request_bytes))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["RateLimit", "RateLimit-Policy"])
    app.add_exception_handler(HTTPException, _error_in_the_callers_shape)
    redact_keys_in_access_logs()

    def ready(project: str = "all") -> Model:
        if project not in runs:
            raise HTTPException(404, f'unknown project "{project}"; this server has: {", ".join(runs)}')
        if project not in state["engines"]:
            message = state["errors"].get(project) or "the model is still loading; retry in a moment"
            raise HTTPException(503, message)
        return state["engines"][project]

    def authorize(api_key: str | None) -> None:
        """401 before any work is done for a request without a known key."""
        if keys is not None:
            try:
                keys.check(api_key)
            except KeyRefused as refused:
                raise HTTPException(refused.status, refused.message, refused.headers) from None

    def spend(api_key: str | None, response: Response) -> int | None:
        """Count an identification (after the request proved valid): 429 over the quota; the remaining count."""
        if keys is None:
            return None
        try:
            remaining = keys.spend(api_key)
        except KeyRefused as refused:
            raise HTTPException(refused.status, refused.message, refused.headers) from None
        response.headers.update(rate_limit_headers(keys.quota_of(api_key), remaining))
        return remaining

    def decode_all(model: Model, uploads: list[UploadFile], views: list[str]) -> list[Image.Image]:
        # the photos decode in parallel (PIL releases the GIL): 3 phone photos, 54 -> ~30 ms on 2 cores
        return list(decoders.map(lambda upload, view: _decode(model, upload, view, limits), uploads, views))

    related: dict[str, RelatedImages] = {}

    def related_images(project: str) -> RelatedImages:
        model = ready(project)  # 404 for an unknown project, 503 while it loads
        if project not in related:  # read on first use: most requests never ask for related images
            related[project] = RelatedImages(read_manifest(runs[project]), model.config.features.cache_dir)
        return related[project]

    def related_entries(project: str, label: str, n: int, base_url: str, api_key: str | None) -> list[dict]:
        return related_images(project).entries(project, label, n, base_url, api_key if keys else None)

    app.include_router(plantnet_router(ready, authorize, spend, decode_all, related_entries))

    @app.get("/v2/images/{project}/{row}/{size}", include_in_schema=False)
    def related_image(project: str, row: int, size: str,
                      api_key: str | None = Query(None, alias="api-key")) -> FileResponse:
        authorize(api_key)  # the gate has checked it already; kept here so the route never relies on one layer
        path = related_images(project).file(row, size)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type="image/jpeg" if size != "o" else None)

    @app.get("/health")
    def health() -> dict:
        model = ready()
        return {"status": "ok", "engine": model.engine, "labels": len(model.labels), "projects": list(runs)}

    @app.get("/labels")
    def labels(api_key: str | None = Query(None, alias="api-key")) -> list[str]:
        authorize(api_key)
        return ready().labels

    @app.post("/identify")
    def identify(
        response: Response,
        files: list[UploadFile] = File(default=[], description="1-N photos of one observation"),
        views: list[str] = Form(default=[], description="View per photo, in order (Flower, Leaf...)"),
        top_k: int = Query(5, ge=1, le=100),
        api_key: str | None = Query(None, alias="api-key", description="Needed when the server has API keys"),
    ) -> dict:
        model = ready()
        start = time.perf_counter()
        authorize(api_key)
        files = _checked(files, limits)
        if views and len(views) != len(files):
            raise HTTPException(400, f"{len(views)} views for {len(files)} photos; give one per photo or none")
        views = views or [""] * len(files)
        images = decode_all(model, files, views)
        spend(api_key, response)
        names = [upload.filename or f"photo {i + 1}" for i, upload in enumerate(files)]
        answer = identify_images(model, images, names, views, top=top_k).to_json()
        answer["milliseconds"] = round(1000 * (time.perf_counter() - start), 1)  # decoding included
        return answer

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("graft.serving").joinpath("static/index.html").read_text()

    return app


async def _error_in_the_callers_shape(request: Request, error: HTTPException) -> JSONResponse:
    """graft's own routes answer ``{"detail"}`` (FastAPI's shape); the Pl@ntNet-compatible ones answer theirs."""
    if request.url.path.startswith(PLANTNET_PREFIX):
        return JSONResponse(plantnet_error(error.status_code, str(error.detail)), error.status_code, error.headers)
    return await http_exception_handler(request, error)


def _checked(files: list[UploadFile], limits: Limits) -> list[UploadFile]:
    if not files:
        raise HTTPException(400, "no photos: send 1 or more image files in the 'files' field")
    if len(files) > limits.max_files:
        raise HTTPException(413, f"{len(files)} photos; at most {limits.max_files} per observation")
    return files


def _decode(model: Model, upload: UploadFile, view: str, limits: Limits) -> Image.Image:
    data = upload.file.read(limits.max_bytes + 1)
    name = upload.filename or "upload"
    if len(data) > limits.max_bytes:
        raise HTTPException(413, f"{name}: larger than {limits.max_bytes} bytes")
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    try:
        return model.decode(data, name, view, limits.max_pixels)
    except ImageTooLarge as error:
        raise HTTPException(413, str(error)) from error
    except ImageError as error:
        raise HTTPException(415, str(error)) from error
