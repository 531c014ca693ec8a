"""`graft serve`, HTTP: ``POST /identify`` (photos of one observation -> ranked labels), ``GET /health``, ``GET /labels``,
the OpenAPI docs, and a web page at ``/``. The model loads once, in the background (``/health`` answers 503 until
it is ready); requests run concurrently in FastAPI's thread pool. Bad input is a 4xx JSON answer, never a crash.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from graft.data.images import MAX_PIXELS
from graft.errors import ImageError, ImageTooLarge
from graft.model.identification import Model, identify_images


@dataclass(frozen=True)
class Limits:
    max_files: int = 12
    max_bytes: int = 15 * 1024 * 1024  # per file
    max_pixels: int = MAX_PIXELS  # per image, from the header: refuses decompression bombs before decoding

    @property
    def max_request_bytes(self) -> int:
        """A whole request: every file at its limit, plus room for the multipart headers and form fields."""
        return self.max_files * (self.max_bytes + 16 * 1024) + 64 * 1024


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused before it is parsed or spooled to disk - at once from
    its Content-Length, or as soon as the bytes of a chunked upload pass the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(int(declared), scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._reason(received))  # FastAPI answers it; the rest is never read
            return message

        return await self.app(scope, counted, send)

    def _reason(self, size: int) -> str:
        return (f"request body of {size:,} bytes or more; at most {self.limit:,} (the photos of one observation); "
                "send fewer or smaller photos")

    async def _refuse(self, size: int, scope, receive, send) -> None:
        await JSONResponse({"detail": self._reason(size)}, status_code=413)(scope, receive, send)


def create_app(run_dir: str | Path, engine: str = "auto", limits: Limits = Limits()) -> FastAPI:
    from graft.serving.engine import load_engine

    state: dict = {"engine": None, "error": None}

    def load() -> None:
        try:
            state["engine"] = load_engine(run_dir, engine)
        except Exception as error:  # reported by /health rather than killing the server
            state["error"] = str(error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load, daemon=True).start()
        yield

    decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="graft-upload")
    app = FastAPI(title="graft", description="Identify a subject from several photos of it.", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)

    def ready():
        if state["engine"] is None:
            raise HTTPException(503, state["error"] or "the model is still loading; retry in a moment")
        return state["engine"]

    @app.get("/health")
    def health() -> dict:
        model = ready()
        return {"status": "ok", "engine": model.engine, "labels": len(model.labels)}

    @app.get("/labels")
    def labels() -> list[str]:
        return ready().labels

    @app.post("/identify")
    def identify(
        files: list[UploadFile] = File(default=[], description="1-N photos of one observation"),
        views: list[str] = Form(default=[], description="View per photo, in order (Flower, Leaf...)"),
        top_k: int = Query(5, ge=1, le=100),
    ) -> dict:
        model = ready()
        start = time.perf_counter()
        if views and len(views) != len(_checked(files, limits)):
            raise HTTPException(400, f"{len(views)} views for {len(files)} photos; give one per photo or none")
        views = views or [""] * len(_checked(files, limits))
        # the photos decode in parallel (PIL releases the GIL): 3 phone photos, 54 -> ~30 ms on 2 cores
        images = list(decoders.map(lambda upload, view: _decode(model, upload, view, limits), files, views))
        names = [upload.filename or f"photo {i + 1}" for i, upload in enumerate(files)]
        answer = identify_images(model, images, names, views, top=top_k).to_json()
        answer["milliseconds"] = round(1000 * (time.perf_counter() - start), 1)  # decoding included
        return answer

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("graft.serving").joinpath("static/index.html").read_text()

    return app


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
