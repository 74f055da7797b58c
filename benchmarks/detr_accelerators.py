"""Plain DETR with and without its training accelerators, same CPU minutes, several seeds.

Trains the small from-scratch DETR of ``benchmarks/detr_shapes.yaml`` (ResNet-18 with BatchNorm,
2 + 3 transformer layers, 20 queries) once per arm, seed and set, each run a ``scaledet train``
subprocess with the same wall-clock budget, one after the other, and scores it with COCO AP on
the set's held-out val split. Arms (``--arms``; the accelerator settings are
:data:`scaledet.models.detr.recipes.ACCELERATORS` unless ``--query-groups`` /
``--denoising-groups`` say otherwise):

* ``plain``: DETR as published (no accelerators);
* ``groups``: Group DETR's query groups only;
* ``denoising``: DN-DETR's query denoising only;
* ``both``: both (what the auto recipe would turn on);
* ``contrastive``: both, with DINO's contrastive denoising negatives.

Sets (``--sets``): ``shapes`` (the built-in data at 128 px, the README's DETR experiment) and the
learnability sets (``benchmarks/learnability``, built on first use from scikit-image's images;
the held-out ``fewshot`` by default: large objects, 4 classes, so a from-scratch DETR learns something
in 15 minutes, where on ``wide`` even EfficientDet-D0 reaches only AP 0.02 in 8), at their own image size.

Prints a table (AP and AP50 mean +- std over seeds, steps) and writes it to ``--json`` (default
``benchmarks/results/detr_accelerators.json``) after every run, so an interrupted benchmark keeps
what it measured; ``--reuse`` keeps the runs an earlier invocation wrote to the same ``--json`` with
the same settings (minutes, image size, accelerator settings, base config) and trains only the missing
(set, arm, seed) runs, so a long comparison can be spread over sessions (each run records its own
processor and date). Run folders: ``runs/detr_accelerators/<set>/<arm>_seed<K>/``.

    python benchmarks/detr_accelerators.py                                # shapes + fewshot, plain vs both, 3 seeds x 15 min
    python benchmarks/detr_accelerators.py --sets shapes --arms plain groups denoising both --minutes 15
    python benchmarks/detr_accelerators.py --sets scenes --image-size 128  # scenes at half its side: ~3x the steps
    python benchmarks/detr_accelerators.py --sets scenes --image-size 128 --minutes 30 --seeds 0 1 2 --reuse --json J
    python benchmarks/detr_accelerators.py --quick                         # smoke test: 2 steps per run, tiny sets

Cost: sets x arms x seeds x minutes (default 2 x 2 x 3 x 15 = 3 hours) plus evaluation. Time it on
an idle machine: ``--threads`` sets OMP / torch threads (default: the trainer's choice).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.learnability import datasets  # noqa: E402
from benchmarks.machine import processor_info  # noqa: E402
from scaledet.models.detr.recipes import ACCELERATORS  # noqa: E402

BASE_CONFIG = REPO / "benchmarks" / "detr_shapes.yaml"
ARMS = ("plain", "groups", "denoising", "both", "contrastive")
#: the size fields detr_shapes.yaml fixes for 128 px shapes; other sets derive them from their image size
SHAPES_SIZE_FIELDS = ("max_size", "train_min_sizes")


def arm_overrides(arm: str, query_groups: int, denoising_groups: int) -> dict:
    """The model overrides of ``arm`` (see the module docstring)."""
    groups, denoising = {"query_groups": query_groups}, {"denoising_groups": denoising_groups}
    no_groups, no_denoising = {"query_groups": 1}, {"denoising_groups": 0}  # explicit: the recipe may turn them on
    return {"plain": {**no_groups, **no_denoising}, "groups": {**groups, **no_denoising},
            "denoising": {**no_groups, **denoising}, "both": {**groups, **denoising},
            "contrastive": {**groups, **denoising, "denoising_contrastive": True}}[arm]


def set_config(name: str, quick: bool, image_size: int | None = None) -> dict:
    """Training config fields of set ``name``: data, image size and the base config's model
    overrides (for learnability sets without the 128 px size fields: DETR derives its training
    sizes from the shorter side, its cap is the longer side). ``image_size`` (learnability sets only)
    trains and evaluates at that shorter side instead of the set's own, the cap scaled with it."""
    base = yaml.safe_load(BASE_CONFIG.read_text())
    config = {key: base[key] for key in ("model", "model_overrides", "batch_size", "lr", "backbone_lr")}
    config["eval_every"] = 0
    if name == "shapes":
        options = dict(base.get("data_options", {}))
        if quick:
            options.update(num_images=8)
        return {**config, "train": base["train"], "val": base["val"], "data_options": options,
                "image_size": base["image_size"]}
    spec = datasets.spec(name)
    root = datasets.DATA_ROOT / "quick" if quick else None
    folder = datasets.prepare(name, root, **({"num_train": 8, "num_val": 4} if quick else {}))
    overrides = {key: value for key, value in config["model_overrides"].items() if key not in SHAPES_SIZE_FIELDS}
    shorter, longer = min(spec.width, spec.height), max(spec.width, spec.height)
    size = image_size or shorter
    overrides["max_size"] = round(longer * size / shorter)
    return {**config, "model_overrides": overrides, "train": str(folder / "train.json"),
            "val": str(folder / "val.json"), "image_size": size}


