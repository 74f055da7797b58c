"""Training throughput: scaledet's training step against effdet 0.4.1's ``DetBenchTrain``, same run.

    python benchmarks/train_speed.py [--sizes 256 384] [--batch 8] [--steps 6] [--threads 2]

For each input size: a from-scratch EfficientDet-D0 (10 classes) in both projects, the same batch of
8 images with 1-4 boxes each, timed alternately (interleaved, median of ``--steps`` after 2 warm-up
steps): forward + loss (anchor labelling included) + backward + optimizer step. scaledet runs as
its trainer runs it on a CPU by default (channels_last); effdet as its ``train.py`` runs it (its
default NCHW). Also times scaledet's data pipeline (decode + augmentation of the training set's
images, first epoch and cached). Prints a markdown table; writes
``benchmarks/results/train_speed.json`` and ``.md`` with the processor and its ISA flags.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.learnability.effdet_baseline import effdet_targets  # noqa: E402
from benchmarks.learnability.run import machine_info  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from benchmarks.record import write_results  # noqa: E402
from tests.fixtures import RectangleDataset  # noqa: E402

NUM_CLASSES = 10


def make_batch(size: int, batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        count = int(torch.randint(1, 5, (), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * size * 0.7
        wh = 16 + torch.rand(count, 2, generator=generator) * size * 0.3
        images.append(torch.rand(3, size, size, generator=generator))
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(0, NUM_CLASSES, (count,), generator=generator)})
    return images, targets


def scaledet_step(size: int, images, targets):
    import scaledet
    from scaledet.engine import Trainer, TrainConfig

    model = scaledet.create_model("efficientdet_d0", num_classes=NUM_CLASSES, image_size=size)
    config = TrainConfig.for_model("efficientdet_d0", max_steps=1, out="/tmp/scaledet-train-speed", progress=False,
                                   threads=torch.get_num_threads(), image_cache_gb=0)
    trainer = Trainer(config, model, RectangleDataset(config.batch_size), None)  # model prepared as the trainer does
    model, optimizer = trainer.model.train(), trainer.optimizer

    def step():
        losses = model(images, targets)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if trainer.ema is not None:
            trainer.ema.update_parameters(model)

    return step


def effdet_step(size: int, images, targets):
    from benchmarks.learnability.effdet_baseline import _normalise, create_bench

    bench = create_bench(NUM_CLASSES, size).train()
    optimizer = torch.optim.SGD(bench.parameters(), lr=1e-3, momentum=0.9)  # as scaledet's default
    batch, target = _normalise(images), effdet_targets(targets)

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = bench(batch, target)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def data_pipeline(size: int, count: int = 32) -> dict[str, float]:
    """Images/s of the training set's decode + augmentation (shapes written as PNG files)."""
    import tempfile

    from scaledet.data import open_dataset, train_transforms, write_shapes_coco
    from scaledet.engine.recipe import augmentation_for

    with tempfile.TemporaryDirectory() as folder:
        path = write_shapes_coco(Path(folder) / "coco", "train", num_images=count, image_size=size)
        dataset = open_dataset(path, progress=False)
        dataset.transforms = train_transforms((size, size), **augmentation_for(0.0))
        dataset.cache_images(2**30)
        rates = []
        for _ in range(2):  # first pass decodes, second is served from the cache
            start = time.perf_counter()
            for index in range(count):
                dataset[index]
            rates.append(count / (time.perf_counter() - start))
    return {"decode_and_augment_img_s": round(rates[0], 1), "cached_and_augment_img_s": round(rates[1], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per engine (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_speed"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    rows = []
    for size in args.sizes:
        images, targets = make_batch(size, args.batch)
        engines = {"effdet DetBenchTrain": effdet_step(size, images, targets),
                   "scaledet (trainer defaults)": scaledet_step(size, images, targets)}
        times: dict[str, list[float]] = {name: [] for name in engines}
        for repeat in range(args.steps + 2):
            for name, step in engines.items():
                start = time.perf_counter()
                step()
                if repeat >= 2:
                    times[name].append(time.perf_counter() - start)
        reference = statistics.median(times["effdet DetBenchTrain"])
        for name, values in times.items():
            median = statistics.median(values)
            rows.append({"size": size, "batch": args.batch, "engine": name, "median_step_s": round(median, 3),
                         "img_s": round(args.batch / median, 2), "x_effdet_img_s": round(reference / median, 2)})
            print(f"{size}px {name}: {median:.3f} s/step, {args.batch / median:.2f} img/s", flush=True)
        rows[-1].update(data_pipeline(size))
    lines = [f"Training throughput, EfficientDet-D0 from scratch, batch {args.batch}, {args.threads} threads, "
             f"{machine['date_utc']}, {describe(machine)}, torch {machine['torch']}.", "",
             "| input | engine | s / step | img/s | x effdet img/s | scaledet data: decode+augment / cached img/s |",
             "|---|---|---:|---:|---:|---|"]
    for row in rows:
        data = (f"{row['decode_and_augment_img_s']} / {row['cached_and_augment_img_s']}"
                if "decode_and_augment_img_s" in row else "")
        lines.append(f"| {row['size']} | {row['engine']} | {row['median_step_s']} | {row['img_s']} | "
                     f"{row['x_effdet_img_s']} | {data} |")
    table = "\n".join(lines)
    print(table)
    write_results(Path(args.out), {"machine": machine, "rows": rows}, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
