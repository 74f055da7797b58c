"""scaledet predict: detect on images, folders, globs, videos or a dataset; draw results and write them.

Outputs in ``--output`` (default ``runs/predict``): one drawn image per input image (``<name>.jpg``)
or video (``<name>.mp4``), ``detections.json`` + ``detections.images.json`` in scaledet's results
format (:mod:`scaledet.evaluation.results`: COCO results rows with the dataset's category ids and
bbox xywh pixels; the images and category names the ids stand for) and with ``--save-json`` one
``<name>.json`` per image. ``--tile SIZE`` detects through overlapping native-resolution tiles
(large images, small objects; see docs/tiling.md). ``--data DATA`` predicts a dataset's images under its own image ids;
loose inputs get ids 1..N, which ``scaledet eval --gt`` matches to the ground truth by file name.
Unreadable inputs print ``skipped <path>: <reason>`` and are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaledet.commands import add_threads_option, apply_threads, warn_if_random_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, globs or video files")
    parser.add_argument("--data", help="predict this dataset's images instead (COCO JSON, VOC folder, YOLO "
                        "data.yaml, shapes:val); the results keep its image ids")
    parser.add_argument("--split", help="with --data: VOC / YOLO split (default: val for YOLO, and for VOC "
                        "when ImageSets/Main/val.txt exists)")
    parser.add_argument("--images", help="with --data: image folder of a COCO JSON (default: beside it or images/)")
    parser.add_argument("--model", help="model name, e.g. efficientdet_d0 (default: from --weights)")
    parser.add_argument("--weights", help="our .safetensors, a reference checkpoint, 'coco', or an exported .onnx")
    parser.add_argument("--output", default="runs/predict", help="output folder (default runs/predict)")
    parser.add_argument("--batch-size", type=int, help="images (or tiles) per model call (default: 1 on the CPU, "
                        "where batching measured 0.80-0.84x the throughput of one at a time; 4 on a GPU)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw / save detections >= this (default 0.3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    add_threads_option(parser)
    parser.add_argument("--image-size", type=int, help="model input size override")
    parser.add_argument("--optimize", action="store_true", help="run scaledet.optimize (folded BN, channels_last)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="bf16 (CPUs with native bfloat16, GPUs) or fp16 (GPUs) autocast; implies --optimize")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime", "auto"],
                        help="run in PyTorch, in onnxruntime (fp32, CPU) or whichever is faster here (auto: measured "
                        "once per processor and model, cached); onnxruntime and auto imply --optimize")
    parser.add_argument("--save-json", action="store_true", help="also write one detections JSON per image")
    tiles = parser.add_argument_group("large images (docs/tiling.md)")
    add_tile_arguments(tiles, "detect through overlapping TILE x TILE tiles at native resolution "
                       "(--batch-size tiles per model call)")
    tiles.add_argument("--max-pixels", type=int, help="with --tile: decode images up to this many pixels "
                       "(default: PIL's decompression-bomb limit; 0: no limit); uncompressed TIFF / PPM files are "
                       "read window by window whatever their size")
    parser.add_argument("--max-frames", type=int, help="at most this many frames per video")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--video-stride", type=int, default=1, help="use every n-th video frame")


def load_detector(args: argparse.Namespace):
    """The detector of ``--weights`` / ``--model`` (:func:`scaledet.load`: our file, another
    project's checkpoint, 'coco', an ONNX file or random weights), optimised when asked. The
    command's process keeps freed memory for reuse (:mod:`scaledet.engine.allocator`)."""
    import scaledet
    from scaledet.engine.allocator import keep_freed_memory
    from scaledet.export import OnnxDetector

    warn_if_random_weights(args.weights, args.model)
    keep_freed_memory()  # eager D0 at 512 px: 364 -> 255 ms per image (docs/inference.md)
    detector = scaledet.load(args.weights, model=args.model, image_size=args.image_size, device=args.device)
    if args.optimize or args.precision != "fp32" or args.engine != "torch":
        if isinstance(detector, OnnxDetector):
            raise ValueError("--optimize, --precision and --engine apply to torch models, not to an ONNX file")
        detector = scaledet.optimize(detector, precision=args.precision, engine=args.engine)
        if args.engine == "auto":  # say what was picked (measured once per processor and model, then cached)
            print(f"engine: {detector.engine} (--engine auto: the faster of torch and onnxruntime on this processor)")
    return detector


def add_tile_arguments(group, tile_help: str) -> None:
    """``--tile``, ``--overlap``, ``--full-image`` and ``--merge`` (read back by :func:`tile_options`);
    shared by ``predict`` and ``eval``."""
    group.add_argument("--tile", type=int, help=tile_help)
    group.add_argument("--overlap", type=float, help="with --tile: fraction of a tile shared by "
                       "neighbouring tiles (default 0.2)")
    group.add_argument("--full-image", action="store_true", help="with --tile: also detect on the whole image "
                       "downscaled to TILE (large objects)")
    group.add_argument("--merge", choices=["nms", "wbf"], help="with --tile: merge duplicates by "
                       "class-wise NMS (default) or weighted box fusion")


def tile_options(args: argparse.Namespace):
    """The :class:`~scaledet.inference.tiling.TileOptions` of ``--tile`` etc. (``None`` without ``--tile``);
    ``--batch-size`` becomes the tiles per model call."""
    from scaledet.inference.tiling import TileOptions

    if args.tile is None:
        given = [flag for flag, value in (("--overlap", args.overlap), ("--full-image", args.full_image or None),
                                          ("--merge", args.merge)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} go(es) with --tile SIZE (detection through tiles); without it "
                             "the whole image is resized to the model's input")
        return None
    defaults = TileOptions(args.tile)
    return TileOptions(args.tile, defaults.overlap if args.overlap is None else args.overlap, args.full_image,
                       args.merge or defaults.merge, batch_size=args.batch_size)


#: the run's results file is ``OUT/detections.json`` (and ``detections.images.json`` beside it)
RESULTS_STEM = "detections"


def _output_name(out_dir: Path, path: Path, used: set[str], suffix: str) -> Path:
    stem = path.stem
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return out_dir / f"{name}{suffix}"


def _check_limits(args: argparse.Namespace) -> None:
    """ValueError for a score threshold outside [0, 1] or a frame count / stride below 1."""
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1] (scores are probabilities), "
                         f"got {args.score_threshold:g}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.video_stride < 1:
        raise ValueError(f"--video-stride must be >= 1, got {args.video_stride}")
    if args.max_pixels is not None and (args.max_pixels < 0 or args.tile is None):
        raise ValueError(f"--max-pixels {args.max_pixels}: " + ("a pixel count is >= 0 (0: no limit)"
                         if args.max_pixels < 0 else "it limits --tile's decoding; without --tile images are "
                         "decoded whole (add --tile SIZE or drop it)"))
    unused = [flag for flag, value in (("--images", args.images), ("--split", args.split)) if value is not None]
    if unused and not args.data:
        raise ValueError(f"{' / '.join(unused)} go(es) with --data DATASET (COCO images folder / VOC or YOLO split)")


