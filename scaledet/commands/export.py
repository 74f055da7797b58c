"""scaledet export: write a detector as ONNX with post-processing and NMS inside the graph.

Example: ``scaledet export --model efficientdet_d0 --weights coco --output d0.onnx --check``.
``--check`` runs the file in onnxruntime and the eager model on the same two images, compares the
detections as sets (:func:`~scaledet.inference.compare.compare_detection_sets`) and prints PASS or
FAIL against ``--score-tol`` / ``--box-tol`` (INCONCLUSIVE when neither finds anything on them); the
exit status is 1 unless it passed.

INT8: ``scaledet export --weights w.safetensors --int8 --calibration DATA --output w.int8.onnx``
quantizes the exported graph with onnxruntime (static, per-channel weights, activation ranges from
``--calibration-images`` images of DATA: a folder or glob of images, or a dataset ``scaledet train``
reads) and prints which network layers stay float and why (:mod:`scaledet.inference.quantize`: the
rule chosen by measured AP on the calibration images when DATA is a dataset of the model's classes,
else by agreement with the float graph's detections). With ``--check`` the INT8 file is compared
with the eager model on the calibration images against :data:`~scaledet.inference.quantize.DEFAULT_TOLERANCE`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaledet.commands import add_threads_option, apply_threads, warn_if_random_weights


#: ``--calibration-images`` when not given
CALIBRATION_IMAGES = 64
#: the most ``--check-images`` the float check compares on
CHECK_IMAGES = 8
#: the library's ``DEFAULT_PERCENTILE`` as ``--help`` states it (importing the quantizer would load torch and
#: torchvision for ``--help``; a test keeps the two equal)
HELP_PERCENTILE = 99.999


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: from --weights)")
    add_threads_option(parser)
    parser.add_argument("--weights", help="our .safetensors, a reference checkpoint (with --model) or 'coco' "
                        "(default: random)")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--output", help="output file (default: <model>.onnx)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 or newer, default 18)")
    parser.add_argument("--image-size", type=int, help="model input size override")
    parser.add_argument("--check", action="store_true",
                        help="run onnxruntime and eager on two random images (or --check-images), compare the "
                             "detections and print PASS or FAIL (exit status 1 on FAIL or nothing to compare)")
    parser.add_argument("--check-images", metavar="DATA",
                        help=f"--check on up to {CHECK_IMAGES} of these images instead: a folder or glob of images, "
                             "or a dataset (shapes:val, a COCO .json, ...); a trained model finds little on noise")
    parser.add_argument("--score-tol", type=float,
                        help="--check: largest score difference (default 1e-4; with --int8 that of a matched "
                             "detection, default 0.1)")
    parser.add_argument("--box-tol", type=float,
                        help="--check: largest box coordinate difference in pixels (default 0.01; not with --int8, "
                             "whose check matches boxes by IoU >= 0.8)")
    parser.add_argument("--int8", action="store_true",
                        help="write an INT8 file (onnxruntime static quantization; needs --calibration)")
    parser.add_argument("--calibration", metavar="DATA",
                        help="--int8: calibration images: a folder or glob of images, or a dataset (shapes:val, a "
                             "COCO .json, a VOC folder, a YOLO data.yaml)")
    parser.add_argument("--calibration-images", type=int,
                        help=f"--int8: how many images (default {CALIBRATION_IMAGES}: with labels they also judge the "
                             "float-kept layers by AP)")
    parser.add_argument("--calibration-percentile", type=float, metavar="P",
                        help="--int8: activation ranges cover P percent of each tensor's calibration values "
                             f"(default {HELP_PERCENTILE}: D0's INT8 AP loss on one held-out set 0.0002 where "
                             "min / max lost 0.017; 100 = min / max, a faster calibration)")
    parser.add_argument("--images", help="with a dataset as --calibration / --check-images: the image folder of a "
                        "COCO JSON (default: beside it or images/)")
    parser.add_argument("--split", help="with a dataset as --calibration / --check-images: VOC / YOLO split "
                        "(default: train for a YOLO data.yaml, every annotated image of a VOC folder)")
    parser.add_argument("--int8-choose", choices=["first", "fastest"], default="first",
                        help="--int8: keep the first float-kept rule that agrees with float (most int8), or time "
                             "every agreeing rule on this machine and keep the fastest (slower export)")


def calibration_images(data: str, count: int, class_names: list[str] | None = None,
                       flag: str = "--calibration", images: str | None = None, split: str | None = None) -> list:
    """Up to ``count`` calibration items from ``data``, evenly spread over it: from a dataset
    (:func:`scaledet.data.open_dataset`: ``shapes...``, ``.json``, ``.yaml``, a folder with
    ``Annotations/``; ``images`` / ``split`` as it takes them) ``(image, target)`` pairs with labels in
    the order of ``class_names`` (the model's; the INT8 rule is then judged by AP), or bare images when
    its classes are not the model's or ``class_names`` is None; from files / folders / globs, readable
    images (float ``[3, H, W]`` in [0, 1]; unreadable ones are named and others taken in their place).
    ``flag``: the option that gave ``data``, named in messages."""
    import torch

    from scaledet.data import load_image, open_dataset
    from scaledet.data.base import plain_name
    from scaledet.data.images import IMAGE_ERRORS
    from scaledet.evaluation.results import label_mapping
    from scaledet.inference.predict import IMAGE_SUFFIXES, collect_inputs

    path = Path(data)
    is_dataset = path.suffix.lower() in (".json", ".yaml", ".yml") or (path / "Annotations").is_dir()
    if data.startswith("shapes") or is_dataset:
        if split is None and path.suffix.lower() in (".yaml", ".yml"):  # a data.yaml lists several splits:
            split = "train"  # its training images, as scaledet train and doctor read it
        dataset = open_dataset(data, images, split, progress=False)
        step = max(len(dataset) // count, 1)
        items = [dataset[i] for i in range(0, len(dataset), step)][:count]
        if class_names is None or {plain_name(n) for n in class_names} != {plain_name(n) for n in dataset.class_names}:
            if class_names is not None:
                print(f"{flag} {data}: its classes are not the model's; the INT8 layers are judged by agreement "
                      "with float, not by AP")
            return [image for image, _ in items]
        to_model = torch.empty(len(dataset.class_names), dtype=torch.long)
        to_model[torch.tensor(label_mapping(class_names, dataset.class_names))] = torch.arange(len(class_names))
        return [(image, {"boxes": target["boxes"], "labels": to_model[target["labels"].long()]})
                for image, target in items]
    paths, problems = collect_inputs([data])
    paths = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise ValueError(f"{flag} {data}: no images found" + (f" ({problems[0]})" if problems else "")
                         + "; give a folder or glob of images, or a dataset such as shapes:val or a COCO .json")
    if images is not None or split is not None:
        raise ValueError(f"{flag} {data} is no dataset: --images / --split go with a dataset (a COCO .json, a VOC "
                         "folder, a YOLO data.yaml)")
    step = max(len(paths) // count, 1)
    spread = paths[::step]
    in_spread = set(spread)
    loaded = []
    for path in spread + [p for p in paths if p not in in_spread]:  # an unreadable one's place goes to the next
        if len(loaded) == count:
            break
        try:
            loaded.append(load_image(path))
        except IMAGE_ERRORS as error:  # as predict does: one line, the rest still calibrate
            print(f"{flag}: skipped {path}: cannot read image ({error})")
    if not loaded:
        raise ValueError(f"{flag} {data}: none of its images could be read; give readable images")
    return loaded


def run(args: argparse.Namespace) -> int:
    import torch

    import scaledet
    from scaledet.export import OnnxDetector, export_onnx
    from scaledet.inference.compare import compare_detection_sets

    apply_threads(args.threads)
    for name in ("score_tol", "box_tol"):
        value = getattr(args, name)
        if value is not None and not (args.check and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} {value:g}: " + ("a tolerance is >= 0" if args.check else
                             "it is a tolerance of --check: add --check or drop it"))
    if args.check_images and not (args.check and not args.int8):
        raise ValueError("--check-images: for the float --check only (add --check; the --int8 check compares on the "
                         "calibration images)")
    if args.int8 and args.box_tol is not None:
        raise ValueError("--box-tol is the float check's: the --int8 check matches boxes by IoU >= 0.8 (--score-tol "
                         "sets its score tolerance)")
    if args.weights and Path(args.weights).suffix.lower() == ".onnx":
        raise ValueError("--weights is already an ONNX file")
    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration DATA: a folder or glob of images like the ones to detect on, "
                         "or a dataset (e.g. shapes:val, a COCO .json)")
    int8_options = (("--calibration", args.calibration), ("--calibration-images", args.calibration_images),
                    ("--calibration-percentile", args.calibration_percentile))
    int8_only = [flag for flag, value in int8_options if value is not None]
    if int8_only and not args.int8:
        raise ValueError(f"{' / '.join(int8_only)}: for --int8 only")
    dataset_options = [flag for flag, value in (("--images", args.images), ("--split", args.split)) if value is not None]
    if dataset_options and not (args.calibration or args.check_images):
        raise ValueError(f"{' / '.join(dataset_options)}: for a dataset given as --calibration or --check-images")
    warn_if_random_weights(args.weights, args.model)
    model = scaledet.load(args.weights, model=args.model, image_size=args.image_size)
    if args.int8:
        return _export_int8(model, args)
    output = Path(args.output or f"{model.config['model']}.onnx")
    if args.check_images:  # read first: a folder without readable images stops before the export
        images, kind = calibration_images(args.check_images, CHECK_IMAGES, flag="--check-images", images=args.images,
                                          split=args.split), "images"
    path = export_onnx(model, output, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset})")
    if args.check:
        if not args.check_images:
            generator = torch.Generator().manual_seed(0)
            images = [torch.rand(3, 480, 640, generator=generator), torch.rand(3, 500, 375, generator=generator)]
            kind = "random images"
        with torch.no_grad():
            reference = model(images)
        exported = OnnxDetector(path)(images)
        if not any(len(d["scores"]) for d in [*reference, *exported]):
            hint = ("(a trained model's scores stay under its threshold on noise: give --check-images DATA)"
                    if not args.check_images else "(images without the model's objects?)")
            print(f"check, onnxruntime vs eager on {len(images)} {kind}: INCONCLUSIVE, neither finds anything "
                  f"{hint}, so nothing was compared")
            return 1
        comparison = compare_detection_sets(reference, exported, 1e-4 if args.score_tol is None else args.score_tol,
                                            1e-2 if args.box_tol is None else args.box_tol)
        print(f"check, onnxruntime vs eager on {len(images)} images: {comparison.summary()}")
        return 0 if comparison.passed else 1
    return 0


def _export_int8(model, args: argparse.Namespace) -> int:
    """``--int8``: export float to a temporary file, quantize it into ``--output``, print the report."""
    import tempfile
    from dataclasses import replace

    import torch

    from scaledet.export import export_onnx
    from scaledet.inference.quantize import (DEFAULT_PERCENTILE, DEFAULT_TOLERANCE, QuantizedDetector,
                                             check_calibration, detection_agreement, quantize_onnx)

    if args.calibration_images is None:
        args.calibration_images = CALIBRATION_IMAGES
    if args.calibration_percentile is None:
        args.calibration_percentile = DEFAULT_PERCENTILE
    if args.calibration_images < 1:
        raise ValueError("--calibration-images must be >= 1")
    if not 50 < args.calibration_percentile <= 100:
        raise ValueError(f"--calibration-percentile must be in (50, 100], got {args.calibration_percentile:g}")
    calibration = calibration_images(args.calibration, args.calibration_images, list(model.class_names),
                                     images=args.images, split=args.split)
    images, _ = check_calibration(calibration)
    output = Path(args.output or f"{model.config['model']}.int8.onnx")
    with tempfile.TemporaryDirectory(prefix="scaledet-export-") as tmp:
        float_path = export_onnx(model, Path(tmp) / "float.onnx", opset=args.opset)
        report = quantize_onnx(float_path, output, calibration, progress=print, choose=args.int8_choose,
                               percentile=args.calibration_percentile)
    print(report.summary())
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, int8, opset {args.opset})")
    if args.check:
        with torch.no_grad():
            reference = model(images)
        tolerance = (DEFAULT_TOLERANCE if args.score_tol is None
                     else replace(DEFAULT_TOLERANCE, score_tol=args.score_tol))
        agreement = detection_agreement(reference, QuantizedDetector(output)(images), tolerance)
        passed = agreement.passes(tolerance)
        print(f"check, int8 onnxruntime vs eager on {len(images)} calibration images: {agreement.summary()} "
              f"({tolerance})")
        if agreement.reference == 0:  # 0 of 0 matched compares nothing: as the float check, not a PASS
            print(f"INCONCLUSIVE: the float model finds nothing scoring {tolerance.min_score:g} or more on the "
                  "calibration images, so there was nothing to compare; calibrate on images with objects the "
                  "model detects (trained weights, --calibration DATA of its kind)")
            return 1
        stricter = (" (detections agree within the tolerance; the AP budget the rule was chosen by, stricter, was "
                    "not met: see the rule lines above)") if passed and report.float_ap is not None and not report.passed else ""
        print(("PASS" if passed else "FAIL") + stricter)
        return 0 if passed else 1
    return 0
