"""The `scaledet` command line: a thin layer over the library.

Each sub-command lives in ``scaledet/commands/<name>.py`` and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy
dependencies inside ``run`` so that ``scaledet --help`` stays fast.

Errors the user can cause (:class:`scaledet.errors.UserError`, ``ValueError``, ``OSError``, bad
YAML, Ctrl-C) are printed as ``scaledet <command>: error: ...`` without a traceback, exit status
2 (130 for Ctrl-C); ``scaledet --debug <command> ...`` re-raises them with the traceback. Any other
exception is a bug and keeps its traceback. Warnings print as ``scaledet <command>: warning: ...``
(with ``--debug``, Python's format: file, line and source).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from scaledet.errors import UserError

# name -> one-line help. Order is the order shown by --help.
COMMANDS: dict[str, str] = {
    "demo": "train, evaluate and draw a detector on the built-in shapes data (offline, CPU)",
    "train": "train a detector on COCO JSON, Pascal VOC or YOLO data",
    "doctor": "report on a training set before training: ids, box sizes, anchor coverage",
    "eval": "COCO metrics for a model on a dataset, or for a detections file",
    "predict": "run a detector on images, folders, globs or videos and draw the results",
    "export": "export a detector to ONNX with NMS inside the graph",
    "bench": "latency / throughput tables of scaledet's engines (eager, optimised, onnxruntime, INT8)",
    "profile": "parameters, MACs and anchors per variant beside the paper's numbers",
    "paper": "reproduce the EfficientDet paper's tables and figures as a report",
}


DEBUG_HELP = "show the full traceback of an error instead of a one-line message"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaledet", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
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
        # also accepted after the command; SUPPRESS keeps a flag given before it
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        sub.set_defaults(_run=module.run)
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions printed as one message: what bad input, files or settings raise."""
    types: list[type[BaseException]] = [UserError, ValueError, OSError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:
        pass
    return tuple(types)


def describe_error(error: BaseException) -> str:
    """The message of ``error`` for a person: the text loaders wrote, or ``FILE: reason`` for OS errors."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error).strip()
    return text or type(error).__name__


def who(command: str) -> str:
    """``scaledet COMMAND``, and which process for the other ranks of a ``--processes`` / torchrun run
    (each rank reports its own error)."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return f"scaledet {command}" + (f" (process {rank} of {world})" if rank not in ("", "0") and world != "1" else "")


def say(line: str) -> None:
    """``line`` to stderr in one write, so that the lines of processes sharing the terminal do not run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # Ctrl-C while the commands' modules load
        say("scaledet: interrupted")
        return 130
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    format_warning = warnings.formatwarning
    if not args.debug:  # a warning is a line for the user, not a source location and a line of our code
        warnings.formatwarning = lambda message, *_, **__: f"{who(args.command)}: warning: {message}\n"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        say(f"{who(args.command)}: {interrupt.args[0] if interrupt.args else 'interrupted'}")
        return 130
    except Exception as error:
        if args.debug or not isinstance(error, user_error_types()):
            raise
        say(f"{who(args.command)}: error: {describe_error(error)}")
        return 2
    finally:
        warnings.formatwarning = format_warning


if __name__ == "__main__":
    sys.exit(main())