def batch_size_for(batch_size: int | None, device: str) -> int:
    """``--batch-size``, checked; by default :func:`~scaledet.inference.tiling.default_batch_size` (1 on the
    CPU, 4 on a GPU)."""
    from scaledet.inference.tiling import default_batch_size

    if batch_size is None:
        return default_batch_size(device)
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    return batch_size


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scaledet.engine.distributed import resolve_device
    from scaledet.evaluation.results import categories_of, write_detections
    from scaledet.inference.predict import collect_inputs, is_video
    from scaledet.models.inputs import category_ids_of

    apply_threads(args.threads)
    args.device = str(resolve_device(args.device))
    args.batch_size = batch_size_for(args.batch_size, args.device)
    _check_limits(args)
    if bool(args.data) == bool(args.inputs):
        raise ValueError("give INPUT files / folders / globs, or --data DATASET (not both)")
    args.tiling = tile_options(args)
    detector = load_detector(args)
    dataset = _open_data(args, detector) if args.data else None
    category_ids = _dataset_category_ids(detector, dataset) if dataset is not None else category_ids_of(detector)
    out_dir = Path(args.output)
    if (out_dir / f"{RESULTS_STEM}.json").exists():
        print(f"note: {out_dir} holds an earlier run's outputs: its {RESULTS_STEM}.json is replaced, drawn images of "
              "inputs this run lacks stay (choose a new --output to keep the runs apart)", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the run's own files are never an input's name (an input detections.png wrote its JSON there, then lost it)
    state = {"results": [], "images": [], "used": {RESULTS_STEM, RESULTS_STEM + ".images"}, "skipped": 0, "done": 0,
             "category_ids": category_ids}
    if dataset is not None:
        paths, units = [], list(range(len(dataset.records)))
    else:
        notes: list[str] = []
        paths, problems = collect_inputs(args.inputs, notes)
        for line in [f"note: {note}" for note in notes] + [f"skipped {problem}" for problem in problems]:
            print(line, file=sys.stderr)
        state["skipped"] = len(problems)
        units = [p for p in paths if not is_video(p)]
    inputs = paths if dataset is None else [record.path for record in dataset.records if record.path is not None]
    _refuse_output_among_inputs(out_dir, inputs)
    progress = tqdm(total=len(units), desc="images", unit="img", disable=not units or not args.progress)
    for start in range(0, len(units), args.batch_size):
        chunk = units[start : start + args.batch_size]
        if dataset is not None:
            frames = _dataset_frames(dataset, chunk, state, args)
        else:
            frames = _image_frames(chunk, state, args, detector)
        _predict_images(detector, frames, args, out_dir, state)
        progress.update(len(chunk))
    progress.close()
    for video in (p for p in paths if is_video(p)):
        _predict_video(detector, video, args, out_dir, state)
    write_detections(out_dir / f"{RESULTS_STEM}.json", state["results"], state["images"],
                     categories_of(state["category_ids"], detector.class_names),
                     image_ids="dataset" if dataset is not None else "inputs")
    print(f"{state['done']} image(s)/frame(s) -> {out_dir} ({len(state['results'])} detections >= "
          f"{args.score_threshold}); {state['skipped']} input(s) skipped")
    return 0 if state["done"] else 1  # nothing predicted (missing, unreadable or no inputs) is a failure


def _refuse_output_among_inputs(out_dir: Path, inputs: list[Path]) -> None:
    """ValueError when the output folder holds input images or videos: their drawn copies (``<name>.jpg``)
    would be written over them, and a second run would take the drawn copies for inputs."""
    folder = out_dir.resolve()
    among = next((path for path in inputs if path.resolve().parent == folder), None)
    if among is not None:
        raise ValueError(f"--output {out_dir} holds the input {among}: predict draws its images there and would "
                         f"write over inputs; choose another --output folder (default runs/predict)")


def _open_data(args: argparse.Namespace, detector):
    """The ``--data`` dataset (see :func:`scaledet.commands.eval.open_eval_dataset`), its files decoded
    as large as ``detector``'s resize and the drawing use them (:func:`decode_scale_for`)."""
    from scaledet.commands.eval import open_eval_dataset
    from scaledet.data import print_report
    from scaledet.inference.predict import decode_scale_for

    dataset = open_eval_dataset(args.data, args.images, args.split, detector, progress=args.progress)
    print_report(dataset)
    if hasattr(dataset, "decode_shrunk"):
        dataset.decode_shrunk(decode_scale_for(detector))
    return dataset


def _dataset_category_ids(detector, dataset) -> list[int | None]:
    """The ``--data`` dataset's category id of each model label, matched by class name (as ``scaledet eval``
    writes them, so the two results files are the same pair); ``None``: a class the dataset lacks, whose
    detections are drawn but not written."""
    from scaledet.evaluation.results import label_mapping

    mapping = label_mapping(detector.class_names, dataset.class_names)
    return [dataset.label_to_category_id[label] if label >= 0 else None for label in mapping]


def _register(frame, state: dict, args: argparse.Namespace, output: Path) -> list[dict]:
    """Give ``frame`` its image id (the dataset's, else the next of 1..N), record the image, the file drawn
    for it in the output folder (``output``: ``b/img.png`` may be drawn as ``img_2.jpg``) and its result rows;
    returns the rows."""
    from scaledet.evaluation.results import detection_rows

    image_id = frame.image_id if frame.image_id is not None else len(state["images"]) + 1
    height, width = frame.size
    state["images"].append({"id": image_id, "file_name": str(frame.source), "frame": frame.frame,
                            "width": width, "height": height, "output": output.name})
    rows = detection_rows(image_id, frame.detections, state["category_ids"], args.score_threshold)
    state["results"] += rows
    state["done"] += 1
    return rows


def _image_frames(paths: list[Path], state: dict, args: argparse.Namespace, detector) -> list:
    """Frames of the readable image files (unreadable ones are reported and counted as skipped):
    decoded as large as ``detector``'s resize and the drawing use them (:func:`open_frame`); with
    ``--tile`` read window by window where the format allows."""
    from scaledet.inference.predict import open_frame

    frames = []
    for path in paths:
        frame = _read_frame(path, state, lambda: _tiled_frame(path, args) if args.tiling is not None
                            else open_frame(path, detector))
        if frame is not None:
            frames.append(frame)
    return frames


def _dataset_frames(dataset, indices: list[int], state: dict, args: argparse.Namespace) -> list:
    """Frames of dataset records ``indices``, carrying the dataset's image ids (unreadable ones skipped);
    files decoded as :func:`_open_data` set."""
    from scaledet.inference.predict import shrunk_frame

    frames = []
    for index in indices:
        record = dataset.records[index]
        source = record.path if record.path is not None else Path(f"{record.image_id:08d}.png")
        if args.tiling is not None and record.path is not None:
            frame = _read_frame(source, state, lambda: _tiled_frame(source, args, record.image_id))
        else:
            frame = _read_frame(source, state, lambda: shrunk_frame(source, dataset.load_image(index),
                                                                     (record.height, record.width), record.image_id))
        if frame is not None:
            frames.append(frame)
    return frames


def _tiled_frame(path: Path, args: argparse.Namespace, image_id: int | None = None):
    """``path`` opened for ``--tile`` under the ``--max-pixels`` limit (:func:`open_tiled_frame`)."""
    from scaledet.inference.predict import open_tiled_frame

    limit = -1 if args.max_pixels is None else (args.max_pixels or None)
    return open_tiled_frame(path, limit, image_id)


def _read_frame(source: Path, state: dict, read):
    """``read()``, or ``None`` after printing ``skipped <source>: <why>`` for an unreadable or too large image."""
    from tqdm import tqdm

    from scaledet.data.images import IMAGE_ERRORS
    from scaledet.data.tiles import ImageTooLargeError

    try:
        return read()
    except ImageTooLargeError as error:  # tqdm.write: a line of its own above the progress bar
        tqdm.write(f"skipped {error}", file=sys.stderr)
    except IMAGE_ERRORS as error:
        tqdm.write(f"skipped {source}: unreadable image ({type(error).__name__}: {error})", file=sys.stderr)
    state["skipped"] += 1
    return None


def _predict_images(detector, frames: list, args, out_dir: Path, state: dict) -> None:
    from PIL import Image

    if not frames:
        return
    _detect(detector, frames, args)
    for frame in frames:
        target = _output_name(out_dir, frame.source, state["used"], ".jpg")
        rows = _register(frame, state, args, target)
        drawn = frame.drawn(detector.class_names, args.score_threshold)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target, quality=92)
        if args.save_json:
            target.with_suffix(".json").write_text(json.dumps({"file_name": str(frame.source), "detections": rows}))


