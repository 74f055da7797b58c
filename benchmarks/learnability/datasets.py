"""The learnability sets: six deterministic COCO detection sets built from scikit-image's images.

Every set is rendered from the images that ship inside the scikit-image wheel (nothing is
downloaded), written once as ``DATA_ROOT/<name>/{train.json, val.json, images/}`` (JPEG) and
reused after; ``meta.json`` records the generator version and sizes, and a mismatch rebuilds
the folder. Image ``i`` of a split depends only on ``(set seed, split, i)``; train and val use
disjoint random streams (and, for ``cells``, disjoint regions of the source images).

Ids are deliberately awkward so that id mistakes show up in the scores: category ids are
``3, 5, 7, ...`` (never ``0..K-1``, never ``1..K``), train image ids ``1000, 1003, 1006, ...``
and val image ids ``500000, 500003, ...``.

=========  ========  ===================================================================
set        role      what it is
=========  ========  ===================================================================
cells      tune      tiles of the Hubble deep field and of an immunohistochemistry slide,
                     boxes from classical segmentation (threshold + label + regionprops,
                     watershed for touching nuclei); 1 class, 256 px, 8 dihedral flips
scenes     tune      10 classes of photo cut-outs (astronaut face, cat, cup, rocket, horse,
                     cameraman, clock, coins, motorcycle, shuttle) pasted with scale,
                     rotation, colour jitter and occlusion on real textures; 256 px
fewshot    held-out  60 training images of 4 cut-out classes (cup, horse, clock, wheel); 256 px
dense      held-out  20-80 coins and faces (lfw_subset) of 8-24 px per image; 384 px
wide       held-out  384x224 images, 18 classes, strong colour / texture variation of the
                     cut-outs (hue rotation, grey, texture modulation)
slender    held-out  320 px, 1-5 cut-outs of 4 classes (rocket, tower, and a wheel and a logo
                     stretched) at long:short 3:1-7:1, 35% of them turned 90 degrees: aspect
                     ratios far outside the published anchors' 1:2-2:1 (added 2026-12-06)
aerial     tiling    large images (1024 px) holding 100-300 coins and faces of 8-20 px on
                     low-contrast textures: the tiled-vs-resize comparison of benchmarks/tiling.py
                     (not in SET_NAMES: the scaledet-vs-effdet runs above do not include it)
=========  ========  ===================================================================

``python -m benchmarks.learnability.datasets [--sets ...] [--force] [--preview DIR]`` builds the
sets, prints :func:`describe` for each and optionally draws a few images with their boxes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageStat

#: bump when any generator changes: cached folders with another version are rebuilt
GENERATOR_VERSION = 1
DATA_ROOT = Path(__file__).resolve().parent / "data"
#: sets used to choose defaults (tuning) and sets that are only reported (held out)
TUNE_SETS = ("cells", "scenes")
HELD_OUT_SETS = ("fewshot", "dense", "wide", "slender")
SET_NAMES = TUNE_SETS + HELD_OUT_SETS
#: large-image sets for the tiling benchmark (benchmarks/tiling.py), outside the learnability comparison
TILING_SETS = ("aerial",)
TRAIN_IMAGE_ID0, VAL_IMAGE_ID0, IMAGE_ID_STEP = 1000, 500000, 3
JPEG_QUALITY = 92


def category_ids(num_classes: int) -> list[int]:
    """The COCO category ids of a set with ``num_classes`` classes: 3, 5, 7, ..."""
    return [3 + 2 * k for k in range(num_classes)]


def role(name: str) -> str:
    """``"tune"`` or ``"held-out"``."""
    if name in TUNE_SETS:
        return "tune"
    if name in HELD_OUT_SETS:
        return "held-out"
    if name in TILING_SETS:
        return "tiling"
    raise ValueError(f"unknown learnability set {name!r}; known: {', '.join(SET_NAMES)}")


# ---------------------------------------------------------------------------------------------
# source images (only those shipped inside the scikit-image wheel)
# ---------------------------------------------------------------------------------------------


def _skimage_data():
    import skimage.data

    return skimage.data


def _rgb(array: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from grey, bool, RGB or RGBA."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    return np.ascontiguousarray(array[..., :3])


def _ellipse_alpha(height: int, width: int, inset: float = 0.0, feather: float = 1.0) -> np.ndarray:
    """uint8 alpha of an axis-aligned ellipse filling the box (minus ``inset`` of each side)."""
    image = Image.new("L", (width, height), 0)
    dx, dy = inset * width, inset * height
    ImageDraw.Draw(image).ellipse([dx, dy, width - 1 - dx, height - 1 - dy], fill=255)
    if feather:
        image = image.filter(ImageFilter.GaussianBlur(feather))
    return np.asarray(image)


def _rounded_alpha(height: int, width: int, radius_fraction: float = 0.12) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    radius = int(radius_fraction * min(width, height))
    ImageDraw.Draw(image).rounded_rectangle([0, 0, width - 1, height - 1], radius=radius, fill=255)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _mask_alpha(mask: np.ndarray, feather: float = 0.8) -> np.ndarray:
    image = Image.fromarray((mask * 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(feather))) if feather else np.asarray(image)


def _rgba(rgb: np.ndarray, alpha: np.ndarray, max_side: int = 256) -> Image.Image:
    """RGBA sprite, cropped to its alpha and downscaled so its longer side <= ``max_side``."""
    rows = np.nonzero(alpha.max(1) > 127)[0]
    cols = np.nonzero(alpha.max(0) > 127)[0]
    rgba = np.dstack([_rgb(rgb), alpha.astype(np.uint8)])[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    longer = max(rgba.shape[:2])
    if longer > max_side:
        factor = max_side / longer
        size = (max(1, round(rgba.shape[1] * factor)), max(1, round(rgba.shape[0] * factor)))
        return Image.fromarray(np.ascontiguousarray(rgba), "RGBA").resize(size, Image.LANCZOS)
    return Image.fromarray(np.ascontiguousarray(rgba), "RGBA")


def _segment_coins() -> list[tuple[np.ndarray, np.ndarray]]:
    """The coins of ``skimage.data.coins()``: (grey crop, mask) each, by Otsu threshold + fill + label."""
    from scipy import ndimage as ndi
    from skimage import filters, measure

    coins = _skimage_data().coins()
    mask = coins > filters.threshold_otsu(coins)
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, structure=np.ones((3, 3)), iterations=2))
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3)), iterations=2)
    out = []
    for region in measure.regionprops(measure.label(mask)):
        top, left, bottom, right = region.bbox
        height, width = bottom - top, right - left
        if not (25 <= height <= 90 and 25 <= width <= 90 and 0.75 <= height / width <= 1.33):
            continue  # the image border and merged blobs
        out.append((coins[top:bottom, left:right], region.image))
    return out


@functools.lru_cache(maxsize=1)
def sprite_library() -> dict[str, list[Image.Image]]:
    """Object cut-outs: name -> list of RGBA variants (at most 256 px)."""
    from scipy import ndimage as ndi

    data = _skimage_data()
    astronaut, chelsea, coffee, camera = data.astronaut(), data.chelsea(), data.coffee(), data.camera()
    rocket, moto = data.rocket(), data.stereo_motorcycle()[0]
    lib: dict[str, list[np.ndarray]] = {}

    def ellipse(image, top, bottom, left, right, inset=0.0):
        crop = image[top:bottom, left:right]
        return _rgba(crop, _ellipse_alpha(crop.shape[0], crop.shape[1], inset))

    def rounded(image, top, bottom, left, right):
        crop = image[top:bottom, left:right]
        return _rgba(crop, _rounded_alpha(crop.shape[0], crop.shape[1]))

    lib["face"] = [ellipse(astronaut, 12, 182, 148, 304)]
    lib["cat"] = [ellipse(chelsea, 0, 300, 25, 420, inset=0.02)]
    lib["cup"] = [ellipse(coffee, 12, 392, 72, 484)]
    # rocket: bright body on the dark sky, each row filled between its extreme pixels
    region = rocket[118:414, 286:356].astype(np.float32).mean(-1) / 255.0
    mask = ndi.binary_fill_holes(ndi.binary_closing(ndi.gaussian_filter(region, 1.0) > 0.4, iterations=2))
    mask = _largest_component(mask)
    filled = np.zeros_like(mask)
    for row in range(mask.shape[0]):
        cols = np.nonzero(mask[row])[0]
        if cols.size:
            filled[row, cols[0] : cols[-1] + 1] = True
    lib["rocket"] = [_rgba(rocket[118:414, 286:356], _mask_alpha(filled))]
    # horse: the silhouette filled with real textures (fur, wood, coat, plain brown)
    horse = ~data.horse()
    height, width = horse.shape
    fills = [chelsea[150:300, 0:200], coffee[0:400, 480:600], camera[250:450, 20:140], None]
    lib["horse"] = []
    for fill in fills:
        if fill is None:
            shade = np.linspace(0.7, 1.0, height, dtype=np.float32)[:, None, None]
            texture = (np.array([92, 58, 36], np.float32) * shade * np.ones((height, width, 1), np.float32)).astype(np.uint8)
        else:
            texture = np.asarray(Image.fromarray(_rgb(fill)).resize((width, height), Image.BILINEAR))
        lib["horse"].append(_rgba(texture, _mask_alpha(horse)))
    # cameraman: the dark coat by threshold, plus the head (lighter than the coat)
    region = camera[55:512, 0:345].astype(np.float32) / 255.0
    mask = ndi.binary_fill_holes(ndi.binary_closing(region < 0.25, iterations=3))
    mask = _largest_component(mask)
    head = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(head).ellipse([158, 10, 268, 160], fill=255)
    mask = mask | (np.asarray(head) > 0)
    lib["cameraman"] = [_rgba(camera[55:512, 0:345], _mask_alpha(mask))]
    lib["clock"] = [ellipse(data.clock(), 92, 218, 138, 286)]
    coins = _segment_coins()
    lib["coin"] = [_rgba(crop, _mask_alpha(mask, 0.6)) for crop, mask in coins]
    lib["motorcycle"] = [rounded(moto, 88, 458, 88, 692)]
    lib["shuttle"] = [rounded(astronaut, 0, 286, 352, 466)]
    lib["helmet"] = [ellipse(astronaut, 336, 512, 272, 512, inset=0.01)]
    lib["badge"] = [ellipse(astronaut, 344, 428, 131, 215)]
    lib["tripod"] = [rounded(camera, 300, 512, 225, 412)]
    lib["wheel"] = [ellipse(moto, 272, 458, 502, 688)]
    logo = data.logo()[..., :3]
    mask = logo.astype(np.int32).sum(-1) < 700  # not the white page
    lib["logo"] = [_rgba(logo, _mask_alpha(_largest_component(ndi.binary_closing(mask, iterations=2)) | mask))]
    wheel = data.colorwheel()
    lib["colorwheel"] = [_rgba(wheel, _mask_alpha(wheel.astype(np.int32).sum(-1) > 40))]
    retina = np.asarray(Image.fromarray(data.retina()).resize((300, 300), Image.LANCZOS))
    lib["retina"] = [_rgba(retina, _mask_alpha(ndi.binary_fill_holes(retina.astype(np.int32).sum(-1) > 45)))]
    lib["tower"] = [rounded(rocket, 0, 427, 0, 96)]
    faces = (data.lfw_subset()[:100] * 255).astype(np.uint8)  # the first 100 are faces
    lib["small_face"] = [_rgba(face, _ellipse_alpha(25, 25, 0.0, 0.5)) for face in faces]
    return lib


@functools.lru_cache(maxsize=1)
def texture_library() -> list[tuple[Image.Image, bool]]:
    """Background textures: (PIL RGB image, is_grey); grey ones are always tinted at use."""
    data = _skimage_data()
    textures = [data.grass(), data.gravel(), data.brick(), data.page(), data.moon(), data.text()]
    textures += [data.coffee()[:, 486:600], data.stereo_motorcycle()[0][440:500, :], data.camera()[330:512, 412:512],
                 data.rocket()[0:110, 100:560], data.chelsea()[0:120, 0:120]]
    out = []
    for texture in textures:
        rgb = _rgb(texture)
        out.append((Image.fromarray(rgb), texture.ndim == 2 or bool(np.ptp(rgb.reshape(-1, 3).mean(0)) < 5)))
    return out


# ---------------------------------------------------------------------------------------------
# rendering (PIL, uint8: a 256 px image costs a few milliseconds)
# ---------------------------------------------------------------------------------------------


def _lut(values: np.ndarray) -> list[int]:
    return np.clip(np.round(values), 0, 255).astype(np.uint8).tolist()


_LEVELS = np.arange(256, dtype=np.float32)


def _tinted(grey: Image.Image, tint: np.ndarray, gain: float = 1.0, pivot: float = 128.0, contrast: float = 1.0) -> Image.Image:
    """An 'L' image -> RGB: contrast around ``pivot``, then each channel times ``tint``."""
    base = (_LEVELS - pivot) * contrast + pivot
    return Image.merge("RGB", [grey.point(_lut(base * t * gain)) for t in tint])


def _background(rng: np.random.Generator, width: int, height: int, contrast: tuple[float, float] = (0.45, 1.0)) -> Image.Image:
    """A random crop of a real texture, rescaled, flipped, tinted, contrast-reduced; sometimes two
    blended with a soft vertical seam."""

    def one() -> Image.Image:
        texture, grey = texture_library()[rng.integers(len(texture_library()))]
        zoom = rng.uniform(0.6, 1.8)
        scale = min(texture.width / width, texture.height / height, 1.0 / zoom)
        crop_w, crop_h = max(8, int(width * scale)), max(8, int(height * scale))
        top = int(rng.integers(0, texture.height - crop_h + 1))
        left = int(rng.integers(0, texture.width - crop_w + 1))
        image = texture.resize((width, height), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_TOP_BOTTOM)
        factor = rng.uniform(*contrast)
        if grey or rng.random() < 0.3:
            tint = rng.uniform(0.35, 1.0, 3)
            luminance = image.convert("L")
            pivot = ImageStat.Stat(luminance).mean[0]
            return _tinted(luminance, tint / tint.max(), pivot=pivot, contrast=factor)
        means = ImageStat.Stat(image).mean
        return image.point(sum((_lut((_LEVELS - m) * factor + m) for m in means), []))

    image = one()
    if rng.random() < 0.3:
        other = one()
        ramp = np.linspace(-1, 1, width) * rng.choice([-1, 1]) * rng.uniform(3, 12) + rng.uniform(-1, 1)
        row = Image.fromarray(np.round(255 / (1 + np.exp(-ramp))).astype(np.uint8)[None, :])
        image = Image.composite(image, other, row.resize((width, height), Image.NEAREST))
    return image


def _colour(rng: np.random.Generator, rgb: Image.Image, strength: str) -> Image.Image:
    """Colour jitter of an RGB sprite: ``"mild"`` (brightness, contrast, saturation) or
    ``"strong"`` (plus hue rotation, grey, tint or texture modulation)."""
    rgb = ImageEnhance.Brightness(rgb).enhance(rng.uniform(0.75, 1.25))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.8, 1.2))
    rgb = ImageEnhance.Color(rgb).enhance(rng.uniform(0.7, 1.3))
    if strength == "strong":
        draw = rng.random()
        if draw < 0.3:  # hue rotation
            hue, saturation, value = rgb.convert("HSV").split()
            shift = int(rng.integers(40, 216))
            rgb = Image.merge("HSV", (hue.point(lambda v: (v + shift) % 256), saturation, value)).convert("RGB")
        elif draw < 0.45:  # grey
            rgb = rgb.convert("L").convert("RGB")
        elif draw < 0.6:  # tint
            tint = rng.uniform(0.4, 1.0, 3)
            rgb = _tinted(rgb.convert("L"), tint / tint.max(), gain=1.2)
        if rng.random() < 0.3:  # modulate by a texture
            texture = np.asarray(_background(rng, rgb.width, rgb.height, (1.0, 1.0)).convert("L"), np.float32)
            gain = 0.7 + 0.3 * texture / max(float(texture.mean()), 1.0)
            rgb = Image.fromarray(np.clip(np.asarray(rgb, np.float32) * gain[..., None], 0, 255).astype(np.uint8))
    return rgb


def _transform_sprite(rng: np.random.Generator, sprite: Image.Image, longer_side: float, rotation: float,
                      colour: str) -> Image.Image:
    """A resized (aspect jitter), flipped, rotated, colour-jittered copy of an RGBA sprite."""
    image = sprite.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else sprite
    aspect = rng.uniform(0.85, 1.18)
    factor = longer_side / max(image.size)
    size = (max(2, round(image.width * factor * aspect)), max(2, round(image.height * factor / aspect)))
    image = image.resize(size, Image.BILINEAR, reducing_gap=2.0)
    if rotation:
        image = image.rotate(rng.uniform(-rotation, rotation), resample=Image.BILINEAR, expand=True)
    out = _colour(rng, image.convert("RGB"), colour)
    out.putalpha(image.getchannel("A"))
    return out


class _Canvas:
    """An image being composed, with per-pixel ownership: occlusion is measured when placing, and
    boxes are the extents of each object's visible pixels."""

    def __init__(self, image: Image.Image, max_cover: float) -> None:
        self.image, self.max_cover = image, max_cover  # max_cover: largest hidden fraction of an object
        self.owner = np.full((image.height, image.width), -1, np.int32)
        self.full: list[int] = []
        self.visible: list[int] = []
        self.labels: list[int] = []
        self.rects: list[tuple[int, int, int, int]] = []

    def paste(self, rng: np.random.Generator, sprite: Image.Image, label: int, outside: float = 0.2,
              tries: int = 20) -> bool:
        """Place the RGBA sprite at a random position (up to ``outside`` of it beyond the border)
        hiding at most ``max_cover`` of any earlier object; False if no position fits."""
        height, width = self.owner.shape
        solid = np.asarray(sprite.getchannel("A")) > 127
        sh, sw = solid.shape
        total = int(solid.sum())
        for _ in range(tries):
            top = int(rng.integers(-int(outside * sh), max(1, height - sh + int(outside * sh)) + 1))
            left = int(rng.integers(-int(outside * sw), max(1, width - sw + int(outside * sw)) + 1))
            y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + sh, height), min(left + sw, width)
            if y1 - y0 < 2 or x1 - x0 < 2:
                continue
            local = solid[y0 - top : y1 - top, x0 - left : x1 - left]
            count = int(local.sum())
            if count < 0.6 * total or count < 4:
                continue
            hidden = self.owner[y0:y1, x0:x1][local]
            hidden = np.bincount(hidden[hidden >= 0], minlength=len(self.full))
            touched = np.nonzero(hidden)[0]
            if any(self.visible[i] - hidden[i] < (1 - self.max_cover) * self.full[i] for i in touched):
                continue
            self.image.paste(sprite, (left, top), sprite)
            self.owner[y0:y1, x0:x1][local] = len(self.full)
            for i in touched:
                self.visible[i] -= int(hidden[i])
            self.full.append(count)
            self.visible.append(count)
            self.labels.append(label)
            self.rects.append((y0, x0, y1, x1))
            return True
        return False

    def annotations(self, min_size: float = 3.0) -> list[tuple[list[float], int]]:
        """``[(xyxy, label)]``: the extents of each object's visible pixels."""
        out = []
        for index, (y0, x0, y1, x1) in enumerate(self.rects):
            mine = self.owner[y0:y1, x0:x1] == index
            rows, cols = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
            if rows.size == 0:
                continue
            box = [float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)]
            if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
                out.append((box, self.labels[index]))
        return out


