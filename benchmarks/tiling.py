"""Tiling benchmarks: tile throughput, tiled vs resized training + prediction, and the docs picture.

    python -m benchmarks.tiling throughput [--model efficientdet_d0] [--size 2048] [--tile 512] [--batch-sizes 1 4 8]
    python -m benchmarks.tiling learnability [--seeds 0 1 2] [--minutes 8] [--tile 256] [--quick]
    python -m benchmarks.tiling picture [--out docs/images/tiling.png]

* ``throughput``: tiles per second of :func:`scaledet.predict_tiled` on one large image (random
  weights; each tile gives at most the model's 100 detections) with ``batch_size`` tiles per call, the merge
  included; a table (``.md``) and ``.json`` under ``benchmarks/results/tiling_throughput``.
* ``learnability``: on the ``aerial`` set of :mod:`benchmarks.learnability.datasets` (1024 px
  images, 100-300 objects of 8-20 px), the same model (EfficientDet-D0 from scratch, detections
  capped at 1000 per image in both) trained for the same wall-clock minutes per seed, twice:
  **resize**: ``scaledet train --image-size 512`` (the image is resized to the input, prediction
  too); **tiled**: ``scaledet train --tile 256`` (native-resolution crops; validation through
  tiles). AP / AP50 are each run's final validation (``metrics.json``, the only one: ``eval_every: 0``)
  on the original images.
  Results under ``benchmarks/results/tiling_learnability``; timings and APs are evidence only when
  run on an idle machine (``--quick`` is a smoke run on 6 tiny images).
* ``picture``: ``docs/images/tiling.png``: an ``aerial`` image with the tile grid, the pieces of
  objects each tile sees (an oracle detector: the ground truth cut to each tile) and what the
  merge of :mod:`scaledet.inference.tiling` keeps; ``--weights`` draws a trained model's detections instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.learnability import datasets  # noqa: E402
from benchmarks.learnability.run import (  # noqa: E402
    QUICK_DIR, REPO, RESULTS, _run, _scaledet_command, _tail, machine_info, machine_summary,
)
from benchmarks.record import results_file, write_results  # noqa: E402

SET_NAME = "aerial"
#: both paths keep up to this many detections per image (the images hold up to 300 objects)
MAX_DETECTIONS = 1000


# ---- throughput ------------------------------------------------------------------------------


def throughput(model_name: str, size: int, tile: int, overlap: float, batch_sizes: Sequence[int], repeats: int,
               threads: int | None) -> dict:
    """``{"rows": [{batch_size, tiles, seconds (median of repeats), tiles_per_s}], ...}``."""
    import scaledet
    from scaledet.data.tiles import tile_grid

    if threads:
        torch.set_num_threads(threads)
    model = scaledet.create_model(model_name, num_classes=2, image_size=tile).eval()
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    tiles = len(tile_grid(size, size, tile, overlap))
    scaledet.predict_tiled(model, image[:, :tile, : 2 * tile], tile=tile, overlap=overlap)  # warm-up
    rows = []
    for batch_size in batch_sizes:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            scaledet.predict_tiled(model, image, tile=tile, overlap=overlap, batch_size=batch_size)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"batch_size": batch_size, "tiles": tiles, "seconds": round(seconds, 3),
                     "tiles_per_s": round(tiles / seconds, 2)})
        print(f"batch {batch_size}: {tiles} tiles in {seconds:.2f} s = {tiles / seconds:.2f} tiles/s", flush=True)
    base = rows[0]["tiles_per_s"]
    for row in rows:
        row["vs_first"] = round(row["tiles_per_s"] / base, 2)
    return {"benchmark": "tiling_throughput", "model": model_name, "image": f"{size}x{size}", "tile": tile,
            "overlap": overlap, "repeats": repeats, "machine": machine_info(threads), "rows": rows}


def throughput_markdown(record: dict) -> str:
    lines = [f"# Tiled prediction throughput: {record['model']}, {record['image']} image, {record['tile']} px tiles, "
             f"overlap {record['overlap']}", "",
             f"{record['machine'].get('processor', '')}, torch {record['machine']['torch']}, "
             f"{record['machine']['threads']} threads; median of {record['repeats']}; merge included", "",
             "| tiles per call | tiles | seconds | tiles/s | vs first row |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch_size']} | {r['tiles']} | {r['seconds']} | {r['tiles_per_s']} | {r['vs_first']} |"
              for r in record["rows"]]
    return "\n".join(lines) + "\n"


# ---- tiled vs resize learnability ------------------------------------------------------------


def train_run(folder: Path, path: str, tile: int, image_size: int, minutes: float, seed: int, out: Path,
              threads: int | None, max_steps: int | None = None) -> dict:
    """One ``scaledet train`` of the ``path`` ("resize" or "tiled"); AP / AP50 / steps of its metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    # evaluated once, at the end: periodic tiled validation would take more of the budget than resized validation
    config.write_text(f"model_overrides:\n  max_detections: {MAX_DETECTIONS}\neval_every: 0\n")
    command = _scaledet_command() + [
        "train", "--config", str(config), "--train", str(folder / "train.json"), "--val", str(folder / "val.json"),
        "--max-minutes", f"{minutes:g}", "--seed", str(seed), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    command += ["--tile", str(tile)] if path == "tiled" else ["--image-size", str(image_size)]
    command += ["--max-steps", str(max_steps)] if max_steps else []
    code, wall = _run(command, out / "stdout.log", threads)
    shown = "scaledet " + " ".join(command[len(_scaledet_command()):])
    metrics_path = out / "metrics.json"
    if code != 0 or not metrics_path.exists():
        raise RuntimeError(f"scaledet failed (exit {code}): {shown}\n{_tail(out / 'stdout.log')}")
    metrics = json.loads(metrics_path.read_text())
    return {"path": path, "seed": seed, "AP": metrics.get("AP"), "AP50": metrics.get("AP50"),
            "APs": metrics.get("APs"), "steps": metrics.get("steps"), "wall_s": round(wall, 1),
            "train_wall_s": metrics.get("wall_time_s"), "command": shown}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> dict:
    """Per path: mean / std / min / max of AP and AP50 over seeds."""
    out = {}
    for path in ("resize", "tiled"):
        mine = [run for run in runs if run["path"] == path]
        for key in ("AP", "AP50"):
            values = [run[key] for run in mine if run[key] is not None]
            mean, std = _mean_std(values)
            out[f"{path}_{key}"] = {"mean": mean, "std": std, "min": min(values, default=None),
                                    "max": max(values, default=None), "n": len(values)}
    return out


def learnability_markdown(record: dict) -> str:
    info, machine = record["describe"], record["machine"]
    lines = [f"# Tiled vs resize on `{SET_NAME}` ({info['image_size']}, {info['num_train']} train / {info['num_val']} "
             f"val images, {info['mean_objects_per_image_train']:.0f} objects per image, median box "
             f"{info['median_box_size_train']:.1f} px)", "",
             f"EfficientDet-D0 from scratch, {record['minutes']:g} min training per run, seeds {record['seeds']}; "
             f"resize: `--image-size {record['image_size']}`; tiled: `--tile {record['tile']}`. "
             f"{'QUICK SMOKE RUN: not evidence. ' if record['quick'] else ''}", "",
             f"Machine: {machine_summary(machine)}, started {machine['date_utc']} at load {machine['load_average_start']}.",
             "",
             "| path | seed | AP | AP50 | steps |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['seed']} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['steps']} |" for r in record["runs"]]
    summary = record.get("summary", {})
    lines += ["", "| path | AP mean ± std (min-max) | AP50 mean ± std |", "|---|---|---|"]
    for path in ("resize", "tiled"):
        ap, ap50 = summary.get(f"{path}_AP", {}), summary.get(f"{path}_AP50", {})
        if ap.get("mean") is not None:
            lines.append(f"| {path} | {ap['mean']:.4f} ± {ap['std']:.4f} ({ap['min']:.4f}-{ap['max']:.4f}) "
                         f"| {ap50['mean']:.4f} ± {ap50['std']:.4f} |")
    return "\n".join(lines) + "\n"


def learnability(seeds: Sequence[int], minutes: float, tile: int, image_size: int | None, quick: bool,
                 threads: int | None, out: Path, runs_dir: Path) -> dict:
    root = QUICK_DIR if quick else None
    folder = datasets.prepare(SET_NAME, root, num_train=6 if quick else None, num_val=2 if quick else None)
    info = datasets.describe(SET_NAME, folder.parent if quick else None)
    image_size = image_size or datasets.spec(SET_NAME).input_size
    record = {"benchmark": "tiling_learnability", "quick": quick, "set": SET_NAME, "describe": info,
              "seeds": list(seeds), "minutes": minutes, "tile": tile, "image_size": image_size, "machine": machine_info(threads), "runs": []}
    for seed in seeds:
        for path in ("resize", "tiled"):
            print(f"[{SET_NAME}] {path} seed {seed}: {minutes:g} min ...", flush=True)
            result = train_run(folder, path, tile, image_size, minutes, seed, runs_dir / f"{path}_seed{seed}", threads,
                               max_steps=2 if quick else None)
            print(f"[{SET_NAME}] {path} seed {seed}: AP {result['AP']:.4f} AP50 {result['AP50']:.4f} "
                  f"steps {result['steps']}", flush=True)
            record["runs"].append(result)
            record["summary"] = summarise(record["runs"])
            write_results(out, record, learnability_markdown(record))
    return record


# ---- picture ---------------------------------------------------------------------------------


class OracleDetector:
    """Stands in for a perfect detector in the picture: for the i-th tile it is called on, the
    ground-truth boxes cut to window i of ``windows`` (what that tile shows of each object)."""

    class_names = ["object"]

    def __init__(self, boxes: torch.Tensor, windows: torch.Tensor) -> None:
        from scaledet.data.tiles import crop_boxes

        self.pieces, self.cut = [], []  # per window: boxes in tile pixels, and which are cut by the tile's border
        for window in windows:
            piece, kept = crop_boxes(boxes, tuple(window.tolist()), min_visible=1e-6)
            whole = boxes[kept] - window[:2].float().repeat(2)
            self.pieces.append(piece)
            self.cut.append((piece - whole).abs().amax(1) > 0)
        self.calls = 0

    def __call__(self, tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for _ in tiles:
            boxes = self.pieces[self.calls]
            self.calls += 1
            outputs.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                            "labels": torch.zeros(len(boxes), dtype=torch.long)})
        return outputs


