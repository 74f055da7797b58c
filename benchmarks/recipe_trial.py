"""One recipe trial on the shapes data, as used to choose the default recipe (docs/training.md).

    python benchmarks/recipe_trial.py NAME STEPS [key=JSON ...]
    python benchmarks/recipe_trial.py adamw5e3 300 optimizer='"adamw"' lr=0.005

EfficientDet-D0 at 128 px on 1600 shapes images (seed 0), 200 held-out images (seed 1), a fixed
number of optimizer steps (so the result does not depend on the machine's speed), the default
recipe with the given ``TrainConfig`` fields changed, 1 thread. Appends the COCO AP / AP50 to
``runs/recipe_trials/results.jsonl``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from scaledet.data import shapes_split
from scaledet.engine import TrainConfig
from scaledet.engine.run import train_from_config

OUT = Path("runs/recipe_trials")


def main(argv: list[str]) -> int:
    name, steps = argv[0], int(argv[1])
    changes = {key: json.loads(value) for key, value in (item.split("=", 1) for item in argv[2:])}
    config = TrainConfig.for_model(changes.pop("model", "efficientdet_d0"), train="shapes:train", val="shapes:val",
                                   image_size=128, max_steps=steps, out=str(OUT / name), progress=False,
                                   eval_every=0, threads=1, **changes)
    train = shapes_split("train", num_images=1600, image_size=128)
    val = shapes_split("val", num_images=200, image_size=128)
    start = time.time()
    metrics = train_from_config(config, train, val)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as handle:
        handle.write(json.dumps({"name": name, "steps": steps, **changes, "AP": round(metrics["AP"], 4),
                                 "AP50": round(metrics["AP50"], 4), "wall_s": round(time.time() - start)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
