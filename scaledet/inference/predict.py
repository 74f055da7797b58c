"""Running a detector over files: input discovery, batched inference and drawing (the results
file is written by :mod:`scaledet.evaluation.results`).

Inputs are images, folders (searched recursively), globs and video files. Unreadable inputs are
reported through ``on_skip`` and skipped; they never stop the batch.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from scaledet.data.images import IMAGE_SUFFIXES, files_under, load_image, probe_image, shrink_factor
from scaledet.data.tiles import ImageSource, TensorImage, open_large_image
from scaledet.inference.tiling import TileOptions, predict_tiled

#: with tiled reading, images are drawn downscaled to at most this longest side (boxes stay full-resolution)
PREVIEW_SIDE = 4096
#: without tiling, a file far larger than the model's input is decoded shrunk, but to no less than this
#: longest side: the drawn copy stays a screen's worth (a 4032x3024 photo is drawn at 1008x756)
MIN_DRAWN_SIDE = 1000
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
#: what a folder given to predict is searched for
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


@dataclass
class Frame:
    """One image to detect on: ``image`` float ``[3, H, W]`` in [0, 1]; ``frame`` index for videos;
    ``image_id`` the dataset's id when a dataset is predicted; ``detections`` (boxes xyxy pixels
    of the full image, scores, labels) once :func:`detect_in_batches` / :func:`detect_tiled` ran.

    ``pixels``: the full-resolution image when it is read window by window (:func:`open_tiled_frame`);
    ``image`` is then a preview (at most :data:`PREVIEW_SIDE` px) used only for drawing.
    ``full_size``: ``(height, width)`` of the file when ``image`` was decoded shrunk (:func:`open_frame`):
    the model then sees ``image`` and :func:`detect_in_batches` maps its boxes back to the file's pixels.
    """

    source: Path
    image: Tensor
    frame: int | None = None
    detections: dict[str, Tensor] = field(default_factory=dict)
    image_id: int | None = None
    pixels: ImageSource | None = None
    full_size: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return str(self.source) if self.frame is None else f"{self.source}#frame={self.frame}"

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the full-resolution image."""
        if self.pixels is not None:
            return self.pixels.height, self.pixels.width
        if self.full_size is not None:
            return self.full_size
        return int(self.image.shape[1]), int(self.image.shape[2])

    def to_full_size(self, detections: dict[str, Tensor]) -> dict[str, Tensor]:
        """``detections`` on ``image`` with their boxes in the full image's pixels (unchanged unless shrunk)."""
        if self.full_size is None or "boxes" not in detections:
            return detections
        height, width = self.full_size
        scale = torch.tensor([width / self.image.shape[2], height / self.image.shape[1]] * 2)
        return {**detections, "boxes": detections["boxes"] * scale.to(detections["boxes"].device)}

    def drawn(self, class_names: list[str], threshold: float) -> Tensor:
        """uint8 ``[3, h, w]``: :func:`draw` on ``image`` (detections scaled to the preview's size)."""
        height, width = self.size
        scale = torch.tensor([self.image.shape[2] / width, self.image.shape[1] / height] * 2)
        detections = self.detections
        if "boxes" in detections and not torch.equal(scale, torch.ones(4)):
            detections = {**detections, "boxes": detections["boxes"] * scale}
        return draw(self.image, detections, class_names, threshold)


def open_tiled_frame(path: Path, max_pixels: int | None = -1, image_id: int | None = None) -> Frame:
    """A :class:`Frame` of the image file ``path`` read window by window where the format allows
    (:func:`~scaledet.data.tiles.open_large_image`, whose ``ImageTooLargeError`` names the size and
    the limit), with a preview of at most :data:`PREVIEW_SIDE` px for drawing."""
    pixels = open_large_image(path, max_pixels)
    preview, _ = pixels.downscaled(PREVIEW_SIDE)
    return Frame(path, preview, image_id=image_id, pixels=pixels)


def decode_scale_for(model: Callable) -> Callable[[int, int], float] | None:
    """``(height, width) -> `` the largest factor an image of that size is resized by when ``model``
    predicts it and it is drawn: the model's own resize (``model.input_scale``,
    :meth:`scaledet.models.base.Detector.input_scale`), but the drawing's longest side no less than
    :data:`MIN_DRAWN_SIDE`. ``None`` for a model that does not say (files are then decoded whole).
    What :func:`open_frame` and ``DetectionDataset.decode_shrunk`` take."""
    input_scale = getattr(model, "input_scale", None)
    if input_scale is None:
        return None
    return lambda height, width: max(*input_scale(height, width), MIN_DRAWN_SIDE / max(height, width))


def open_frame(path: Path, model: Callable | None = None, image_id: int | None = None) -> Frame:
    """A :class:`Frame` of the image file ``path``, decoded only as large as :func:`decode_scale_for`
    ``model`` uses it (:func:`~scaledet.data.images.load_image`'s ``shrink``): a 12-megapixel phone photo
    detected at 512 px decodes at 1/4 (1008x756), several times faster, much as ``scaledet eval`` reads
    it. ``model=None`` (or one without ``input_scale``) decodes the whole file. Boxes end in the file's
    pixels (:func:`detect_in_batches`).

    Raises:
        OSError (or another of :data:`~scaledet.data.images.IMAGE_ERRORS`): missing or unreadable file.
    """
    largest_scale = decode_scale_for(model)
    if largest_scale is None:
        return Frame(path, load_image(path), image_id=image_id)
    info = probe_image(path)
    return shrunk_frame(path, load_image(path, shrink_factor(largest_scale(info.height, info.width))),
                        (info.height, info.width), image_id)