def _elongated(rng: np.random.Generator, sprite: Image.Image, elongation: tuple[float, float]) -> Image.Image:
    """The sprite stretched along its longer axis to a long:short side ratio drawn log-uniform
    from ``elongation``."""
    ratio = float(np.exp(rng.uniform(np.log(elongation[0]), np.log(elongation[1]))))
    long_side = max(sprite.size)
    short_side = max(2, round(long_side / ratio))
    size = (long_side, short_side) if sprite.width >= sprite.height else (short_side, long_side)
    return sprite.resize(size, Image.BILINEAR, reducing_gap=2.0)


def _compose(rng: np.random.Generator, spec: SetSpec, count: int, size_px: tuple[float, float], rotation: float,
             colour: str, max_cover: float, contrast: tuple[float, float] = (0.45, 1.0),
             outside: float = 0.2, elongation: tuple[float, float] | None = None,
             turn: float = 0.0) -> tuple[Image.Image, list]:
    """``count`` random cut-outs of the set's classes (longer side log-uniform in ``size_px``) on a
    random background; objects that find no place are left out. ``elongation``: stretch each
    cut-out to that long:short range first; ``turn``: probability of a 90-degree turn."""
    lib = sprite_library()
    canvas = _Canvas(_background(rng, spec.width, spec.height, contrast), max_cover)
    sources = [spec.sprites.get(name, name) for name in spec.classes]
    for _ in range(count):
        label = int(rng.integers(len(spec.classes)))
        variants = lib[sources[label]]
        sprite = variants[rng.integers(len(variants))]
        if elongation is not None:
            sprite = _elongated(rng, sprite, elongation)
        longer = float(np.exp(rng.uniform(np.log(size_px[0]), np.log(size_px[1]))))
        sprite = _transform_sprite(rng, sprite, longer, rotation, colour)
        if turn and rng.random() < turn:
            sprite = sprite.transpose(Image.ROTATE_90)
        canvas.paste(rng, sprite, label, outside=outside)
    return canvas.image, canvas.annotations()


