"""Safe image decoding: every mode a camera, scanner or editor produces becomes plain 8-bit RGB, upright."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.errors import ImageError, ImageTooLarge
from graft.files import NotRegularFile, open_regular

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# The one pixel limit, everywhere (files, cache, uploads), checked from the header before any pixel is decoded:
# above the largest phone sensors' full-resolution modes (108 MP), far below a decompression bomb's size.
MAX_PIXELS = 120_000_000


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


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB or raise ImageError naming the file and the fix (``min_side``: see decode_rgb)."""
    path = Path(path)
    try:
        with open_regular(path) as handle:  # a FIFO or a device named like a photo would block or never end
            return decode_rgb(handle, str(path), max_pixels, min_side)
    except NotRegularFile as error:
        raise ImageError(f"{error}; remove it or replace it with an image file") from error
    except FileNotFoundError as error:
        raise ImageError(f"{path}: file not found; fix the path in the manifest or restore the file") from error
    except OSError as error:  # a folder, a dangling link, no permission
        raise ImageError(f"{path}: cannot read ({error.strerror or error}); fix or remove the file") from error


def decode_rgb(source: io.BufferedIOBase | bytes, name: str, max_pixels: int = MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode bytes or an open file to upright 8-bit RGB. The pixel count is checked from the header before any
    pixel is decoded (:class:`ImageTooLarge`); anything unreadable is an :class:`ImageError` naming ``name``.

    ``min_side``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least this
    long - a 12 MP photo costs 21 ms instead of 137 ms when the backbone only needs 256 px. Other formats decode whole.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(stream) as image:
                if image.width * image.height > max_pixels:
                    raise _too_large(name, image.width, image.height, max_pixels)
                if min_side and image.format == "JPEG":
                    image.draft(image.mode, (min_side, min_side))
                image.load()
                return to_rgb(image)
    except Image.DecompressionBombError as error:  # PIL refuses at 2x its own limit, while reading the header
        raise ImageTooLarge(f"{name}: {error}; at most {max_pixels:,} pixels; replace or remove the file") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        empty = stream.getbuffer().nbytes == 0 if isinstance(stream, io.BytesIO) else _is_empty(stream)
        what = "empty file (0 bytes)" if empty else f"not a readable image ({error})"
        raise ImageError(f"{name}: {what}; replace or remove the file") from error


def _too_large(name: str, width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{max_pixels:,}; replace or remove the file (or resize it)")


def _is_empty(stream) -> bool:
    try:
        return stream.seek(0, io.SEEK_END) == 0
    except (OSError, ValueError):
        return False
