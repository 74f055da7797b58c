"""`scaledet doctor DATA`: what a detector will see of a training set, without training on it.

Prints the category-id mapping, empty images, box sides and aspect ratios at the network's input
size, tiny boxes, the input size the default recipe picks, how well the model's published anchors
cover the boxes and what ``--anchors auto`` would fit (see :mod:`scaledet.engine.doctor`); the same
report ``scaledet train`` prints before it trains. ``--json FILE`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="COCO .json, VOC folder, YOLO data.yaml or shapes:train")
    parser.add_argument("--images", help="COCO only: folder holding the images")
    parser.add_argument("--split", help="VOC / YOLO split (default train; a VOC folder without ImageSets/Main/train.txt: "
                                            "every annotated image)")
    parser.add_argument("--model", default="efficientdet_d0", help="model the report is for (default efficientdet_d0)")
    parser.add_argument("--image-size", type=int, help="network input size (default: fitted to the data)")
    parser.add_argument("--allow-empty", action="store_true", help="accept data without any box")
    parser.add_argument("--tile", type=int, help="report on the TILE x TILE native-resolution crops `train --tile` "
                        "trains on (the input size becomes TILE unless --image-size)")
    parser.add_argument("--tile-min-visible", type=float, default=0.5,
                        help="with --tile: a box keeping less than this fraction of its area in a tile is dropped, "
                        "as in training (default 0.5)")
    parser.add_argument("--json", dest="json_path", help="also write the report as JSON to this file")


def run(args: argparse.Namespace) -> int:
    from scaledet.data import open_dataset, print_report
    from scaledet.data.tiles import TileCropDataset
    from scaledet.data.voc import split_or_every_image
    from scaledet.engine.doctor import diagnose, format_diagnosis
    from scaledet.engine.run import check_writable
    from scaledet.errors import UserError
    from scaledet.models.registry import create_model

    if args.split is not None and (str(args.data).lower().endswith(".json") or str(args.data).startswith("shapes")):
        raise UserError(f"--split is for a VOC folder or a YOLO data.yaml; {args.data} is one split already")
    if args.split is None:  # a VOC folder without ImageSets/Main/train.txt: every annotated image, as train does
        args.split = split_or_every_image(args.data, "train")
    if args.json_path:
        check_writable(Path(args.json_path).parent, "the report", "--json")  # before the work, not after
    if args.tile is None and args.tile_min_visible != 0.5:
        raise UserError("--tile-min-visible applies only with --tile: add --tile SIZE or drop it")
    dataset = open_dataset(args.data, images=args.images, split=args.split, allow_empty=args.allow_empty)
    print_report(dataset)
    if args.tile is not None:
        try:
            dataset = TileCropDataset(dataset, args.tile, args.tile_min_visible)
        except ValueError as error:
            raise UserError(f"--tile / --tile-min-visible: {error}") from None
        args.image_size = args.image_size or args.tile  # as `train --tile`: the crops are the input unless resized
        print(f"tiles: reporting on the {args.tile}x{args.tile} crops training sees ({len(dataset)} tiles)")
    # the model (random weights) brings its own resize rule: what --image-size means and how boxes scale
    detector = create_model(args.model, num_classes=len(dataset.class_names), image_size=args.image_size)
    report = diagnose(dataset, args.model, tuple(detector.image_size) if args.image_size else None,
                      native_size=tuple(detector.image_size), detector=detector)
    print(format_diagnosis(report))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0