def picture(out: Path, weights: str | None, tile: int, overlap: float, crop: tuple[int, int]) -> Path:
    """Draw the picture of docs/tiling.md (see the module doc)."""
    from PIL import Image, ImageDraw

    import scaledet
    from scaledet.data.images import pil_to_float
    from scaledet.data.tiles import tile_grid

    image, objects = datasets.render(SET_NAME, "val", 0)
    image = image.crop((0, 0, *crop))
    boxes = torch.tensor([box for box, _ in objects], dtype=torch.float32).reshape(-1, 4)
    inside = (boxes[:, 2] <= crop[0]) & (boxes[:, 3] <= crop[1])
    boxes = boxes[inside]
    height, width = crop[1], crop[0]
    windows = tile_grid(height, width, tile, overlap)
    if weights:
        model = scaledet.load(weights).eval()
        merged = scaledet.predict_tiled(model, pil_to_float(image), tile=tile, overlap=overlap)
        merged = {key: value[merged["scores"] >= 0.3] for key, value in merged.items()}
        pieces = []
    else:
        oracle = OracleDetector(boxes, windows)
        merged = scaledet.predict_tiled(oracle, pil_to_float(image), tile=tile, overlap=overlap)
        pieces = [(piece + window[:2].float().repeat(2))[cut]
                  for piece, cut, window in zip(oracle.pieces, oracle.cut, windows)]
    scale = 2  # drawn at 2x so that 10-px objects and the lines stay visible
    canvas = image.resize((width * scale, height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    colours = [(255, 215, 0), (0, 200, 255), (255, 60, 220), (255, 140, 0), (255, 255, 255), (70, 90, 255)]
    for index, (x1, y1, x2, y2) in enumerate(windows.tolist()):
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1],
                       outline=colours[index % len(colours)], width=3)
    for x1, y1, x2, y2 in merged["boxes"].tolist():
        draw.rectangle([x1 * scale - 3, y1 * scale - 3, x2 * scale + 3, y2 * scale + 3], outline=(40, 255, 40), width=2)
    for piece in pieces:  # what single tiles see of objects cut by their border: dropped by the merge
        for x1, y1, x2, y2 in piece.tolist():
            draw.rectangle([x1 * scale, y1 * scale, x2 * scale, y2 * scale], outline=(255, 40, 40), width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out}: {len(windows)} tiles of {tile} px (overlap {overlap}), {len(boxes)} objects, "
          f"{len(merged['boxes'])} after the merge")
    return out