def shrunk_frame(path: Path, image: Tensor, full_size: tuple[int, int], image_id: int | None = None) -> Frame:
    """A :class:`Frame` of ``image``, decoded from a file of ``full_size`` (height, width), shrunk or not."""
    shrunk = tuple(image.shape[1:]) != tuple(full_size)
    return Frame(path, image, image_id=image_id, full_size=tuple(full_size) if shrunk else None)


def collect_inputs(inputs: list[str], notes: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursive) and globs -> (sorted media paths, problems as text).

    A folder gives its images and videos (by suffix, :data:`IMAGE_SUFFIXES` / :data:`VIDEO_SUFFIXES`); its other
    files (labels, a data.yaml) are left out with a line in ``notes``, and a folder without any is a problem.
    Files named one by one and globs are taken as they are."""
    paths, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            every = files_under(path)
            found = [p for p in every if p.suffix.lower() in MEDIA_SUFFIXES]
            others = [p for p in every if p.suffix.lower() not in MEDIA_SUFFIXES]
            if not found:
                problems.append(f"{item}: no images or videos in this folder"
                                + (f" ({len(others)} other file(s), e.g. {others[0].name})" if others else ""))
            elif others and notes is not None:
                shown = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
                notes.append(f"{item}: left out {len(others)} file(s) that are not images or videos ({shown})")
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not found:
                problems.append(f"{item}: no such file, folder or matching glob")
        paths += found
    return list(dict.fromkeys(paths)), problems


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video(path: Path, max_frames: int | None = None, stride: int = 1) -> Iterator[tuple[int, Tensor, float]]:
    """Decode ``path`` with PyAV: yields (frame index, float ``[3, H, W]`` RGB in [0, 1], fps)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        kept = 0
        for index, frame in enumerate(container.decode(stream)):
            if index % stride:
                continue
            if max_frames is not None and kept >= max_frames:
                break
            kept += 1
            array = frame.to_ndarray(format="rgb24")
            yield index, torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0), fps


#: box colours by class (label modulo the list), shared by predict's drawings and the training plots
CLASS_COLORS = ("red", "lime", "deepskyblue", "yellow", "magenta", "orange", "cyan", "pink")


def class_colors(labels: Tensor) -> list[str]:
    """One colour of :data:`CLASS_COLORS` per label: the same class, the same colour."""
    return [CLASS_COLORS[int(label) % len(CLASS_COLORS)] for label in labels]


def draw(image: Tensor, detections: dict[str, Tensor], class_names: list[str], threshold: float) -> Tensor:
    """uint8 ``[3, H, W]`` with the detections scoring >= ``threshold`` drawn (class name + score), each
    class in its own colour."""
    from torchvision.utils import draw_bounding_boxes

    keep = detections["scores"] >= threshold
    boxes, scores, labels = detections["boxes"][keep], detections["scores"][keep], detections["labels"][keep]
    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if not len(boxes):
        return canvas
    names = [f"{class_names[int(k)] if int(k) < len(class_names) else int(k)} {float(s):.2f}"
             for k, s in zip(labels, scores)]
    return draw_bounding_boxes(canvas, boxes.float(), labels=names, colors=class_colors(labels), width=2)


class VideoWriter:
    """Writes uint8 ``[3, H, W]`` frames to a video file with PyAV (mpeg4, even-sized)."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        self.fps = fps
        self.stream = None

    def write(self, frame: Tensor) -> None:
        import av

        frame = frame[:, : frame.shape[1] // 2 * 2, : frame.shape[2] // 2 * 2]
        if self.stream is None:
            from fractions import Fraction

            self.stream = self.container.add_stream("mpeg4", rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.height, self.stream.width = frame.shape[1:]
            self.stream.pix_fmt = "yuv420p"
        video_frame = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def detect_tiled(model: Callable, frames: list[Frame], options: TileOptions, device: str) -> None:
    """Fill ``frame.detections`` (on CPU) for every frame through tiles
    (:func:`scaledet.inference.tiling.predict_tiled`; ``options.batch_size`` tiles per call)."""
    for frame in frames:
        pixels = frame.pixels if frame.pixels is not None else TensorImage(frame.image)
        detections = predict_tiled(model, pixels, options=options, device=device)
        frame.detections = {key: value.cpu() for key, value in detections.items()}


def detect_in_batches(model: Callable, frames: list[Frame], batch_size: int, device: str) -> None:
    """Fill ``frame.detections`` (on CPU) for every frame, ``batch_size`` images per call."""
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        with torch.no_grad():
            results = model([frame.image.to(device) for frame in chunk])
        for frame, result in zip(chunk, results):
            frame.detections = frame.to_full_size({key: value.cpu() for key, value in result.items()})
