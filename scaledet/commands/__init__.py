"""The ``scaledet`` subcommands, one module each (``add_arguments(parser)`` and ``run(args)``), and the
options several of them share."""

from __future__ import annotations

import argparse


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's and onnxruntime's CPU threads for this command."""
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch and onnxruntime (default: torch's: OMP_NUM_THREADS or the cores)")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads to ``--threads`` (onnxruntime sessions follow torch's count); ``None``: unchanged."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be 1 or more, got {threads}")
    from scaledet.engine.recipe import configure_threads

    configure_threads(threads)


def warn_if_random_weights(weights: str | None, model: str | None) -> None:
    """Warn that no ``--weights`` means a randomly initialised ``model`` (its detections mean nothing)."""
    if weights is None and model is not None:
        import warnings

        warnings.warn(f"no --weights: {model} has random weights, so its detections mean nothing; give --weights "
                      "FILE (a run's weights.safetensors, a checkpoint) or --weights coco", stacklevel=2)
