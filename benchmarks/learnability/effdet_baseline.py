"""The reference baseline of the learnability benchmark: effdet 0.4.1 trained on a COCO set.

``tf_efficientdet_d0`` from effdet (``pretrained_backbone=False``: nothing is downloaded, both
detectors start from scratch), trained with effdet's own ``DetBenchTrain`` (its anchor labeler,
focal + Huber loss) for a wall-clock budget, then scored with scaledet's COCO evaluation
(``scaledet.evaluation.COCOEvaluator``, pycocotools) on the val split in original pixels.

The recipe, kept simple on purpose:

* data: scaledet's ``CocoDataset``; augmentation = horizontal flip + scale jitter / random crop /
  pad to the square input size (``scaledet.data.train_transforms`` without photometric jitter),
  with the same scale range scaledet's defaults use (:func:`scaledet_scale_range`); the val
  images are resized (longest side = input size, aspect kept) and padded bottom/right, and the
  boxes divided back by the resize factors. Inputs are ImageNet-normalised, as effdet expects.
* batch 8, AdamW (weight decay 1e-4), gradient-norm clip 10, no EMA;
  the learning rate warms up linearly over the first 20 steps, then follows a cosine from ``lr``
  to 0 over the *wall-clock* budget (progress = elapsed / budget: the steps a budget allows are
  not known in advance on a shared machine, and this anneals exactly when the budget ends).
* targets: effdet's format (boxes yxyx pixels of the input, classes 1..K, padded with -1);
  predictions map effdet's class ``c`` (1..K) to dataset label ``c - 1`` and through the
  dataset's ``label_to_category_id`` to the JSON's category ids.
* ``--lr-sweep`` trains once per learning rate (default 3e-4, 1e-3, 3e-3, 1e-2, 3e-2) at a shorter
  budget with seed 0 and returns the one with the best val AP (AP50 breaks ties).

Usage::

    python -m benchmarks.learnability.effdet_baseline --set scenes --minutes 8 --lr 1e-3 [--seed 0]
    python -m benchmarks.learnability.effdet_baseline --set scenes --lr-sweep --minutes 3
    python -m benchmarks.learnability.effdet_baseline --data DIR --image-size 256 ...   # any folder with train.json / val.json

It prints one JSON line (``--json FILE`` also writes it): AP, AP50, steps, images_per_s,
wall_s, and more.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SWEEP_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
BATCH_SIZE = 8
WEIGHT_DECAY = 1e-4
CLIP_GRAD = 10.0
WARMUP_STEPS = 20
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL = "tf_efficientdet_d0"


def scaledet_scale_range() -> tuple[float, float]:
    """The scale-jitter range ``scaledet train``'s default (auto) recipe uses for a run of this
    benchmark's length: its 8-minute runs plan at most ~35 epochs (``fewshot``), where the recipe
    picks its shortest-run range, 0.9-1.1 (``scaledet.engine.recipe.augmentation_for``)."""
    from scaledet.engine.recipe import augmentation_for

    return tuple(float(v) for v in augmentation_for(0.0)["scale_range"])


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _open(data: Path, image_size: int, scale_range: tuple[float, float]):
    from scaledet.data import eval_transforms, open_dataset, train_transforms

    train = open_dataset(data / "train.json", transforms=train_transforms(
        image_size, scale_range=scale_range, hflip=0.5, photometric=False))
    val = open_dataset(data / "val.json", transforms=eval_transforms(image_size))
    if list(train.class_names) != list(val.class_names):
        raise ValueError(f"{data}: train and val have different categories")
    return train, val


def create_bench(num_classes: int, image_size: int):
    """effdet's ``DetBenchTrain`` around a from-scratch ``tf_efficientdet_d0`` (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import effdet

        return effdet.create_model(MODEL, bench_task="train", num_classes=num_classes, pretrained=False,
                                   pretrained_backbone=False, image_size=(image_size, image_size), bench_labeler=True)


def _normalise(images: Sequence[torch.Tensor]) -> torch.Tensor:
    batch = torch.stack(list(images))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def effdet_targets(targets: Sequence[dict]) -> dict[str, torch.Tensor]:
    """scaledet targets (xyxy boxes, labels 0..K-1) -> effdet's (yxyx boxes, classes 1..K, -1 pad)."""
    count = max([len(t["labels"]) for t in targets] + [1])
    boxes = torch.full((len(targets), count, 4), -1.0)
    classes = torch.full((len(targets), count), -1.0)
    for index, target in enumerate(targets):
        xyxy = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        boxes[index, : len(xyxy)] = xyxy[:, [1, 0, 3, 2]]
        classes[index, : len(xyxy)] = torch.as_tensor(target["labels"], dtype=torch.float32) + 1.0
    return {"bbox": boxes, "cls": classes}