# ---- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("throughput", help="tiles/s with batching vs one by one")
    speed.add_argument("--model", default="efficientdet_d0")
    speed.add_argument("--size", type=int, default=2048, help="square image side (default 2048)")
    speed.add_argument("--tile", type=int, default=512)
    speed.add_argument("--overlap", type=float, default=0.2)
    speed.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--threads", type=int, default=None)
    speed.add_argument("--out", default=str(RESULTS / "tiling_throughput"), help="results path without suffix")
    learn = commands.add_parser("learnability", help="AP of tiled vs resized training + prediction, 3 seeds")
    learn.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --quick)")
    learn.add_argument("--minutes", type=float, default=None,
                       help="training budget per run (default 8; 0.3 with --quick)")
    learn.add_argument("--tile", type=int, default=256)
    learn.add_argument("--image-size", type=int, default=None, help="resize path input (default: the set's, 512)")
    learn.add_argument("--threads", type=int, default=None)
    learn.add_argument("--quick", action="store_true", help="smoke run: 6 tiny images, 2 steps, seed 0")
    learn.add_argument("--out", default=None, help="results path without suffix (default "
                       "benchmarks/results/tiling_learnability; with --quick under the data cache)")
    learn.add_argument("--runs", default=None, help="run folders (default runs/tiling[_quick])")
    draw = commands.add_parser("picture", help="docs/images/tiling.png")
    draw.add_argument("--out", default=str(REPO / "docs" / "images" / "tiling.png"))
    draw.add_argument("--weights", default=None, help="draw this model's detections instead of the oracle's pieces")
    draw.add_argument("--tile", type=int, default=192)
    draw.add_argument("--overlap", type=float, default=0.25)
    draw.add_argument("--crop", type=int, nargs=2, default=[480, 336], metavar=("W", "H"),
                      help="the part of the 1024 px image drawn (default: 3 x 2 tiles exactly)")
    args = parser.parse_args(argv)

    if args.command == "throughput":
        record = throughput(args.model, args.size, args.tile, args.overlap, args.batch_sizes, args.repeats,
                            args.threads)
        table = throughput_markdown(record)
        write_results(Path(args.out), record, table)
        print(table)
    elif args.command == "learnability":
        seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
        minutes = args.minutes if args.minutes is not None else (0.3 if args.quick else 8.0)
        out = Path(args.out) if args.out else (QUICK_DIR / "tiling_learnability" if args.quick
                                               else RESULTS / "tiling_learnability")
        runs = Path(args.runs) if args.runs else REPO / "runs" / ("tiling_quick" if args.quick else "tiling")
        record = learnability(seeds, minutes, args.tile, args.image_size, args.quick, args.threads, out, runs)
        print(learnability_markdown(record))
        print(f"wrote {results_file(out, '.json')} and {results_file(out, '.md')}")
    else:
        picture(Path(args.out), args.weights, args.tile, args.overlap, tuple(args.crop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
