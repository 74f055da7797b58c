"""`scaledet demo`: train EfficientDet-D0 from scratch on the built-in shapes data, offline, on a CPU.

Builds the shapes train / held-out val splits, trains with progress bars, evaluates the EMA
weights with COCO metrics, prints the COCO table and writes ``OUT`` (default ``runs/demo``):
``metrics.json``, ``curves.png``, ``predictions.png``, ``weights.safetensors`` (+ ``.json``),
``log.jsonl``, ``steps.csv``, ``epochs.csv`` and the checkpoints. The recipe below was tuned to
finish within 10 minutes on 2 CPU cores (see docs/training.md for the measurements).
"""

from __future__ import annotations

import argparse

# The demo recipe (every value can be overridden by a flag of the same name).
DEMO_DEFAULTS: dict = dict(
    model="efficientdet_d0",
    image_size=128,  # shapes are rendered at this size too: no resize cost, objects 15-51 px
    train_images=1600,
    val_images=200,
    epochs=9,  # 900 steps if the machine is fast enough; otherwise the time cap ends (and anneals) it sooner
    max_minutes=8.25,  # training wall-time cap: + start-up and the final evaluation stays under 10 minutes
    batch_size=16,
    optimizer="sgd",
    lr=0.04,
    ema_decay=0.999,
    bn_momentum=0.1,
    freeze_bn_fraction=0.2,  # last ~180 steps on BatchNorm's running statistics (see docs/training.md)
    weight_decay=4e-5,
    warmup_epochs=1.0,  # 100 steps
    scale_min=0.75,
    scale_max=1.33,
    workers=0,
    threads=0,  # torch CPU threads; 0 = the idle cores (see _auto_threads)
    device="auto",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    for name, value in DEMO_DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=type(value), default=value,
                            help=f"default {value}")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def demo_config(args: argparse.Namespace):
    """The :class:`TrainConfig` of the demo run: every recipe value that is a training option, from
    ``args``; the rest (image counts, scale range, threads) is used where the data and threads are set up."""
    import dataclasses

    from scaledet.engine.config import TrainConfig

    options = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    recipe = {name: getattr(args, name) for name in DEMO_DEFAULTS if name in options}
    return TrainConfig.for_model(
        args.model, train="shapes:train", val="shapes:val", out=args.out, seed=args.seed, progress=args.progress,
        eval_every=0, log_every=5, **recipe,
        augment={"scale_range": (args.scale_min, args.scale_max), "photometric": False},
        model_overrides={"backbone_drop_path_rate": 0.0},
    )


def _auto_threads() -> int:
    """Every core the machine is not already busy with (at least 1).

    `make` exports OMP_NUM_THREADS=1 for the tests, so the demo picks its own count. On a shared,
    oversubscribed machine one thread is several times faster than two: OpenMP threads that wait
    for a descheduled sibling at every barrier waste their time slices.
    """
    import os

    cores = os.cpu_count() or 1
    idle = cores - os.getloadavg()[0]
    return max(1, min(cores, int(idle + 0.5)))


def run(args: argparse.Namespace) -> int:
    import time

    from scaledet.data import print_report, shapes_split
    from scaledet.engine.run import add_train_transforms, build_model, train_from_config

    import os

    import torch

    start = time.monotonic()
    torch.set_num_threads(args.threads or _auto_threads())
    config = demo_config(args)
    size = args.image_size
    print(f"scaledet demo: {args.model} at {size}x{size} on {args.train_images} shapes images, "
          f"up to {args.epochs} epochs / {args.max_minutes:g} minutes, {torch.get_num_threads()} threads -> {args.out}")
    train = shapes_split("train", num_images=args.train_images, image_size=size)
    val = shapes_split("val", num_images=args.val_images, image_size=size)
    for name, dataset in (("train", train), ("val", val)):
        print(f"{name}: ", end="")
        print_report(dataset)
    model = build_model(config, list(train.class_names))
    add_train_transforms(train, config, model.image_size)
    metrics = train_from_config(config, train, val, model)
    print(f"demo finished in {time.monotonic() - start:.0f} s: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}")
    return 0
