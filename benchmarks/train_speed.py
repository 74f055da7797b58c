"""Training throughput: scaledet's training step against effdet 0.4.1's ``DetBenchTrain``, same run.

    python benchmarks/train_speed.py [--sizes 256 384] [--batch 8] [--steps 6] [--threads 2] [--processes 2]

For each input size: a from-scratch EfficientDet-D0 (10 classes) in both projects, the same batch of
8 images with 1-4 boxes each, timed alternately (interleaved, median of ``--steps`` after 2 warm-up
steps): forward + loss (anchor labelling included) + backward + optimizer step. scaledet runs as
its trainer runs it on a CPU by default (channels_last); effdet as its ``train.py`` runs it (its
default NCHW). Also times scaledet's data pipeline (decode + augmentation of the training set's
images, first epoch and cached). With ``--processes K``, also both projects as K processes of
one thread each under DistributedDataParallel (gloo), each process training on ``batch / K`` of
the same images (the same global batch), timed after the in-process pair (not interleaved) and
given relative to the same run's in-process effdet. Prints a markdown table; writes
``benchmarks/results/train_speed.json`` and ``.md`` with the processor and its ISA flags.

Allocator: scaledet's trainer tells glibc's malloc to keep freed memory (``keep_freed_memory``,
process-wide), so the in-process effdet runs with that setting too (the conservative ratio). Each
size also times effdet alone in a fresh process with glibc's defaults, as its ``train.py`` runs
(not interleaved: right after the pair); the last column is scaledet against that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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
from scaledet.engine.distributed import free_port  # noqa: E402
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
    from scaledet.engine import distributed as dist_utils

    model = scaledet.create_model("efficientdet_d0", num_classes=NUM_CLASSES, image_size=size)
    out = tempfile.mkdtemp(prefix="scaledet-train-speed-")  # one per trainer: each holds its folder's lock
    config = TrainConfig.for_model("efficientdet_d0", max_steps=1, out=out, progress=False,
                                   threads=torch.get_num_threads(), image_cache_gb=0)
    # the model prepared as the trainer does (wrapped in DDP under a process group)
    trainer = Trainer(config, model, RectangleDataset(config.batch_size * dist_utils.world_size()), None)
    model, optimizer = trainer.model.train(), trainer.optimizer
    forward = trainer.ddp_model

    def step():
        losses = forward(images, targets)
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
    forward = torch.nn.parallel.DistributedDataParallel(bench) if torch.distributed.is_initialized() else bench

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = forward(batch, target)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _ddp_worker(rank: int, world: int, port: int, engine: str, size: int, batch: int, steps: int, out) -> None:
    """One DDP process (1 thread): its ``batch / world`` share of :func:`make_batch`'s images;
    puts the median step time (steps fenced by barriers, so it is the slowest rank's) on ``out``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    is_effdet = engine.startswith("effdet")
    if is_effdet:  # scaledet's Trainer starts the process group itself
        torch.distributed.init_process_group("gloo")
    images, targets = make_batch(size, batch)
    share = batch // world
    images, targets = images[rank * share:(rank + 1) * share], targets[rank * share:(rank + 1) * share]
    step = (effdet_step if is_effdet else scaledet_step)(size, images, targets)
    times = []
    for repeat in range(steps + 2):
        torch.distributed.barrier()
        start = time.perf_counter()
        step()
        torch.distributed.barrier()
        if repeat >= 2:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times))
    torch.distributed.destroy_process_group()


def ddp_step_time(engine: str, size: int, batch: int, steps: int, processes: int) -> float:
    """Median seconds per step of ``engine`` ("effdet..." or "scaledet...") as ``processes``
    one-thread DDP processes sharing a global batch of ``batch`` images."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    port = free_port()
    workers = [context.Process(target=_ddp_worker, args=(rank, processes, port, engine, size, batch, steps, out))
               for rank in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if any(worker.exitcode for worker in workers):
        raise RuntimeError(f"a DDP worker of {engine} failed (exit codes {[w.exitcode for w in workers]})")
    return out.get()


def data_pipeline(size: int, count: int = 32) -> dict[str, float]:
    """Images/s of the training set's decode + augmentation (shapes written as PNG files)."""
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


