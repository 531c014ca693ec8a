"""Per-view preprocessing (the founding recipe's "Image Preprocessing"): find the subject, crop to it, or whiten a
scan's background.

  Entire, Branch, unknown  unchanged
  Flower, Fruit            grayscale -> Gaussian (sigma 2.5) -> active contour -> bounding box -> crop the colour image
  Leaf                     cut 1/10 per side -> grayscale -> Gaussian (2) -> active contour -> box -> crop
  Stem                     cut 1/5 per side -> Gaussian (2) -> grayscale -> active contour -> box -> crop
  LeafScan                 grayscale -> Otsu threshold -> the background side of the threshold made pure white

The founding recipe's LeafScan sentence says pixels *below* the threshold become white; on a light scan that would erase the
(dark) leaf. What it is for is a uniformly white background, so the side of the threshold that holds most of the
image border is treated as background and whitened.

The active contour is scikit-image's morphological Chan-Vese on a copy at most ``work_size`` pixels on a side (sigmas
scaled to match). Of its two phases the subject is the one touching less of the border, and its largest connected
region gives the box. A box that is tiny, covers almost everything, or comes from a contour that has not converged
falls back to the uncropped image, and the fallback is counted.

A :class:`Decision` (box or threshold) is small and deterministic for (image bytes, view, parameters), so it is
cached; applying it to the decoded image is cheap. scikit-image (and scipy: about 1.2 s of imports on 2 cores) is
imported by the functions that run a method, so a photo without one - most uploads - never waits for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from graft.config import ViewsConfig

KINDS = ("none", "crop", "whiten")
FALLBACKS = ("", "empty", "tiny", "whole", "not_converged", "flat")
# view (lower case) -> (method, cut fraction setting, sigma setting, blur before grayscale)
METHODS = {
    "flower": ("contour", None, "flower_fruit_sigma", False),
    "fruit": ("contour", None, "flower_fruit_sigma", False),
    "leaf": ("contour", "leaf_cut", "leaf_sigma", False),
    "stem": ("contour", "stem_cut", "stem_sigma", True),
    "leafscan": ("whiten", None, None, False),
}
CONTOUR_SETTINGS = ("work_size", "iterations", "smoothing", "margin", "square", "min_box_fraction",
                    "max_box_fraction", "converge_change")


@dataclass(frozen=True)
class Decision:
    """What preprocessing does to one image: crop to ``box`` (left, top, right, bottom) or whiten past a threshold."""

    kind: str = "none"
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    threshold: float = 0.0
    light_background: bool = True
    fallback: str = ""  # why the subject was not trusted (the image is then used uncropped)

    def to_row(self) -> np.ndarray:
        return np.array([KINDS.index(self.kind), *self.box, self.threshold, self.light_background,
                         FALLBACKS.index(self.fallback)], dtype=np.float32)

    @classmethod
    def from_row(cls, row: np.ndarray) -> Decision:
        box = tuple(int(v) for v in row[1:5])
        return cls(KINDS[int(row[0])], box, float(row[5]), bool(row[6]), FALLBACKS[int(row[7])])


def method_of(view: str, config: ViewsConfig) -> str | None:
    """'contour', 'whiten' or None (unchanged) for a view name, honouring ``enabled`` and ``off``."""
    name = (view or "").strip().lower()
    if not config.enabled or name in {v.lower() for v in config.off} or name not in METHODS:
        return None
    return METHODS[name][0]


def params_key(view: str, config: ViewsConfig) -> str:
    """A key of everything that decides this view's preprocessing; '' when the view is left unchanged."""
    method = method_of(view, config)
    if method is None:
        return ""
    _, cut, sigma, blur_first = METHODS[view.strip().lower()]
    settings = {"method": method, "cut": getattr(config, cut) if cut else 0.0, "blur_first": blur_first,
                "sigma": getattr(config, sigma) if sigma else 0.0}
    if method == "contour":
        settings |= {name: getattr(config, name) for name in CONTOUR_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def decide(image: Image.Image, view: str, config: ViewsConfig) -> Decision:
    method = method_of(view, config)
    if method is None:
        return Decision()
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    if method == "whiten":
        from skimage.color import rgb2gray

        return _whiten_decision(rgb2gray(rgb))
    _, cut, sigma, blur_first = METHODS[view.strip().lower()]
    return _contour_decision(rgb, getattr(config, cut) if cut else 0.0, getattr(config, sigma), blur_first, config)


def apply(image: Image.Image, decision: Decision) -> Image.Image:
    if decision.fallback or decision.kind == "none":
        return image
    if decision.kind == "crop":
        return image.crop(decision.box)
    from skimage.color import rgb2gray

    gray = rgb2gray(np.asarray(image, dtype=np.float32) / 255.0)
    background = gray >= decision.threshold if decision.light_background else gray < decision.threshold
    pixels = np.asarray(image).copy()
    pixels[background] = 255
    return Image.fromarray(pixels)


def preprocess(image: Image.Image, view: str, config: ViewsConfig) -> tuple[Image.Image, Decision]:
    decision = decide(image, view, config)
    return apply(image, decision), decision


def _whiten_decision(gray: np.ndarray) -> Decision:
    if np.ptp(gray) < 1e-3:
        return Decision("whiten", fallback="flat")
    from skimage.filters import threshold_otsu

    threshold = float(threshold_otsu(gray))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return Decision("whiten", threshold=threshold, light_background=bool((border >= threshold).mean() >= 0.5))


def _contour_decision(rgb: np.ndarray, cut: float, sigma: float, blur_first: bool, config: ViewsConfig) -> Decision:
    from skimage.color import rgb2gray
    from skimage.filters import gaussian
    from skimage.transform import resize

    height, width = rgb.shape[:2]
    top, left = round(height * cut), round(width * cut)
    region = rgb[top : height - top, left : width - left]
    scale = min(1.0, config.work_size / max(region.shape[:2]))
    small = resize(region, (max(8, round(region.shape[0] * scale)), max(8, round(region.shape[1] * scale))),
                   anti_aliasing=True)
    if blur_first:  # the founding recipe's Stem order: blur the colour image, then grayscale
        gray = rgb2gray(gaussian(small, sigma=sigma * scale, channel_axis=-1))
    else:
        gray = gaussian(rgb2gray(small), sigma=sigma * scale)
    if np.ptp(gray) < 1e-3:
        return Decision("crop", fallback="flat")
    mask, changed = _chan_vese(gray, config)
    if changed > config.converge_change:
        return Decision("crop", fallback="not_converged")
    box = _subject_box(mask)
    if box is None:
        return Decision("crop", fallback="empty")
    fraction = (box[2] - box[0]) * (box[3] - box[1]) / mask.size
    if fraction < config.min_box_fraction:
        return Decision("crop", fallback="tiny")
    if fraction > config.max_box_fraction:
        return Decision("crop", fallback="whole")
    region_size = (region.shape[1], region.shape[0])
    return Decision("crop", _to_original(box, scale, (left, top), config.margin, region_size, config.square))


def _chan_vese(gray: np.ndarray, config: ViewsConfig) -> tuple[np.ndarray, float]:
    """Morphological Chan-Vese; also returns the share of pixels the last iteration changed (convergence)."""
    from skimage.segmentation import morphological_chan_vese

    history: list[np.ndarray] = []

    def keep_last_two(level_set):
        history.append(np.array(level_set, dtype=bool))
        del history[:-2]

    mask = morphological_chan_vese(gray, num_iter=config.iterations, init_level_set="checkerboard",
                                   smoothing=config.smoothing, iter_callback=keep_last_two).astype(bool)
    changed = float((history[-1] != history[-2]).mean()) if len(history) == 2 else 0.0
    return mask, changed


def _subject_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the main region of the phase that touches less of the border.

    The main region is the largest after weighting by centrality, (1 - distance to centre / half diagonal)^2:
    subjects are photographed in the middle, while scale bars and colour charts sit in corners.
    """
    from skimage.measure import label, regionprops

    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    subject = mask if border.mean() <= 0.5 else ~mask
    regions = regionprops(label(subject))
    if not regions:
        return None
    centre = np.array(mask.shape) / 2.0
    half_diagonal = float(np.linalg.norm(centre))

    def weight(region) -> float:
        return region.area * (1.0 - np.linalg.norm(np.array(region.centroid) - centre) / half_diagonal) ** 2

    top, left, bottom, right = max(regions, key=weight).bbox
    return left, top, right, bottom


def _to_original(box, scale, offset, margin, region_size, square) -> tuple[int, int, int, int]:
    """Scale a work-size box back up, grow it by ``margin`` (and to a square), keep it inside the cut region."""
    x0, y0, x1, y1 = (value / scale for value in box)
    grow_x, grow_y = (x1 - x0) * margin, (y1 - y0) * margin
    x0, y0, x1, y1 = x0 - grow_x, y0 - grow_y, x1 + grow_x, y1 + grow_y
    (left, top), (width, height) = offset, region_size
    if square:
        side = min(max(x1 - x0, y1 - y0), width, height)
        x0, x1 = _centred_span(x0, x1, side, width)
        y0, y1 = _centred_span(y0, y1, side, height)
    return (max(0, int(x0)) + left, max(0, int(y0)) + top,
            min(width, int(np.ceil(x1))) + left, min(height, int(np.ceil(y1))) + top)


def _centred_span(start: float, end: float, length: float, limit: float) -> tuple[float, float]:
    """A span of ``length`` centred on [start, end], shifted to stay within [0, limit]."""
    centre = (start + end) / 2
    start = min(max(0.0, centre - length / 2), limit - length)
    return start, start + length
