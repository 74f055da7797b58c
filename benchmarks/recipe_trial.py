"""One recipe trial, as used to choose the default recipe (docs/training.md).

    python -m benchmarks.recipe_trial NAME STEPS [key=JSON ...]
    python -m benchmarks.recipe_trial adamw5e3 300 optimizer='"adamw"' lr=0.005
    python -m benchmarks.recipe_trial --set scenes:60 base 500 seed=1

EfficientDet-D0, a fixed number of optimizer steps (so the result does not depend on the machine's
speed), the default recipe with the given ``TrainConfig`` fields changed (``augment={...}`` sets the
training pipeline's keywords), 1 thread, no intermediate evaluation. The data: by default 1600
shapes images (seed 0) at 128 px, 200 held-out images (seed 1); with ``--set NAME[:N]`` a *tune* set
of the learnability benchmark (benchmarks/learnability; the held-out sets are refused) at its input
size, its first ``N`` training images (default all) and its whole val split. Appends the COCO AP /
AP50 to ``runs/recipe_trials/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scaledet.engine import TrainConfig
from scaledet.engine.run import train_from_config

OUT = Path("runs/recipe_trials")


def tune_data(spec: str) -> tuple[str, str, int, str]:
    """``(train json, val json, input size, label)`` of ``NAME[:N]``, a tune set of the learnability benchmark."""
    from benchmarks.learnability import datasets

    name, _, count = spec.partition(":")
    if datasets.role(name) != "tune":
        raise SystemExit(f"--set {name}: only the tune sets {datasets.TUNE_SETS} may choose defaults")
    num_train = int(count) if count else None
    root = datasets.DATA_ROOT / "tune_subsets" if num_train else None
    folder = datasets.prepare(name, root=root, num_train=num_train)
    return str(folder / "train.json"), str(folder / "val.json"), datasets.spec(name).input_size, spec


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default=None, help="NAME[:N]: a learnability tune set, its first N training images")
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("changes", nargs="*", help="key=JSON TrainConfig fields")
    args = parser.parse_args(argv)
    changes = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.changes)}
    if args.set is None:
        from scaledet.data import shapes_split

        train_source, val_source, size, data = "shapes:train", "shapes:val", 128, "shapes"
        train = shapes_split("train", num_images=1600, image_size=size)
        val = shapes_split("val", num_images=200, image_size=size)
    else:
        (train_source, val_source, size, data), train, val = tune_data(args.set), None, None
    config = TrainConfig.for_model(changes.pop("model", "efficientdet_d0"), train=train_source, val=val_source,
                                   image_size=size, max_steps=args.steps, out=str(OUT / args.name), progress=False,
                                   eval_every=0, threads=1, **changes)
    start = time.time()
    metrics = train_from_config(config, train, val)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as handle:
        handle.write(json.dumps({"name": args.name, "data": data, "steps": args.steps, **changes,
                                 "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                                 "wall_s": round(time.time() - start)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
