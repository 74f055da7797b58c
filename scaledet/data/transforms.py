"""Box-aware augmentation with torchvision.transforms.v2 (``tv_tensors.Image`` + ``BoundingBoxes``).

* :func:`train_transforms`: the paper's scale jitter (resize by a random factor of the output
  size keeping the aspect ratio, random crop), horizontal flip, photometric jitter, pad
  bottom/right, then clip boxes and drop degenerate ones (and their labels).
* :func:`eval_transforms`: resize the longest side to fit, pad bottom/right; the target gets
  ``scale`` so ``boxes_in_original_pixels = boxes / scale``.
* :func:`collate_fn`: ``(list[Tensor[3,H,W]], list[dict])`` for a DataLoader.

All transforms are called as ``transform(image, target)`` with ``target["boxes"]`` a
``tv_tensors.BoundingBoxes`` and ``target["labels"]`` a ``Tensor[M]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size


def _randint(high: int) -> int:
    """Uniform integer in ``[0, high]`` from torch's RNG."""
    return int(torch.randint(0, high + 1, ()).item())


def _input_size(flat_inputs: list[Any]) -> tuple[int, int]:
    image = next(i for i in flat_inputs if isinstance(i, torch.Tensor) and i.ndim >= 3)
    return int(image.shape[-2]), int(image.shape[-1])


class ResizeCropPad(v2.Transform):
    """Scale jitter: resize so the image fits ``scale * size`` (aspect kept), random crop to at
    most ``size``, pad bottom/right with ``fill`` to exactly ``size`` (height, width); ``pad=False``
    leaves the padding to a later :class:`PadTo`.

    ``scale_range=(1, 1)`` with ``random_crop=False`` is the deterministic eval resize + pad.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.1, 2.0),
        random_crop: bool = True,
        fill: float = 0.0,
        pad: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.size, self.scale_range, self.random_crop, self.fill = _size(size), scale_range, random_crop, fill
        self.pad = pad

    @property
    def largest_fit(self) -> tuple[float, float]:
        """The largest (height, width) an image is resized to fit: ``size`` times the top of ``scale_range``."""
        return self.size[0] * self.scale_range[1], self.size[1] * self.scale_range[1]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _input_size(flat_inputs)
        out_h, out_w = self.size
        low, high = self.scale_range
        jitter = low + (high - low) * torch.rand(()).item()  # torch RNG, like the other v2 transforms
        ratio = jitter * min(out_h / height, out_w / width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        top = _randint(max(new_h - out_h, 0)) if self.random_crop else 0
        left = _randint(max(new_w - out_w, 0)) if self.random_crop else 0
        return {"resized": (new_h, new_w), "top": top, "left": left, "ratio": ratio}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out_h, out_w = self.size
        new_h, new_w = params["resized"]
        inpt = self._call_kernel(F.resize, inpt, size=[new_h, new_w], antialias=True)
        crop_h, crop_w = min(new_h, out_h), min(new_w, out_w)
        inpt = self._call_kernel(F.crop, inpt, top=params["top"], left=params["left"], height=crop_h, width=crop_w)
        if not self.pad:
            return inpt
        return self._call_kernel(F.pad, inpt, padding=[0, 0, out_w - crop_w, out_h - crop_h], fill=self.fill)


class PadTo(v2.Transform):
    """Pad bottom/right with ``fill`` to exactly ``size`` (height, width); the image must not be larger."""

    def __init__(self, size: int | tuple[int, int], fill: float = 0.0) -> None:
        super().__init__()
        self.size, self.fill = _size(size), fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _input_size(flat_inputs)
        return {"padding": [0, 0, self.size[1] - width, self.size[0] - height]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=self.fill)


def largest_scale(transforms: Any, height: int, width: int) -> float | None:
    """The largest factor ``transforms`` (and the model after them, where they say so) resize an image
    of ``height`` x ``width`` by: their own ``largest_scale(height, width)`` where they have one (the
    DETR family's pipelines, :class:`scaledet.models.detr.transforms.TrainPipeline`, whose model does
    the resizing), else the fit of :func:`largest_resize`; ``None`` when they do not say."""
    own = getattr(transforms, "largest_scale", None)
    if own is not None:
        return own(height, width)
    fit = largest_resize(transforms)
    return None if fit is None else min(fit[0] / height, fit[1] / width)


def largest_resize(transforms: Any) -> tuple[float, float] | None:
    """The largest (height, width) ``transforms`` resize an image to fit (``largest_fit`` of the
    first step that has one, searching a ``v2.Compose`` and an eval :class:`_RecordScale`), or
    ``None`` when they do not say (e.g. no transforms, or DETR's, whose model resizes: see :func:`largest_scale`)."""
    if transforms is None:
        return None
    if hasattr(transforms, "largest_fit"):
        return transforms.largest_fit
    for step in getattr(transforms, "transforms", ()):
        found = largest_resize(step)
        if found is not None:
            return found
    return largest_resize(getattr(transforms, "resize", None))


class _RecordScale:
    """Wraps ResizeCropPad for eval: stores the exact per-axis resize factors as
    ``target["scale"] = Tensor[4] (sx, sy, sx, sy)`` (sizes are rounded to whole pixels)."""

    def __init__(self, resize: ResizeCropPad) -> None:
        self.resize = resize

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[-2:]
        params = self.resize.make_params([image])
        image, target = self.resize(image, target)
        new_h, new_w = params["resized"]
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32)
        earlier = target.get("scale")  # the file was decoded shrunk: this image's pixels are not the original's
        target["scale"] = scale if earlier is None else scale * torch.as_tensor(earlier, dtype=torch.float32)
        return image, target


def train_transforms(
    image_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.1, 2.0),
    hflip: float = 0.5,
    photometric: bool = True,
    fill: float = 0.0,
    min_box_size: float = 2.0,
) -> v2.Compose:
    """Training augmentation producing ``image_size`` (height, width) images.

    Args:
        image_size: output size, int or (height, width).
        scale_range: the paper's scale jitter (0.1-2.0 of the output size).
        hflip: probability of a horizontal flip.
        photometric: brightness / contrast / saturation / hue jitter.
        fill: padding value (0 = black).
        min_box_size: boxes narrower or shorter than this (pixels) after the crop are dropped.
    """
    # resize first: the flip and the colour jitter then touch at most ``image_size`` pixels, not a
    # 12-megapixel photo's (its hue jitter alone took seconds); the jitter before the padding keeps it ``fill``
    steps: list[v2.Transform] = [ResizeCropPad(image_size, scale_range, random_crop=True, fill=fill, pad=False)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if photometric:
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    steps += [
        PadTo(image_size, fill=fill),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=min_box_size, min_area=min_box_size),
    ]
    return v2.Compose(steps)


def eval_transforms(image_size: int | tuple[int, int], fill: float = 0.0) -> _RecordScale:
    """Resize the longest side to fit ``image_size`` (aspect kept) and pad bottom/right.

    The returned target has ``scale`` (``Tensor[4]``: sx, sy, sx, sy): a box in the transformed
    image maps back to the original with ``box / scale`` (no offset: padding is bottom/right).
    """
    return _RecordScale(ResizeCropPad(image_size, (1.0, 1.0), random_crop=False, fill=fill))


def collate_fn(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """DataLoader collate: ``[(image, target), ...] -> (list of images, list of targets)`` (images
    may differ in size); the one collate of the trainer and the evaluation."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
