"""`scaledet demo`: train EfficientDet-D0 from scratch on the built-in shapes data, offline, on a CPU.

Builds the shapes train / held-out val splits, trains with the default recipe (the same one
``scaledet train`` gives a user's data: the demo passes only the data, the model, the input size
and the budget), evaluates the EMA weights with COCO metrics, prints the COCO table and writes
``OUT`` (default ``runs/demo``): ``metrics.json``, ``curves.png``, ``predictions.png``,
``weights.safetensors`` (+ ``.json``), ``log.jsonl``, ``steps.csv``, ``epochs.csv`` and the
checkpoints. The budget (at most 12 epochs or 8.25 minutes of training) keeps the whole command
under 10 minutes on 2 CPU cores of either processor kind (docs/training.md has the measurements).
"""

from __future__ import annotations

import argparse

# What the demo chooses: data, model, input size, budget. Everything else is the default recipe.
DEMO_DEFAULTS: dict = dict(
    model="efficientdet_d0",
    image_size=128,  # shapes are rendered at this size too: no resize cost, objects 20-51 px
    train_images=1600,
    val_images=200,
    epochs=12,  # the plan on a fast machine; a slower one is stopped (and annealed) by the time cap
    max_minutes=8.25,  # training wall-time cap: + start-up and the final evaluation stays under 10 minutes
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    for name, value in DEMO_DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=type(value), default=value,
                            help=f"default {value}")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the idle cores)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def demo_config(args: argparse.Namespace):
    """The :class:`TrainConfig` of the demo run: the default recipe, the demo's data and budget."""
    from scaledet.engine.config import TrainConfig

    return TrainConfig.for_model(
        args.model, train="shapes:train", val="shapes:val", image_size=args.image_size, epochs=args.epochs,
        max_minutes=args.max_minutes, out=args.out, seed=args.seed, progress=args.progress, threads=args.threads,
        eval_every=0, log_every=5,
    )


def run(args: argparse.Namespace) -> int:
    import time

    from scaledet.data import print_report, shapes_split
    from scaledet.engine.run import train_from_config
    from scaledet.engine.recipe import configure_threads

    start = time.monotonic()
    for flag, value in (("--train-images", args.train_images), ("--val-images", args.val_images)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    config = demo_config(args)
    threads = configure_threads(config.threads)
    size = args.image_size
    print(f"scaledet demo: {args.model} at {size}x{size} on {args.train_images} shapes images, "
          f"up to {args.epochs} epochs / {args.max_minutes:g} minutes, {threads} threads -> {args.out}")
    train = shapes_split("train", num_images=args.train_images, image_size=size)
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    for name, dataset in (("train", train), ("val", val)):
        print(f"{name}: ", end="")
        print_report(dataset)
    metrics = train_from_config(config, train, val)
    print(f"demo finished in {time.monotonic() - start:.0f} s: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}")
    return 0