def _render_scenes(spec: SetSpec, rng: np.random.Generator, split: str):
    side = min(spec.width, spec.height)
    return _compose(rng, spec, int(rng.integers(1, 7)), (0.15 * side, 0.6 * side), 15, "mild", 0.35)


def _render_fewshot(spec: SetSpec, rng: np.random.Generator, split: str):
    side = min(spec.width, spec.height)
    return _compose(rng, spec, int(rng.integers(1, 4)), (0.2 * side, 0.55 * side), 15, "mild", 0.3)


def _render_dense(spec: SetSpec, rng: np.random.Generator, split: str):
    return _compose(rng, spec, int(rng.integers(20, 81)), (8.0, 24.0), 20, "mild", 0.25,
                    contrast=(0.25, 0.6), outside=0.0)


def _render_aerial(spec: SetSpec, rng: np.random.Generator, split: str):
    return _compose(rng, spec, int(rng.integers(100, 301)), (8.0, 20.0), 20, "mild", 0.25,
                    contrast=(0.25, 0.6), outside=0.0)


def _render_wide(spec: SetSpec, rng: np.random.Generator, split: str):
    side = min(spec.width, spec.height)
    return _compose(rng, spec, int(rng.integers(2, 9)), (0.15 * side, 0.6 * side), 12, "strong", 0.35)


