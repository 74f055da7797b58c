"""`scaledet train`: train a detector on COCO JSON, Pascal VOC, YOLO or the built-in shapes data.

Options come from an optional YAML file (``--config``, keys = the long flag names with ``_``) and
are overridden by flags. Unset recipe options take the recipe's defaults for the model family
(:mod:`scaledet.engine.recipe`: ``--recipe auto``, the default, adapts to the run's length and data).
``--processes K`` trains with K DDP processes on this machine (the same as ``torchrun --standalone
--nproc_per_node=K -m scaledet train ...``; ``--batch-size`` is then per process).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from scaledet.errors import OptionError, UserError

# flag -> (type, help); every flag defaults to None so the YAML file / family recipe decide.
_VALUE_FLAGS: dict[str, tuple[Any, str]] = {
    "model": (str, "model name, e.g. efficientdet_d0 (default efficientdet_d0)"),
    "train": (str, "training data: COCO .json, VOC folder, YOLO data.yaml or shapes:train"),
    "val": (str, "validation data (same formats); evaluated with COCO metrics"),
    "images": (str, "COCO only: folder holding the images (of --train, and of --val unless --val-images)"),
    "val_images": (str, "COCO only: folder holding --val's images, where they are not in --images"),
    "image_size": (int, "input size of the model: the square side (EfficientDet, RetinaNet; default: fitted to "
                        "the training images) or DETR's shorter side (default 800)"),
    "tile": (int, "large images: train on native-resolution TILE x TILE crops (around objects) and validate "
                  "through tiles; the model's input size becomes TILE unless --image-size"),
    "tile_overlap": (float, "with --tile: fraction of a tile shared by neighbouring validation tiles (default 0.2)"),
    "tile_min_visible": (float, "with --tile: drop a box keeping less than this fraction of its area in a crop "
                              "(default 0.5)"),
    "anchors": (str, "auto (default: fitted to the training boxes when that covers them better than the published "
                     "anchors or, with --pretrained, the checkpoint's), fit (the best fit, also when fine-tuning) or "
                     "default (published)"),
    "epochs": (int, "number of epochs"),
    "max_minutes": (float, "stop training after this wall time (still evaluates and saves)"),
    "max_steps": (int, "stop after this many optimizer steps"),
    "out": (str, "output folder (default runs/train)"),
    "pretrained": (str, "'coco' or a weights file to start from"),
    "num_classes": (int, "number of classes (default: the training set's)"),
    "recipe": (str, "auto (default: adapted to the run's length and data) or paper (the published recipe)"),
    "batch_size": (int, "images per optimizer step and process"),
    "lr": (float, "peak learning rate"),
    "backbone_lr": (float, "learning rate of backbone.* parameters"),
    "optimizer": (str, "sgd or adamw"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay (not applied to biases and norm weights)"),
    "schedule": (str, "cosine or step"),
    "warmup_epochs": (float, "linear warm-up length in epochs (paper recipe: 1)"),
    "warmup_fraction": (float, "linear warm-up as a fraction of the run (auto recipe: 0.1)"),
    "clip_grad": (float, "gradient-norm clip (0: off)"),
    "ema_decay": (float, "EMA decay of the evaluated weights (0: no EMA; default: from the run's length)"),
    "bn_momentum": (float, "BatchNorm momentum (default: from the run's length)"),
    "freeze_bn_fraction": (float, "final fraction of training with BatchNorm on its running statistics (auto recipe: 0.2)"),
    "grad_accum": (int, "micro-batches per optimizer step"),
    "workers": (int, "DataLoader worker processes"),
    "image_cache_gb": (float, "keep decoded training images in memory up to this many GiB (default 4; 0: off)"),
    "seed": (int, "random seed (same seed and settings: same run on the same machine)"),
    "threads": (int, "torch CPU threads (default: OMP_NUM_THREADS if set, else the idle cores)"),
    "device": (str, "auto, cpu, cuda, cuda:1 ..."),
    "eval_every": (int, "evaluate every N epochs (0: only at the end; default: about 4 times per run)"),
    "log_every": (int, "log a step record every N steps"),
}
_BOOL_FLAGS: dict[str, str] = {
    "amp": "mixed precision (bf16 on CPU, fp16 on CUDA)",
    "channels_last": "channels_last memory format (default: on for CPU fp32 training)",
    "keep_freed_memory": "CPU: glibc's malloc keeps freed memory for the next step (default on; ~1.3x faster steps)",
    "sync_bn": "SyncBatchNorm across ranks (CUDA)",
    "tensorboard": "also log to OUT/tensorboard (needs the tensorboard package)",
    "deterministic": "torch.use_deterministic_algorithms",
    "progress": "progress bars (default on)",
    "allow_empty": "accept data without any box (background images only; by default that is an error)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    for name, (kind, help_text) in _VALUE_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_text)
    for name, help_text in _BOOL_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                            default=None, help=help_text)
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint, or a run folder's last.pt (default OUT/last.pt)")
    parser.add_argument("--processes", type=int, default=1,
                        help="DDP processes on this machine, as torchrun --standalone --nproc_per_node=K "
                             "(default 1; on a CPU each gets the idle cores / K threads, --batch-size is per process)")


def command_line(args: argparse.Namespace) -> list[str]:
    """The options of parsed ``args`` as ``scaledet train`` flags (what each ``--processes`` process
    runs; ``--processes`` itself left out). Parsing them again gives the same options."""
    line = ["--config", args.config] if args.config else []
    for name in _VALUE_FLAGS:
        if getattr(args, name) is not None:
            line += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    for name in _BOOL_FLAGS:
        if getattr(args, name) is not None:
            line.append(("--" if getattr(args, name) else "--no-") + name.replace("_", "-"))
    if args.resume is not None:
        line += ["--resume", args.resume]
    return line


def option_source(option: str, args: argparse.Namespace) -> str:
    """How the user set training ``option``: ``--flag``, ``'key:' in FILE`` for a key of the ``--config`` file
    (or a YAML-only option), the option's own name for a value the recipe chose."""
    if option in _VALUE_FLAGS and getattr(args, option, None) is not None:
        return "--" + option.replace("_", "-")
    if args.config:
        return f"'{option}:' in {args.config}"
    return "--" + option.replace("_", "-") if option in _VALUE_FLAGS else option


