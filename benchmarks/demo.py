"""Run `scaledet demo` and record its wall time and COCO AP to a JSON file.

    python benchmarks/demo.py [--json benchmarks/results/demo.json] [-- extra demo flags]

The record holds the measured wall time of the whole command (dataset build, training,
evaluation, pictures), the final metrics, the machine (CPU count, load average before/after)
and the UTC time, because the 2-core development machine is shared and timings vary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/demo.json", help="where to write the record")
    parser.add_argument("--out", default="runs/demo", help="the demo's output folder")
    parser.add_argument("demo_args", nargs="*", help="extra flags for `scaledet demo` (after --)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    start = time.monotonic()
    command = [sys.executable, "-m", "scaledet", "demo", "--out", args.out, *args.demo_args]
    completed = subprocess.run(command, check=False)
    wall = time.monotonic() - start
    metrics_path = Path(args.out) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    record = {
        "command": " ".join(command[1:]), "returncode": completed.returncode, "wall_time_s": round(wall, 1),
        "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "metrics": metrics,
        "target": {"wall_time_s": 600, "AP50": 0.80, "AP": 0.50},
        "meets_target": bool(metrics) and wall <= 600 and metrics["AP50"] >= 0.80 and metrics["AP"] >= 0.50,
        "started_utc": started.isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "machine": platform.processor() or platform.machine(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("wall_time_s", "AP", "AP50", "meets_target")}))
    return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
