"""`graft serve`, HTTP: ``POST /identify`` (photos of one observation -> ranked labels), ``GET /health``, ``GET /labels``,
the OpenAPI docs, and a web page at ``/``. The model loads once, in the background (``/health`` answers 503 until
it is ready); requests run concurrently in FastAPI's thread pool. Bad input is a 4xx JSON answer, never a crash.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError

from graft.data.images import to_rgb
from graft.model.identification import identify_images


@dataclass(frozen=True)
class Limits:
    max_files: int = 12
    max_bytes: int = 15 * 1024 * 1024  # per file
    max_pixels: int = 40_000_000  # per image: refuses decompression bombs before decoding


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

    app = FastAPI(title="graft", description="Identify a subject from several photos of it.", lifespan=lifespan)

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
        images = [_decode(upload, limits) for upload in _checked(files, limits)]
        if views and len(views) != len(images):
            raise HTTPException(400, f"{len(views)} views for {len(images)} photos; give one per photo or none")
        names = [upload.filename or f"photo {i + 1}" for i, upload in enumerate(files)]
        answer = identify_images(model, images, names, views or [""] * len(images), top=top_k).to_json()
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


def _decode(upload: UploadFile, limits: Limits) -> Image.Image:
    data = upload.file.read(limits.max_bytes + 1)
    name = upload.filename or "upload"
    if len(data) > limits.max_bytes:
        raise HTTPException(413, f"{name}: larger than {limits.max_bytes} bytes")
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > limits.max_pixels:
                raise HTTPException(413, f"{name}: {image.width}x{image.height} pixels; at most {limits.max_pixels}")
            image.load()
            return to_rgb(image)
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        raise HTTPException(415, f"{name}: not a readable image ({type(error).__name__})") from error
