"""``scaledet eval``: COCO metrics for a detections file, or for a model on a dataset.

    scaledet eval --gt ANNOTATIONS.json --detections RESULTS.json [--match-categories id|name] [--json OUT]
    scaledet eval --weights FILE [--model NAME] --data DATA [--images DIR] [--split S] [--json OUT] [--results R.json]
                  [--tile SIZE [--overlap F] [--full-image] [--merge nms|wbf]]

The model comes from :func:`scaledet.load` (our weights file names its model; another project's
checkpoint or 'coco' needs ``--model``; an exported ``.onnx`` runs in onnxruntime). Detections
files are scaledet's results format (:mod:`scaledet.evaluation.results`): a COCO
results list plus ``RESULTS.images.json`` beside it, which lets images be matched by file name
and categories by name. Ids the ground truth does not have are an error (exit 2), never AP 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaledet.commands import add_threads_option, apply_threads, warn_if_random_weights
from scaledet.commands.predict import add_tile_arguments


#: ``--batch-size`` of whole-image evaluation when not given
WHOLE_IMAGE_BATCH = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("evaluate a detections file")
    files.add_argument("--gt", help="COCO annotation JSON (ground truth)")
    files.add_argument("--detections", help="COCO results JSON: [{image_id, category_id, bbox xywh, score}] "
                       "(scaledet predict's detections.json; its .images.json beside it is used when present)")
    files.add_argument("--match-categories", default="id", choices=["id", "name"],
                       help="match detection categories to the ground truth by id (default) or by name "
                            "(needs the .images.json that scaledet predict writes)")
    model = parser.add_argument_group("evaluate a model on a dataset")
    model.add_argument("--model", help="model name, e.g. efficientdet_d0 (default: from --weights)")
    model.add_argument("--weights", help="our .safetensors, a reference checkpoint (with --model), 'coco' (with "
                       "--model) or an exported .onnx")
    model.add_argument("--data", help="COCO JSON, VOC folder, YOLO data.yaml, or shapes:val (drawn at a size the "
                       "model's eval resize leaves unscaled)")
    model.add_argument("--images", help="image folder for a COCO JSON (default: beside it or images/)")
    model.add_argument("--split", help="VOC / YOLO split (default: val for YOLO, and for VOC when "
                       "ImageSets/Main/val.txt exists)")
    model.add_argument("--allow-empty", action="store_true", help="accept data without any box (AP is then -1)")
    model.add_argument("--image-size", type=int, help="model input size override")
    model.add_argument("--batch-size", type=int, default=None,
                       help=f"images per forward pass (default {WHOLE_IMAGE_BATCH}); with --tile, tiles per model call "
                            "(default 1 on a CPU, 4 on a GPU)")
    model.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    add_threads_option(parser)
    model.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    model.add_argument("--results", help="also write the model's detections here (COCO results JSON with the "
                       "dataset's ids, plus R.images.json beside it)")
    add_tile_arguments(model, "predict through overlapping TILE x TILE native-resolution tiles (large images, "
                       "small objects); scored on the original images")
    parser.add_argument("--max-dets", type=int, nargs=3, default=[1, 10, 100], metavar=("M1", "M10", "M100"),
                        help="detection caps per image (the last is raised to twice the largest ground-truth object "
                             "count of one image when an image holds more, with a note)")  # fmt: skip
    parser.add_argument("--backend", default="pycocotools", choices=["pycocotools", "faster_coco_eval"],
                        help="COCO evaluation library (equal stats; default pycocotools)")
    parser.add_argument("--json", help="write the stats (AP, AP50, ..., ARl, per_class) here")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def open_eval_dataset(data: str, images: str | None, split: str | None, detector, allow_empty: bool = False,
                      progress: bool = True):
    """The dataset ``--data`` names, untransformed; the split defaults to ``val`` for YOLO and for a VOC
    folder with ``ImageSets/Main/val.txt`` (as ``scaledet train --val`` reads them; otherwise every
    XML), and the built-in shapes set is rendered at ``detector``'s
    :meth:`~scaledet.models.base.Detector.unresized_size` (as ``scaledet demo`` renders it)."""
    from scaledet.data import open_dataset
    from scaledet.data.voc import find_voc_root

    if split is not None and (str(data).startswith("shapes:") or str(data).lower().endswith(".json")):
        raise ValueError(f"--split is for a VOC folder or a YOLO data.yaml; {data} is one split already")
    if split is None and str(data).endswith((".yaml", ".yml")):
        split = "val"
    elif split is None and not str(data).startswith("shapes") and Path(data).is_dir():
        root = find_voc_root(Path(data))
        split = "val" if root is not None and (root / "ImageSets" / "Main" / "val.txt").is_file() else None
    options = {"image_size": tuple(detector.unresized_size())} if str(data).startswith("shapes") else {}
    return open_dataset(data, images=images, split=split, allow_empty=allow_empty, progress=progress, **options)


def _model_stats(args: argparse.Namespace) -> dict:
    import scaledet
    from scaledet.commands.predict import tile_options
    from scaledet.data import print_report
    from scaledet.engine.allocator import keep_freed_memory
    from scaledet.engine.distributed import resolve_device
    from scaledet.evaluation import evaluate_model

    if not args.data:
        raise ValueError("--weights / --model need --data DATASET (the images to evaluate on; --images is the "
                         "folder of a COCO --data); or score a file with --gt and --detections")
    if args.batch_size is not None and args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if args.tile is not None and args.workers > 0:
        raise ValueError(f"--workers {args.workers} goes with whole-image evaluation: with --tile each image's tiles "
                         "are read from its file as they are predicted (drop --workers)")
    args.device = str(resolve_device(args.device))
    warn_if_random_weights(args.weights, args.model)
    keep_freed_memory()  # as scaledet predict: the batches' large buffers are reused, not mapped afresh
    model = scaledet.load(args.weights, model=args.model, image_size=args.image_size, device=args.device)
    dataset = open_eval_dataset(args.data, args.images, args.split, model, args.allow_empty, args.progress)
    print_report(dataset)
    return evaluate_model(model, dataset, args.max_dets, args.batch_size or WHOLE_IMAGE_BATCH, args.device, args.workers,
                          results_path=args.results, tile=tile_options(args), backend=args.backend,
                          progress=args.progress)


def run(args: argparse.Namespace) -> int:
    from scaledet.evaluation import evaluate_detections, format_per_class, format_stats

    apply_threads(args.threads)
    if args.gt or args.detections:
        if not (args.gt and args.detections):
            raise ValueError("--gt and --detections go together")
        model_options = [f"--{name.replace('_', '-')}" for name in ("weights", "model", "data", "results", "tile")
                         if getattr(args, name, None)]
        if model_options:
            raise ValueError(f"{' / '.join(model_options)}: for evaluating a model, while --gt and --detections "
                             "score a file: give one or the other")
        stats = evaluate_detections(args.gt, args.detections, max_dets=args.max_dets, backend=args.backend,
                                    match_categories=args.match_categories)
    elif args.model or args.weights or args.data:
        stats = _model_stats(args)
    else:
        raise ValueError("give --gt and --detections, or --weights (and --model) and --data")
    for note in stats.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    print(format_stats(stats))
    print()
    print(format_per_class(stats))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(stats, indent=2))
        print(f"stats written to {args.json}")
    return 0