def run_one(config: dict, out: Path, minutes: float, seed: int, threads: int | None, max_steps: int | None) -> dict:
    """One ``scaledet train`` subprocess; its AP, AP50 and steps (``None`` when it failed)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "scaledet", "train", "--config", str(config_path), "--max-minutes",
               f"{minutes:g}", "--seed", str(seed), "--out", str(out), "--no-progress"]
    if max_steps:
        command += ["--max-steps", str(max_steps)]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        command += ["--threads", str(threads)]
    start = time.monotonic()
    with open(out / "train.log", "w", encoding="utf-8") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, check=False)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if completed.returncode == 0 and metrics_path.exists() else {}
    if not metrics:
        print(f"  failed (exit {completed.returncode}), see {out / 'train.log'}", file=sys.stderr)
    return {"AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "steps": metrics.get("steps"),
            "wall_s": round(time.monotonic() - start, 1), "returncode": completed.returncode}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (set, arm): AP / AP50 mean and std over the seeds that finished, mean steps."""
    rows = []
    for key in dict.fromkeys((run["set"], run["arm"]) for run in runs):
        done = [run for run in runs if (run["set"], run["arm"]) == key and run["AP"] is not None]
        ap, ap_std = _mean_std([run["AP"] for run in done])
        ap50, ap50_std = _mean_std([run["AP50"] for run in done])
        steps, _ = _mean_std([run["steps"] for run in done])
        rows.append({"set": key[0], "arm": key[1], "seeds": len(done), "AP": ap, "AP_std": ap_std,
                     "AP50": ap50, "AP50_std": ap50_std, "steps": steps})
    for row in rows:  # the margin over plain DETR against the larger seed spread of the two
        plain = next((r for r in rows if r["set"] == row["set"] and r["arm"] == "plain"), None)
        if plain and row["arm"] != "plain" and row["AP"] is not None and plain["AP"] is not None:
            row["AP_gain"] = row["AP"] - plain["AP"]
            if min(row["seeds"], plain["seeds"]) > 1:  # a spread needs two seeds
                row["beats_plain_beyond_spread"] = row["AP_gain"] > max(row["AP_std"], plain["AP_std"])
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(mean, std):
        return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"

    lines = ["| set | arm | seeds | AP | AP50 | steps | AP gain vs plain | beyond seed spread |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        gain = f"{row['AP_gain']:+.3f}" if "AP_gain" in row else ""
        beyond = {True: "yes", False: "no"}.get(row.get("beats_plain_beyond_spread"), "")
        steps = "-" if row["steps"] is None else f"{row['steps']:.0f}"
        lines.append(f"| {row['set']} | {row['arm']} | {row['seeds']} | {cell(row['AP'], row['AP_std'])} | "
                     f"{cell(row['AP50'], row['AP50_std'])} | {steps} | {gain} | {beyond} |")
    return "\n".join(lines)


#: what must match for ``--reuse`` to keep an earlier record's runs
REUSE_KEYS = ("minutes", "query_groups", "denoising_groups", "base_config", "image_size")


def reusable_runs(path: Path, record: dict) -> list[dict]:
    """The finished runs of the record at ``path`` when its settings (:data:`REUSE_KEYS`) equal
    ``record``'s; exits with a one-line message when they differ."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    differ = [key for key in REUSE_KEYS if earlier.get(key) != record[key]]
    if differ:
        sys.exit(f"--reuse: {path} was measured with other settings ("
                 + ", ".join(f"{key} {earlier.get(key)!r} vs {record[key]!r}" for key in differ)
                 + "); pass another --json or the same settings")
    return [run for run in earlier.get("runs", []) if run.get("AP") is not None]


def write_record(record: dict, path: Path) -> None:
    """``record`` with its summary and the load average now, as JSON at ``path``."""
    record["summary"] = summarise(record["runs"])
    record["load_average_now"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["shapes", "fewshot"],
                        help="shapes and / or learnability sets (%s)" % ", ".join(datasets.SET_NAMES))
    parser.add_argument("--arms", nargs="+", default=["plain", "both"], choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall time per run")
    parser.add_argument("--query-groups", type=int, default=ACCELERATORS["query_groups"])
    parser.add_argument("--denoising-groups", type=int, default=ACCELERATORS["denoising_groups"])
    parser.add_argument("--threads", type=int, default=None, help="OMP / torch threads per run")
    parser.add_argument("--image-size", type=int, default=None,
                        help="learnability sets: train and evaluate at this shorter side (default: the set's own)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "detr_accelerators.json"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "detr_accelerators"), help="run folders")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs already in --json (same settings) and train only the missing ones")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sets, 2 steps per run, seed 0, results under runs/ only")
    args = parser.parse_args(argv)
    if args.image_size and "shapes" in args.sets:
        parser.error("--image-size is for the learnability sets (shapes has its own 128 px config)")
    max_steps = None
    if args.quick:
        args.seeds, args.minutes, max_steps = args.seeds[:1], min(args.minutes, 1.0), 2
        args.runs = str(Path(args.runs).with_name("detr_accelerators_quick"))
        args.json = str(Path(args.runs) / "detr_accelerators.json")
    arguments = argv if argv is not None else sys.argv[1:]
    record = {"command": "python benchmarks/detr_accelerators.py " + " ".join(arguments),
              "minutes": args.minutes, "query_groups": args.query_groups, "denoising_groups": args.denoising_groups,
              "base_config": str(BASE_CONFIG.relative_to(REPO)), "machine": processor_info(),
              "cpu_count": os.cpu_count(), "threads": args.threads, "image_size": args.image_size,
              "load_average_start": os.getloadavg(), "runs": []}
    if args.reuse:
        record["runs"] = reusable_runs(Path(args.json), record)
    done = {(run["set"], run["arm"], run["seed"]) for run in record["runs"]}
    processor = f"{record['machine']['processor']} [{record['machine']['kind']}]"
    for name in args.sets:
        base = set_config(name, args.quick, args.image_size)
        for seed in args.seeds:
            for arm in args.arms:
                config = {**base, "model_overrides": {**base["model_overrides"],
                                                      **arm_overrides(arm, args.query_groups, args.denoising_groups)}}
                out = Path(args.runs) / name / f"{arm}_seed{seed}"
                if (name, arm, seed) in done:
                    print(f"{name} {arm} seed {seed}: kept from {args.json}", flush=True)
                    continue
                print(f"{name} {arm} seed {seed}: {args.minutes:g} min -> {out}", flush=True)
                result = run_one(config, out, args.minutes, seed, args.threads, max_steps)
                record["runs"].append({"set": name, "arm": arm, "seed": seed, **result, "processor": processor,
                                       "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
                write_record(record, Path(args.json))
    write_record(record, Path(args.json))  # also when every run was kept
    print(format_table(record["summary"]))
    print(f"wrote {args.json}")
    return 0 if all(run["returncode"] == 0 for run in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