def _render_slender(spec: SetSpec, rng: np.random.Generator, split: str):
    side = min(spec.width, spec.height)
    return _compose(rng, spec, int(rng.integers(1, 6)), (0.3 * side, 0.9 * side), 4, "mild", 0.3, outside=0.1,
                    elongation=(3.0, 7.0), turn=0.35)


# ---- cells: real microscopy / astronomy tiles ------------------------------------------------


@functools.lru_cache(maxsize=1)
def cell_sources() -> list[dict]:
    """The ``cells`` sources: image (uint8 RGB), object boxes (xyxy, full image) from classical
    segmentation, the column where val starts (left part: train, right part: val), the crop
    side range and the sampling weight."""
    from scipy import ndimage as ndi
    from skimage import color, feature, filters, measure, segmentation

    data = _skimage_data()
    # Hubble deep field: background-subtracted, smoothed luminance above 3 robust sigmas
    hubble = data.hubble_deep_field()
    grey = color.rgb2gray(hubble)
    residual = grey - ndi.gaussian_filter(grey, 15)
    sigma = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    mask = ndi.binary_opening(ndi.gaussian_filter(residual, 0.7) > 3 * sigma, structure=np.ones((2, 2)))
    hubble_boxes = [
        [r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]] for r in measure.regionprops(measure.label(mask)) if r.area >= 10
    ]
    # immunohistochemistry: nuclei in the haematoxylin channel by a local threshold, holes filled,
    # touching nuclei split by a watershed on the distance map
    ihc = data.immunohistochemistry()
    haematoxylin = ndi.gaussian_filter(color.rgb2hed(ihc)[..., 0], 1.5)
    mask = (haematoxylin > filters.threshold_local(haematoxylin, 41, offset=-0.004)) & (
        haematoxylin > np.median(haematoxylin))
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=np.ones((3, 3))))
    distance = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(distance, min_distance=5, labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    ihc_boxes = [[r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]] for r in measure.regionprops(labels) if r.area >= 30]
    return [
        {"name": "hubble_deep_field", "image": _rgb(hubble), "boxes": np.asarray(hubble_boxes, np.float32),
         "val_from": 700, "crop": (96, 160), "weight": 0.55},
        {"name": "immunohistochemistry", "image": _rgb(ihc), "boxes": np.asarray(ihc_boxes, np.float32),
         "val_from": 320, "crop": (144, 192), "weight": 0.45},
    ]  # fmt: skip


