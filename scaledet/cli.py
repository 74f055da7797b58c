"""The `scaledet` command line: a thin layer over the library.

Each sub-command lives in ``scaledet/commands/<name>.py`` and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy
dependencies inside ``run`` so that ``scaledet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help. Order is the order shown by --help.
COMMANDS: dict[str, str] = {
    "demo": "train, evaluate and draw a detector on the built-in shapes data (offline, CPU)",
    "train": "train a detector on COCO JSON, Pascal VOC or YOLO data",
    "eval": "COCO metrics for a model on a dataset, or for a detections file",
    "predict": "run a detector on images, folders, globs or videos and draw the results",
    "export": "export a detector to ONNX with NMS inside the graph",
    "bench": "latency / throughput tables against the reference ports",
    "profile": "parameters, MACs and anchors per variant beside the paper's numbers",
    "paper": "reproduce the EfficientDet paper's tables and figures as a report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaledet", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"scaledet.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"scaledet.commands.{name}":
                raise
            continue  # command not implemented yet
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