def _detect(detector, frames: list, args: argparse.Namespace) -> None:
    """Fill the frames' detections: batches of images, or with ``--tile`` batches of tiles."""
    from scaledet.inference.predict import detect_in_batches, detect_tiled

    if args.tiling is not None:
        detect_tiled(detector, frames, args.tiling, args.device)
    else:
        detect_in_batches(detector, frames, args.batch_size, args.device)


def _predict_video(detector, path: Path, args, out_dir: Path, state: dict) -> None:
    from tqdm import tqdm

    from scaledet.inference.predict import Frame, VideoWriter, read_video

    target = _output_name(out_dir, path, state["used"], ".mp4")
    writer, pending, frames_done, per_frame = None, [], 0, []

    def flush() -> None:
        _detect(detector, pending, args)
        for frame in pending:
            rows = _register(frame, state, args, target)
            if args.save_json:
                per_frame.append({"frame": frame.frame, "detections": rows})
            writer.write(frame.drawn(detector.class_names, args.score_threshold))
        pending.clear()

    try:
        for index, image, fps in tqdm(read_video(path, args.max_frames, args.video_stride), desc=path.name,
                                      unit="frame", leave=False, disable=not args.progress):
            writer = writer or VideoWriter(target, fps / args.video_stride)
            pending.append(Frame(path, image, index))
            frames_done += 1
            if len(pending) == args.batch_size:
                flush()
        if pending:
            flush()
    except Exception as error:  # noqa: BLE001 - any decoder error must only skip this video
        if not _is_decode_error(error):
            raise
        print(f"skipped {path}: unreadable video after {frames_done} frame(s) ({type(error).__name__}: {error})",
              file=sys.stderr)
        state["skipped"] += 1
    finally:
        if writer is not None:
            writer.close()
    if frames_done == 0 and target.exists():
        target.unlink()
    elif args.save_json and per_frame:
        target.with_suffix(".json").write_text(json.dumps({"file_name": str(path), "frames": per_frame}))


def _is_decode_error(error: Exception) -> bool:
    import av

    return isinstance(error, (av.error.FFmpegError, OSError, IndexError, ValueError))