def run(args: argparse.Namespace) -> int:
    from scaledet.engine.config import TrainConfig
    from scaledet.engine.distributed import launch_local, world_size
    from scaledet.engine.run import train_from_config

    if args.processes < 1:
        raise UserError(f"--processes must be 1 or more, got {args.processes}")
    flags = {name: getattr(args, name) for name in (*_VALUE_FLAGS, *_BOOL_FLAGS, "resume")}
    try:
        config = TrainConfig.from_sources(args.config, **flags)
    except OptionError as error:  # named as the user gave it: a flag, or a key of the --config file
        raise UserError(f"{option_source(error.option, args)} {error.requirement}") from None
    if config.train is None:
        raise UserError("give --train DATA (or 'train:' in the --config file)")
    started = time.time()
    try:
        if args.processes > 1 and world_size() == 1:  # not yet inside the processes it launches
            debug = ["--debug"] if args.debug else []
            return launch_local(args.processes, [*debug, "train", *command_line(args)], threads=args.threads)
        train_from_config(config)
    except KeyboardInterrupt:
        if args.debug:
            raise
        raise Interrupted(f"interrupted; {_what_next(config, started)}") from None
    return 0


def _what_next(config, started: float) -> str:
    """After an interruption: resume from ``OUT/last.pt`` when this run wrote it (or resumed from it), else
    start again (a ``last.pt`` an earlier run left there is not this run's)."""
    checkpoint = Path(config.out) / "last.pt"
    # file times come from a coarse clock that may trail time.time() by milliseconds: 1 s of margin
    ours = checkpoint.is_file() and (config.resume is not None or checkpoint.stat().st_mtime >= started - 1.0)
    return (f"the same command with --resume continues from {checkpoint}" if ours
            else "nothing was saved yet: run the same command again")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with what the user can do next (printed by the CLI)."""