def _render_cells(spec: SetSpec, rng: np.random.Generator, split: str):
    sources = cell_sources()
    source = sources[0] if rng.random() < sources[0]["weight"] else sources[1]
    image, boxes = source["image"], source["boxes"]
    height, width = image.shape[:2]
    x_lo, x_hi = (0, source["val_from"]) if split == "train" else (source["val_from"], width)
    side = int(rng.integers(source["crop"][0], source["crop"][1] + 1))
    side = min(side, x_hi - x_lo, height)
    left = int(rng.integers(x_lo, x_hi - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = image[top : top + side, left : left + side]
    clipped = np.clip(boxes - np.array([left, top, left, top], np.float32), 0, side)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible >= 0.5 * area) & (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
    clipped = clipped[keep]
    # one of the 8 dihedral orientations
    k = int(rng.integers(4))
    crop = np.rot90(crop, k)
    for _ in range(k):  # np.rot90 turns counter-clockwise: (x, y) -> (y, side - x)
        clipped = np.stack([clipped[:, 1], side - clipped[:, 2], clipped[:, 3], side - clipped[:, 0]], 1)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
        clipped = np.stack([side - clipped[:, 2], clipped[:, 1], side - clipped[:, 0], clipped[:, 3]], 1)
    gamma, gain = rng.uniform(0.8, 1.25), rng.uniform(0.85, 1.15)
    out = Image.fromarray(np.ascontiguousarray(crop)).resize((spec.width, spec.height), Image.BILINEAR)
    out = out.point(_lut(255.0 * (_LEVELS / 255.0) ** gamma * gain) * 3)
    scale = np.array([spec.width / side, spec.height / side] * 2, np.float32)
    return out, [(list(map(float, box * scale)), 0) for box in clipped.reshape(-1, 4)]


# ---------------------------------------------------------------------------------------------
# the sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSpec:
    """One learnability set: geometry, classes, sizes and its renderer."""

    name: str
    kind: str
    width: int
    height: int
    classes: tuple[str, ...]
    num_train: int
    num_val: int
    input_size: int  # the square model input both detectors get (--image-size)
    seed: int
    render: Callable
    about: str
    sprites: dict = None  # class name -> sprite library key (default: the same name)

    def __post_init__(self) -> None:
        if self.sprites is None:
            object.__setattr__(self, "sprites", {})

    @property
    def role(self) -> str:
        return role(self.name)


_SCENE_CLASSES = ("face", "cat", "cup", "rocket", "horse", "cameraman", "clock", "coin", "motorcycle", "shuttle")
_WIDE_CLASSES = _SCENE_CLASSES + ("helmet", "badge", "tripod", "wheel", "logo", "colorwheel", "retina", "tower")

SPECS: dict[str, SetSpec] = {
    "cells": SetSpec("cells", "real microscopy / astronomy tiles, classical-segmentation boxes", 256, 256, ("object",),
                     400, 160, 256, 11, _render_cells,
                     "Hubble deep field and immunohistochemistry nuclei tiles (disjoint regions for val), 8 orientations"),
    "scenes": SetSpec("scenes", "photo cut-outs on real textures", 256, 256, _SCENE_CLASSES, 1600, 200, 256, 12,
                      _render_scenes, "1-6 cut-outs of 10 classes, 15-60% of the side, occlusion <= 35%"),
    "fewshot": SetSpec("fewshot", "few training images", 256, 256, ("cup", "horse", "clock", "wheel"), 60, 150, 256, 13,
                       _render_fewshot, "60 training images, 1-3 cut-outs of 4 classes"),
    "dense": SetSpec("dense", "many small objects", 384, 384, ("coin", "face"), 500, 150, 384, 14, _render_dense,
                     "20-80 coins and faces of 8-24 px per image on low-contrast textures",
                     sprites={"face": "small_face"}),
    "wide": SetSpec("wide", "non-square, many classes, colour / texture variation", 384, 224, _WIDE_CLASSES, 1200, 200,
                    384, 15, _render_wide, "384x224, 2-8 cut-outs of 18 classes, hue / grey / tint / texture changes"),
    "slender": SetSpec("slender", "elongated objects, both orientations", 320, 320, ("rocket", "tower", "roller", "banner"),
                       800, 150, 320, 17, _render_slender,
                       "1-5 cut-outs stretched to 3:1-7:1, 30-90% of the side, 35% turned 90 degrees",
                       sprites={"roller": "wheel", "banner": "logo"}),
}  # fmt: skip
#: the tiling sets (input_size: the plain resize path's input; benchmarks/tiling.py trains the tiled path on tiles)
TILING_SPECS: dict[str, SetSpec] = {
    "aerial": SetSpec("aerial", "large images, many small objects", 1024, 1024, ("coin", "face"), 120, 30, 512, 16,
                      _render_aerial, "1024 px images with 100-300 coins and faces of 8-20 px on low-contrast textures",
                      sprites={"face": "small_face"}),
}  # fmt: skip


def spec(name: str) -> SetSpec:
    found = SPECS.get(name) or TILING_SPECS.get(name)
    if found is None:
        raise ValueError(f"unknown learnability set {name!r}; known: {', '.join(SET_NAMES + TILING_SETS)}")
    return found


def render(name: str, split: str, index: int) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """Image ``index`` of ``split`` ("train" / "val"): (PIL RGB image, [(xyxy pixels, label), ...])."""
    set_spec = spec(name)
    rng = np.random.default_rng([set_spec.seed, {"train": 0, "val": 1}[split], index])
    return set_spec.render(set_spec, rng, split)


def _render_and_save(job: tuple[str, str, int, str]) -> list[tuple[list[float], int]]:
    """Render image ``index`` of a split, save it as JPEG, return its objects (a pool job)."""
    name, split, index, path = job
    image, objects = render(name, split, index)
    image.save(path, quality=JPEG_QUALITY)
    return objects


def _workers(count: int) -> int:
    """Processes for rendering ``count`` images: up to 4 (the CPUs there are) for large splits."""
    if count < 200:
        return 1
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(4, os.cpu_count() or 1))


def _write_split(set_spec: SetSpec, split: str, count: int, folder: Path) -> dict:
    ids = category_ids(len(set_spec.classes))
    categories = [{"id": cid, "name": name, "supercategory": set_spec.name} for cid, name in zip(ids, set_spec.classes)]
    first = TRAIN_IMAGE_ID0 if split == "train" else VAL_IMAGE_ID0
    names = [f"{split}_{index:05d}.jpg" for index in range(count)]
    jobs = [(set_spec.name, split, index, str(folder / "images" / names[index])) for index in range(count)]
    workers = _workers(count)
    if workers > 1:  # image i depends only on (seed, split, i): the same files in any process
        import multiprocessing

        sprite_library(), texture_library()  # built once here, inherited by the forked workers
        if set_spec.name == "cells":
            cell_sources()
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            objects_of = pool.map(_render_and_save, jobs, chunksize=16)
    else:
        objects_of = [_render_and_save(job) for job in jobs]
    images, annotations = [], []
    for index, objects in enumerate(objects_of):
        image_id = first + IMAGE_ID_STEP * index
        images.append({"id": image_id, "file_name": names[index], "width": set_spec.width, "height": set_spec.height})
        for (x0, y0, x1, y1), label in objects:
            x0, y0 = max(0.0, x0), max(0.0, y0)
            x1, y1 = min(float(set_spec.width), x1), min(float(set_spec.height), y1)
            bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[label],
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
    coco = {"info": {"description": f"scaledet learnability set {set_spec.name} ({split})",
                     "generator_version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}  # fmt: skip
    (folder / f"{split}.json").write_text(json.dumps(coco))
    return coco


def _meta(set_spec: SetSpec, num_train: int, num_val: int) -> dict:
    import skimage

    return {"name": set_spec.name, "generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
            "width": set_spec.width, "height": set_spec.height, "classes": list(set_spec.classes),
            "scikit_image": skimage.__version__}  # fmt: skip


def prepare(name: str, root: str | Path | None = None, num_train: int | None = None, num_val: int | None = None,
            force: bool = False, verbose: bool = True) -> Path:
    """The folder of set ``name`` (``train.json``, ``val.json``, ``images/``), generated on first use.

    ``num_train`` / ``num_val`` override the set's sizes (tests use tiny ones); the folder is
    rebuilt when its ``meta.json`` differs (generator version, sizes, scikit-image version).
    Generation writes to a temporary folder that is renamed into place, so concurrent callers
    never see a half-written set.
    """
    set_spec = spec(name)
    num_train = set_spec.num_train if num_train is None else num_train
    num_val = set_spec.num_val if num_val is None else num_val
    folder = Path(root if root is not None else DATA_ROOT) / name
    meta = _meta(set_spec, num_train, num_val)
    meta_path = folder / "meta.json"
    if not force and meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return folder
        except ValueError:
            pass
    start = time.monotonic()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    _write_split(set_spec, "train", num_train, staging)
    _write_split(set_spec, "val", num_val, staging)
    (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = folder.parent / f".{name}.old{os.getpid()}"
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    if verbose:
        print(f"built learnability set {name!r} in {folder} ({num_train} train + {num_val} val images, "
              f"{time.monotonic() - start:.1f} s)", file=sys.stderr)
    return folder


def describe(name: str, root: str | Path | None = None) -> dict:
    """Name, role, kind, image size, classes and sizes of a prepared set (built if missing)."""
    set_spec = spec(name)
    folder = prepare(name, root, verbose=False) if root is None else Path(root) / name
    out = {"name": name, "role": set_spec.role, "kind": set_spec.kind, "about": set_spec.about,
           "image_size": f"{set_spec.width}x{set_spec.height}", "input_size": set_spec.input_size,
           "num_classes": len(set_spec.classes), "classes": list(set_spec.classes), "path": str(folder)}  # fmt: skip
    for split in ("train", "val"):
        coco = json.loads((folder / f"{split}.json").read_text())
        counts = Counter(a["image_id"] for a in coco["annotations"])
        per_image = [counts[img["id"]] for img in coco["images"]]
        sides = np.sqrt([a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]] or [0.0])
        out[f"num_{split}"] = len(coco["images"])
        out[f"objects_{split}"] = len(coco["annotations"])
        out[f"mean_objects_per_image_{split}"] = round(float(np.mean(per_image)), 2) if per_image else 0.0
        out[f"median_box_size_{split}"] = round(float(np.median(sides)), 1)
    return out


def format_description(info: dict) -> str:
    return (f"{info['name']:<8} {info['role']:<8} {info['image_size']:>8} {info['num_classes']:>3} classes  "
            f"train {info['num_train']:>5}  val {info['num_val']:>4}  objects/img {info['mean_objects_per_image_train']:>5.1f}  "
            f"median box {info['median_box_size_train']:>5.1f} px  ({info['kind']})")  # fmt: skip


def preview(name: str, out: str | Path, split: str = "train", count: int = 6, root: str | Path | None = None,
            columns: int = 3) -> Path:
    """Draw the first ``count`` images of a split with their boxes (class name above) into a PNG."""
    folder = prepare(name, root, verbose=False)
    coco = json.loads((folder / f"{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    palette = [(255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255), (0, 255, 255)]
    tiles = []
    for row in coco["images"][:count]:
        image = Image.open(folder / "images" / row["file_name"]).convert("RGB")
        draw = ImageDraw.Draw(image)
        for ann in coco["annotations"]:
            if ann["image_id"] == row["id"]:
                x, y, w, h = ann["bbox"]
                colour = palette[(ann["category_id"] // 2) % len(palette)]
                draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour)
                if w >= 20:
                    draw.text((x + 1, y + 1), names[ann["category_id"]], fill=colour)
        tiles.append(image)
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + 4), rows * (height + 4)), (255, 255, 255))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * (width + 4), (index // columns) * (height + 4)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (if needed) and describe the learnability sets.")
    parser.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES + TILING_SETS)
    parser.add_argument("--root", default=None, help=f"cache folder (default {DATA_ROOT})")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--preview", default=None, help="folder for <set>_{train,val}.png previews with boxes")
    parser.add_argument("--json", action="store_true", help="print describe() as JSON")
    args = parser.parse_args(argv)
    infos = []
    for name in args.sets:
        prepare(name, args.root, force=args.force)
        info = describe(name, args.root if args.root is None else Path(args.root))
        infos.append(info)
        if args.preview:
            for split in ("train", "val"):
                preview(name, Path(args.preview) / f"{name}_{split}.png", split, root=args.root)
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        for info in infos:
            print(format_description(info))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
