"""Run a scaledet command that writes ``OUT/metrics.json`` and record its wall time, COCO stats and machine.

Shared by ``demo.py`` and ``detr_shapes.py``. The record holds the measured wall time of the whole
command (data, training, evaluation, pictures), the final metrics, the machine (CPU count, load
average before/after) and the UTC time, because the 2-core development machine is shared and
timings vary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import processor_info  # noqa: E402


def results_file(out: Path, suffix: str) -> Path:
    """``out`` (a results path without suffix) + ``suffix``: ``name_lr0.01`` + ``.json`` is
    ``name_lr0.01.json`` (``Path.with_suffix`` would replace the ``.01``)."""
    return out.parent / (out.name + suffix)


def write_results(out: Path, record: dict, markdown: str) -> None:
    """``record`` as ``out.json`` and ``markdown`` as ``out.md`` (``out`` without suffix, see
    :func:`results_file`), creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    results_file(out, ".json").write_text(json.dumps(record, indent=2) + "\n")
    results_file(out, ".md").write_text(markdown)


def record_run(arguments: list[str], out: str, json_path: str, target: dict[str, float]) -> int:
    """Run ``python -m scaledet ARGUMENTS`` (which writes ``out/metrics.json``), write the record to
    ``json_path``; ``target`` maps ``wall_time_s`` (upper bound) and stat names (lower bounds)."""
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    start = time.monotonic()
    command = [sys.executable, "-m", "scaledet", *arguments]
    completed = subprocess.run(command, check=False)
    wall = time.monotonic() - start
    metrics_path = Path(out) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    meets = bool(metrics) and all(
        wall <= bound if key == "wall_time_s" else metrics[key] >= bound for key, bound in target.items()
    )
    record = {
        "command": "scaledet " + " ".join(arguments), "returncode": completed.returncode, "wall_time_s": round(wall, 1),
        "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "metrics": metrics, "target": target,
        "meets_target": meets, "started_utc": started.isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "machine": platform.processor() or platform.machine(),
        **processor_info(),
    }
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("wall_time_s", "AP", "AP50", "meets_target")}))
    return completed.returncode