def effdet_predictions(detections: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """effdet's ``[B, 100, 6]`` rows (x1, y1, x2, y2, score, class 1..K; zero rows = padding) ->
    scaledet prediction dicts with labels 0..K-1 (boxes still in input pixels)."""
    out = []
    for rows in detections.detach().float().cpu():
        keep = (rows[:, 4] > 0) & (rows[:, 5] >= 1)
        rows = rows[keep]
        out.append({"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].long() - 1})
    return out


def _lr_factor(step: int, progress: float) -> float:
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return warmup * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(bench, val_set, batch_size: int = BATCH_SIZE) -> dict:
    """COCO stats of effdet's predictions on ``val_set`` (with ``eval_transforms``) in original pixels."""
    from effdet import DetBenchPredict

    from scaledet.data import collate_fn
    from scaledet.evaluation import COCOEvaluator

    predictor = DetBenchPredict(bench.model).eval()
    evaluator = COCOEvaluator(val_set)  # maps labels 0..K-1 to the JSON's category ids
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    for images, targets in loader:
        detections = predictor(_normalise(images))
        evaluator.update(effdet_predictions(detections), targets)  # targets carry image_id and scale
    stats = evaluator.compute()
    stats.pop("per_class", None)
    return stats


def train_effdet(data: str | Path, image_size: int, minutes: float, lr: float, seed: int = 0,
                 batch_size: int = BATCH_SIZE, max_steps: int | None = None,
                 scale_range: tuple[float, float] | None = None, log_every: int = 25) -> dict:
    """Train effdet D0 on ``data/train.json`` for ``minutes`` of wall time, evaluate on ``data/val.json``."""
    from scaledet.data import collate_fn

    data = Path(data)
    scale_range = tuple(scale_range) if scale_range is not None else scaledet_scale_range()
    generator = _seed_everything(seed)
    train_set, val_set = _open(data, image_size, scale_range)
    bench = create_bench(len(train_set.class_names), image_size)
    bench.train()
    optimizer = torch.optim.AdamW(bench.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_fn, generator=generator)
    budget = 60.0 * minutes
    step = images_seen = bad_steps = 0
    last_loss = float("nan")
    start = time.monotonic()
    done = False
    while not done:
        for images, targets in loader:
            progress = (time.monotonic() - start) / budget
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, progress)
            losses = bench(_normalise(images), effdet_targets(targets))
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(bench.parameters(), CLIP_GRAD)
                if torch.isfinite(norm):
                    optimizer.step()
                else:
                    bad_steps += 1
                last_loss = float(loss.detach())
            else:
                bad_steps += 1
            step += 1
            images_seen += len(images)
            if log_every and step % log_every == 0:
                print(f"  effdet step {step} loss {last_loss:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                      f"{time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
            if time.monotonic() - start >= budget or (max_steps is not None and step >= max_steps):
                done = True
                break
    train_s = time.monotonic() - start
    bench.eval()
    stats = evaluate(bench, val_set, batch_size)
    wall = time.monotonic() - start
    return {
        "AP": float(stats["AP"]), "AP50": float(stats["AP50"]), "steps": step,
        "images_per_s": round(images_seen / train_s, 3) if train_s > 0 else 0.0, "wall_s": round(wall, 1),
        "train_s": round(train_s, 1), "eval_s": round(wall - train_s, 1), "lr": lr, "seed": seed,
        "batch_size": batch_size, "image_size": image_size, "minutes": minutes, "scale_range": list(scale_range),
        "bad_steps": bad_steps, "final_loss": last_loss, "threads": torch.get_num_threads(), "model": MODEL,
        "stats": {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))},
    }  # fmt: skip


def lr_sweep(data: str | Path, image_size: int, minutes: float, lrs: Sequence[float] = SWEEP_LRS, seed: int = 0,
             **kwargs) -> dict:
    """Train once per learning rate for ``minutes``; the best by val AP (then AP50)."""
    runs = []
    for lr in lrs:
        print(f"effdet lr sweep: lr {lr:g}, {minutes:g} min", file=sys.stderr, flush=True)
        result = train_effdet(data, image_size, minutes, lr, seed=seed, **kwargs)
        print(f"  -> AP {result['AP']:.4f} AP50 {result['AP50']:.4f} ({result['steps']} steps)", file=sys.stderr, flush=True)
        runs.append(result)
    best = max(runs, key=lambda r: (r["AP"], r["AP50"]))
    return {"best_lr": best["lr"], "best": best, "runs": runs, "minutes": minutes, "seed": seed,
            "image_size": image_size, "lrs": list(lrs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train effdet 0.4.1 D0 from scratch on a COCO set and score it.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--set", help="a learnability set name (built if missing)")
    where.add_argument("--data", help="a folder with train.json, val.json (and images/)")
    parser.add_argument("--image-size", type=int, default=None, help="square input size (default: the set's)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget (per lr when sweeping)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps (smoke tests)")
    parser.add_argument("--scale-range", type=float, nargs=2, default=None,
                        help="scale jitter (default: scaledet's default range)")
    parser.add_argument("--lr-sweep", action="store_true", help="try --lrs and report the best")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(SWEEP_LRS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.set:
        from benchmarks.learnability.datasets import prepare, spec

        data, image_size = prepare(args.set), args.image_size or spec(args.set).input_size
    else:
        if args.image_size is None:
            parser.error("--data needs --image-size")
        data, image_size = Path(args.data), args.image_size
    options = dict(batch_size=args.batch_size, max_steps=args.max_steps, scale_range=args.scale_range)
    if args.lr_sweep:
        result = lr_sweep(data, image_size, args.minutes, args.lrs, seed=args.seed, **options)
    else:
        result = train_effdet(data, image_size, args.minutes, args.lr, seed=args.seed, **options)
    text = json.dumps(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.exit(main())