def timed_steps(step, steps: int) -> list[float]:
    """Seconds of ``steps`` calls of ``step`` after 2 untimed warm-up calls."""
    times = []
    for repeat in range(steps + 2):
        start = time.perf_counter()
        step()
        if repeat >= 2:
            times.append(time.perf_counter() - start)
    return times


def effdet_with_default_allocator(size: int, batch: int, steps: int, threads: int) -> float:
    """effdet's median step time in a fresh process that never sets the allocator (glibc defaults)."""
    command = [sys.executable, __file__, "--effdet-alone", "--sizes", str(size), "--batch", str(batch),
               "--steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per engine (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=0,
                        help="also time both projects as this many 1-thread DDP processes (0: not)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_speed"))
    parser.add_argument("--effdet-alone", action="store_true", help=argparse.SUPPRESS)  # the fresh-process effdet
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.effdet_alone:
        images, targets = make_batch(args.sizes[0], args.batch)
        print(statistics.median(timed_steps(effdet_step(args.sizes[0], images, targets), args.steps)))
        return 0
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
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference = medians["effdet DetBenchTrain"]
        alone = effdet_with_default_allocator(size, args.batch, args.steps, args.threads)
        medians["effdet DetBenchTrain, glibc defaults (fresh process, as its train.py runs)"] = alone
        for name, median in medians.items():
            rows.append({"size": size, "batch": args.batch, "engine": name, "median_step_s": round(median, 3),
                         "img_s": round(args.batch / median, 2), "x_effdet_img_s": round(reference / median, 2),
                         "x_effdet_default_allocator_img_s": round(alone / median, 2)})
            print(f"{size}px {name}: {median:.3f} s/step, {args.batch / median:.2f} img/s", flush=True)
        next(row for row in rows if row["size"] == size and row["engine"].startswith("scaledet")).update(
            data_pipeline(size))
        if args.processes > 1:
            if args.batch % args.processes:
                parser.error(f"--batch {args.batch} does not split over --processes {args.processes}")
            for name in ("effdet DetBenchTrain", "scaledet (trainer defaults)"):
                median = ddp_step_time(name, size, args.batch, args.steps, args.processes)
                label = f"{name}, DDP {args.processes} processes x 1 thread"
                rows.append({"size": size, "batch": args.batch, "engine": label, "median_step_s": round(median, 3),
                             "img_s": round(args.batch / median, 2), "x_effdet_img_s": round(reference / median, 2)})
                print(f"{size}px {label}: {median:.3f} s/step, {args.batch / median:.2f} img/s", flush=True)
    ddp = (f" DDP rows: {args.processes} processes x 1 thread, batch {args.batch // args.processes} each, timed after "
           f"the interleaved in-process pair; x effdet is against the in-process effdet." if args.processes > 1 else "")
    lines = [f"Training throughput, EfficientDet-D0 from scratch, batch {args.batch}, {args.threads} threads, "
             f"{machine['date_utc']}, {describe(machine)}, torch {machine['torch']}.{ddp}", "",
             "| input | engine | s / step | img/s | x effdet img/s (same run) | x effdet img/s (glibc defaults) "
             "| scaledet data: decode+augment / cached img/s |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        data = (f"{row['decode_and_augment_img_s']} / {row['cached_and_augment_img_s']}"
                if "decode_and_augment_img_s" in row else "")
        lines.append(f"| {row['size']} | {row['engine']} | {row['median_step_s']} | {row['img_s']} | "
                     f"{row['x_effdet_img_s']} | {row.get('x_effdet_default_allocator_img_s', '')} | {data} |")
    table = "\n".join(lines)
    print(table)
    write_results(Path(args.out), {"machine": machine, "rows": rows}, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
