"""What a training or evaluation image costs when the files are phone photos far larger than the input.

    python benchmarks/large_photos.py [--photos 16] [--photo-size 3024 4032] [--input 384 512]
                                      [--scale-range 0.9 1.1] [--photometric] [--threads 1] [--out PATH]

Writes ``--photos`` synthetic photos (JPEG quality 90, a smooth background with flat squares as
objects) to a temporary folder, opens them as a COCO set and times, per image, interleaved over the
photos (median):

* a training sample (decode + the training pipeline at ``--input`` with ``--scale-range``, colour
  jitter with ``--photometric``) from the file decoded at full size, the way scaledet read files
  before 2026-12-07 (colour jitter and flip before the resize), and as it reads them now (decoded
  only as large as the resize uses it, :meth:`DetectionDataset.decode_shrunk`; the resize first);
* an evaluation read (decode + EfficientDet-D0's own ``preprocess`` at ``--input``) at full size
  and decoded for the model's resize (as ``predict_dataset`` now reads files);
* what ``scaledet predict`` does per photo (read, D0 at ``--input`` in eval mode, draw, save the drawn
  JPEG) with the whole file decoded, as before 2026-12-08, and decoded as large as the model and the
  drawing use it (:func:`scaledet.inference.predict.open_frame`).

Nothing is cached (each time is a first epoch's; ``--image-cache-gb`` then keeps the decoded
images, a quarter to a sixteenth as large when shrunk). The process keeps freed memory for reuse, as
``scaledet train`` / ``eval`` / ``predict`` set theirs (:mod:`scaledet.engine.allocator`; the records
of 2026-12-07 ran without it, which made each 146 MB full-size decode page-fault afresh). Prints a markdown table with the
processor; writes ``--out`` ``.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.learnability.run import machine_info  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from benchmarks.record import write_results  # noqa: E402
from scaledet import create_model  # noqa: E402
from scaledet.data import ResizeCropPad, open_dataset, train_transforms  # noqa: E402
from scaledet.engine.allocator import keep_freed_memory  # noqa: E402
from scaledet.inference.predict import detect_in_batches, open_frame  # noqa: E402


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``count`` JPEG photos of ``size`` (height, width) with 1-4 flat squares each, as a COCO set."""
    rng = np.random.default_rng(seed)
    height, width = size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        noise = rng.integers(0, 255, (height // 64, width // 64, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(noise).resize((width, height), Image.BILINEAR)).copy()
        for _ in range(int(rng.integers(1, 5))):
            side = int(rng.integers(min(size) // 12, min(size) // 3))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            pixels[y:y + side, x:x + side] = rng.integers(0, 255, 3)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
        name = f"{index:03d}.jpg"
        Image.fromarray(pixels).save(folder / "images" / name, quality=90)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "square"}]}))
    return path


def pipeline_before(size: tuple[int, int], scale_range: tuple[float, float], photometric: bool) -> v2.Compose:
    """The training pipeline as it was before 2026-12-07: colour jitter and flip on the decoded file, then the resize."""
    steps: list[v2.Transform] = []
    if photometric:
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    steps += [v2.RandomHorizontalFlip(p=0.5), ResizeCropPad(size, scale_range, random_crop=True),
              v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2.0, min_area=2.0)]
    return v2.Compose(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(3024, 4032), metavar=("H", "W"))
    parser.add_argument("--input", type=int, nargs=2, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.9, 1.1), metavar=("LOW", "HIGH"))
    parser.add_argument("--photometric", action="store_true", help="colour jitter in the training pipeline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "large_photos"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    size, scale_range = tuple(args.input), tuple(args.scale_range)
    model = create_model("efficientdet_d0", num_classes=1, image_size=size).eval()

    with tempfile.TemporaryDirectory() as folder:
        path = write_photos(Path(folder), args.photos, tuple(args.photo_size))
        before, now, evaluation = open_dataset(path), open_dataset(path), open_dataset(path)
        before.transforms = pipeline_before(size, scale_range, args.photometric)
        now.transforms = train_transforms(size, scale_range, photometric=args.photometric)
        now.decode_shrunk()

        def evaluate_full(index: int) -> None:
            model.preprocess([evaluation[index][0]])

        def evaluate_shrunk(index: int) -> None:
            evaluation.decode_shrunk(lambda height, width: max(model.input_scale(height, width)))
            model.preprocess([evaluation[index][0]])
            evaluation.decode_shrunk(None)

        def predict(index: int, shrunk: bool) -> None:
            frame = open_frame(evaluation.records[index].path, model if shrunk else None)
            detect_in_batches(model, [frame], batch_size=1, device="cpu")
            drawn = frame.drawn(model.class_names, 0.3).permute(1, 2, 0).numpy()
            Image.fromarray(drawn).save(io.BytesIO(), format="JPEG", quality=92)

        cases = {"training sample, before (full decode, jitter and flip before the resize)": before.__getitem__,
                 "training sample, now (decoded for the resize, resize first)": now.__getitem__,
                 "evaluation read, full decode + D0 preprocess": evaluate_full,
                 "evaluation read, decoded for the model's resize + D0 preprocess": evaluate_shrunk,
                 "predict (read, D0, draw, save), full decode": lambda index: predict(index, shrunk=False),
                 "predict (read, D0, draw, save), decoded for the model and the drawing":
                     lambda index: predict(index, shrunk=True)}
        times: dict[str, list[float]] = {name: [] for name in cases}
        with torch.no_grad():
            for index in range(len(now)):
                for name, call in cases.items():
                    start = time.perf_counter()
                    call(index)
                    times[name].append(time.perf_counter() - start)
        decoded = tuple(now.load_image(0).shape[-2:])

    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    names = list(cases)
    machine = machine_info(args.threads)
    header = (f"Large photos: {args.photos} JPEG photos of {args.photo_size[0]}x{args.photo_size[1]}, input "
              f"{size[0]}x{size[1]}, scale jitter {scale_range[0]}-{scale_range[1]}, colour jitter "
              f"{'on' if args.photometric else 'off'}, {args.threads} thread(s), nothing cached; decoded now at "
              f"{decoded[0]}x{decoded[1]} for training. {machine['date_utc']}, {describe(machine)}, torch {torch.__version__}.")
    rows = ["| per image | median ms | x faster than full decode |", "|---|---:|---:|"]
    for pair in zip(names[0::2], names[1::2]):
        rows.append(f"| {pair[0]} | {medians[pair[0]]:.0f} | 1.0 |")
        rows.append(f"| {pair[1]} | {medians[pair[1]]:.0f} | {medians[pair[0]] / medians[pair[1]]:.1f} |")
    markdown = header + "\n\n" + "\n".join(rows) + "\n"
    print(markdown)
    record = {"photos": args.photos, "photo_size": list(args.photo_size), "input": list(size),
              "scale_range": list(scale_range), "photometric": args.photometric, "threads": args.threads,
              "decoded_for_training": list(decoded), "median_ms": medians,
              "seconds": {name: values for name, values in times.items()}, "machine": machine,
              "command": "python benchmarks/large_photos.py " + " ".join(sys.argv[1:])}
    write_results(Path(args.out), record, markdown)


if __name__ == "__main__":
    main()
