"""DETR-family models from scratch on the built-in shapes data, each with its family's default recipe,
the same CPU minutes per run, several seeds, one run after the other.

    python benchmarks/detr_family_shapes.py [--models rtdetr_r18vd] [--seeds 0 1 2] [--minutes 15]

Each run is ``scaledet train --model M --train shapes:train --val shapes:val --image-size S
--max-minutes N --seed K`` (no YAML, no recipe flags: what a user gets), scored by the trainer's
final COCO evaluation on ``shapes:val``. Prints a table (AP / AP50 per seed, mean +- std, steps)
and writes ``--json`` (default ``benchmarks/results/detr_family_shapes.json``) after every run, so
an interrupted benchmark keeps what it measured. Run folders: ``runs/detr_family_shapes/<model>_seed<K>``.
Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.learnability.run import _mean_std, machine_info, machine_summary  # noqa: E402


def train(model: str, seed: int, minutes: float, image_size: int, out: Path) -> dict:
    """One ``scaledet train`` run; its final metrics, steps and wall time."""
    command = [sys.executable, "-m", "scaledet", "train", "--model", model, "--train", "shapes:train",
               "--val", "shapes:val", "--image-size", str(image_size), "--max-minutes", f"{minutes:g}",
               "--seed", str(seed), "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(out / "stdout.log", "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return {"model": model, "seed": seed, "AP": metrics.get("AP"), "AP50": metrics.get("AP50"),
            "steps": metrics.get("steps"), "wall_s": round(time.monotonic() - start, 1),
            "returncode": completed.returncode, "command": "scaledet " + " ".join(command[3:])}


def summary(runs: list[dict]) -> list[dict]:
    rows = []
    for model in dict.fromkeys(run["model"] for run in runs):
        done = [run for run in runs if run["model"] == model and run["AP"] is not None]
        if not done:
            continue
        (ap, ap_std), (ap50, ap50_std) = (_mean_std([r[key] for r in done]) for key in ("AP", "AP50"))
        rows.append({"model": model, "seeds": len(done), "AP_per_seed": [round(r["AP"], 3) for r in done],
                     "AP": ap, "AP_std": ap_std, "AP50": ap50, "AP50_std": ap50_std,
                     "steps": statistics.mean(r["steps"] for r in done)})
    return rows


def markdown(record: dict) -> str:
    lines = [f"DETR family from scratch on shapes, {record['minutes']:g} CPU-minutes per run, default recipe, "
             f"image size {record['image_size']}; {machine_summary(record['machine'])}.", "",
             "| model | AP per seed | AP mean +- std | AP50 mean +- std | steps (mean) |", "|---|---|---|---|---:|"]
    for row in record["summary"]:
        lines.append(f"| {row['model']} | {', '.join(f'{v:.3f}' for v in row['AP_per_seed'])} | "
                     f"{row['AP']:.3f} +- {row['AP_std']:.3f} | {row['AP50']:.3f} +- {row['AP50_std']:.3f} | "
                     f"{row['steps']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rtdetr_r18vd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "detr_family_shapes.json"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "detr_family_shapes"))
    args = parser.parse_args(argv)
    record = {"command": "python benchmarks/detr_family_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "minutes": args.minutes, "image_size": args.image_size, "machine": machine_info(None),
              "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": []}
    for model in args.models:
        for seed in args.seeds:
            run = train(model, seed, args.minutes, args.image_size, Path(args.runs) / f"{model}_seed{seed}")
            record["runs"].append(run)
            record["summary"] = summary(record["runs"])
            print(json.dumps(run), flush=True)
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
            out.with_suffix(".md").write_text(markdown(record) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
