"""scaledet predict: detect on images, folders, globs and videos; draw results and write COCO JSON.

Outputs in ``--output`` (default ``runs/predict``): one drawn image per input image (``<name>.jpg``)
or video (``<name>.mp4``), ``detections.json`` (COCO results: image_id, category_id = label,
bbox xywh px, score), ``images.json`` (id -> file, frame, size) and with ``--save-json`` one
``<name>.json`` per image. Unreadable inputs print ``skipped <path>: <reason>`` and are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs or video files")
    parser.add_argument("--model", help="model name, e.g. efficientdet_d0 (default: from --weights)")
    parser.add_argument("--weights", help="our .safetensors, a reference checkpoint, 'coco', or an exported .onnx")
    parser.add_argument("--output", default="runs/predict", help="output folder (default runs/predict)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw / save detections >= this")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--image-size", type=int, help="model input size override")
    parser.add_argument("--optimize", action="store_true", help="run scaledet.optimize (folded BN, channels_last)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--save-json", action="store_true", help="also write one detections JSON per image")
    parser.add_argument("--max-frames", type=int, help="at most this many frames per video")
    parser.add_argument("--video-stride", type=int, default=1, help="use every n-th video frame")


def load_detector(args: argparse.Namespace):
    """-> a callable with the detector contract (torch model, optimised model or ONNX runner)."""
    from scaledet import create_model
    from scaledet.weights import is_safetensors, read_weights_config

    weights = args.weights
    if weights and str(weights).endswith(".onnx"):
        from scaledet.export import OnnxDetector

        return OnnxDetector(weights)
    name = args.model
    if name is None:
        config = read_weights_config(weights) if weights and is_safetensors(weights) and Path(weights).exists() else None
        if not config:
            raise ValueError("give --model NAME (or --weights FILE written by scaledet, which names its model)")
        name = config["model"]
    model = create_model(name, pretrained=weights, image_size=args.image_size).eval().to(args.device)
    if args.optimize or args.precision != "fp32":
        import scaledet

        model = scaledet.optimize(model, precision=args.precision)
    return model


def _output_name(out_dir: Path, path: Path, used: set[str], suffix: str) -> Path:
    stem = path.stem
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return out_dir / f"{name}{suffix}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scaledet.inference.predict import collect_inputs, is_video

    try:
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        detector = load_detector(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"scaledet predict: error: {error}", file=sys.stderr)
        return 2
    paths, problems = collect_inputs(args.inputs)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"results": [], "images": [], "used": set(), "skipped": len(problems), "done": 0}
    images = [p for p in paths if not is_video(p)]
    videos = [p for p in paths if is_video(p)]
    progress = tqdm(total=len(images), desc="images", unit="img", disable=not images)
    for start in range(0, len(images), args.batch_size):
        _predict_images(detector, images[start : start + args.batch_size], args, out_dir, state)
        progress.update(len(images[start : start + args.batch_size]))
    progress.close()
    for video in videos:
        _predict_video(detector, video, args, out_dir, state)
    (out_dir / "detections.json").write_text(json.dumps(state["results"]))
    (out_dir / "images.json").write_text(json.dumps(state["images"], indent=1))
    print(f"{state['done']} image(s)/frame(s) -> {out_dir} ({len(state['results'])} detections >= "
          f"{args.score_threshold}); {state['skipped']} input(s) skipped")
    return 0 if state["done"] or not paths else 1


def _register(frame, state: dict, args: argparse.Namespace) -> int:
    from scaledet.inference.predict import coco_results

    image_id = len(state["images"]) + 1
    height, width = frame.image.shape[1:]
    state["images"].append({"id": image_id, "file_name": str(frame.source), "frame": frame.frame,
                            "width": width, "height": height})
    state["results"] += coco_results(image_id, frame.detections, args.score_threshold)
    state["done"] += 1
    return image_id


def _predict_images(detector, paths: list[Path], args, out_dir: Path, state: dict) -> None:
    from PIL import Image

    from scaledet.data.images import IMAGE_ERRORS, load_image
    from scaledet.inference.predict import Frame, coco_results, detect_in_batches, draw

    frames = []
    for path in paths:
        try:
            frames.append(Frame(path, load_image(path)))
        except IMAGE_ERRORS as error:
            print(f"skipped {path}: unreadable image ({type(error).__name__}: {error})", file=sys.stderr)
            state["skipped"] += 1
    if not frames:
        return
    detect_in_batches(detector, frames, args.batch_size, args.device)
    for frame in frames:
        image_id = _register(frame, state, args)
        target = _output_name(out_dir, frame.source, state["used"], ".jpg")
        drawn = draw(frame.image, frame.detections, detector.class_names, args.score_threshold)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target, quality=92)
        if args.save_json:
            rows = coco_results(image_id, frame.detections, args.score_threshold)
            target.with_suffix(".json").write_text(json.dumps({"file_name": str(frame.source), "detections": rows}))


def _predict_video(detector, path: Path, args, out_dir: Path, state: dict) -> None:
    from tqdm import tqdm

    from scaledet.inference.predict import Frame, VideoWriter, detect_in_batches, draw, read_video

    target = _output_name(out_dir, path, state["used"], ".mp4")
    writer, pending, frames_done = None, [], 0

    def flush() -> None:
        detect_in_batches(detector, pending, args.batch_size, args.device)
        for frame in pending:
            _register(frame, state, args)
            writer.write(draw(frame.image, frame.detections, detector.class_names, args.score_threshold))
        pending.clear()

    try:
        for index, image, fps in tqdm(read_video(path, args.max_frames, args.video_stride), desc=path.name,
                                      unit="frame", leave=False):
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


def _is_decode_error(error: Exception) -> bool:
    import av

    return isinstance(error, (av.error.FFmpegError, OSError, IndexError, ValueError))
