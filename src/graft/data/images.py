"""Safe image decoding: every mode a camera, scanner or editor produces becomes plain 8-bit RGB, upright."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Bigger than any photo or scan we expect, small enough to refuse a decompression bomb (~ 16k x 16k).
MAX_PIXELS = 250_000_000


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: EXIF rotation applied, alpha composited on white, 16-bit scaled to 8-bit."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_high_depth_to_uint8(np.asarray(image), image.mode), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _high_depth_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit spans 0..65535; 32-bit int/float images are scaled by their own maximum when it exceeds 255."""
    array = array.astype(np.float64)
    peak = float(array.max()) if array.size else 0.0
    scale = 65535.0 if mode.startswith("I;16") else (peak if peak > 255 else 255.0)
    return np.clip(array / scale * 255.0, 0, 255).round().astype(np.uint8)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB or raise ImageError naming the file and the fix."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {image.width}x{image.height} pixels exceeds the limit of {MAX_PIXELS}")
                image.load()
                return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError as error:
        raise ImageError(f"{path}: file not found; fix the path in the manifest or restore the file") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        size = path.stat().st_size if path.exists() else 0
        what = "empty file (0 bytes)" if size == 0 else f"not a readable image ({error})"
        raise ImageError(f"{path}: {what}; replace or remove the file") from error
