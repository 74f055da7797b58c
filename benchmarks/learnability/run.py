"""The learnability benchmark: scaledet's defaults vs effdet's best-of-5-lr recipe on five sets.

For each set (``--sets``, default all five) and each seed (``--seeds``, default 0 1 2), one after
the other on the same machine:

(a) scaledet as a user would run it, a subprocess given only the data, the input size, the budget
    and the seed::

        scaledet train --train SET/train.json --val SET/val.json --image-size S --max-minutes M --seed K --out DIR

    AP, AP50 and steps come from ``DIR/metrics.json``; images/s from the last step record of
    ``DIR/log.jsonl`` (training time only, like effdet's);
(b) effdet 0.4.1 (``effdet_baseline.py``) for the same minutes, at the learning rate its sweep
    chose (5 learning rates, each for ``--sweep-minutes``, by default the run's own budget, seed 0,
    once per set and cached in ``benchmarks/results/learnability_effdet_sweep.json``). A shorter
    sweep can leave every lr at the floor and then picks by noise (a 1.5-minute sweep on
    ``fewshot`` chose 0.03; swept for the full 8 minutes, 0.03 scored AP 0.054 and 0.01 0.142).

It prints a markdown table and writes ``benchmarks/results/learnability.json`` and ``.md`` with the
processor (lscpu model name, avx2 / avx512f / avx512_bf16 / amx flags), torch version, threads
and date. The files are rewritten after every run, so an interrupted benchmark keeps what it
measured; ``--reuse`` then skips the runs whose result is already in the runs folder.

Usage::

    python -m benchmarks.learnability.run                       # everything: ~7.5 h on a 2-core CPU
    python -m benchmarks.learnability.run --sets scenes --seeds 0 --minutes 8
    python -m benchmarks.learnability.run --quick --sets fewshot   # smoke test: 20 s budgets, seed 0
    python -m benchmarks.learnability.run --only scaledet          # skip effdet (uses no sweep)
    python -m benchmarks.learnability.run --sets fewshot --effdet-lr 0.01 --reuse   # effdet at a given lr, no sweep

``--quick`` writes to ``benchmarks/learnability/data/quick/`` (git-ignored) instead of
``benchmarks/results/``, so a smoke test never overwrites the recorded results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.learnability import datasets  # noqa: E402
from benchmarks.learnability.effdet_baseline import SWEEP_LRS  # noqa: E402
from benchmarks.machine import processor_info  # noqa: E402
from benchmarks.record import results_file, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
QUICK_DIR = datasets.DATA_ROOT / "quick"


# ---- machine ---------------------------------------------------------------------------------


def machine_info(threads: int | None) -> dict:
    """Processor model and relevant flags (lscpu), core count, torch version and threads, load, date."""
    import torch

    cpu = processor_info()
    return {
        **cpu, "amx": any(v for k, v in cpu["flags"].items() if k.startswith("amx")), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS") if threads is None else str(threads),
        "python": platform.python_version(), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _scaledet_command() -> list[str]:
    """The ``scaledet`` entry point of this interpreter's environment (``python -m scaledet`` without it)."""
    script = Path(sys.executable).parent / "scaledet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "scaledet"]


def _run(command: list[str], log: Path, threads: int | None) -> tuple[int, float]:
    """Run ``command`` with stdout + stderr to ``log``; (return code, wall seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=_env(threads),
                                   check=False)
    return completed.returncode, time.monotonic() - start


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- the two contestants ---------------------------------------------------------------------


def _train_images_per_s(out: Path, batch_size: int | None) -> float | None:
    """Training images/s from ``out/log.jsonl``: steps / seconds between step records, leaving out
    the intervals that hold an epoch record (the trainer's periodic evaluation), times the batch."""
    steps, epoch_times = [], []
    try:
        for line in (out / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "step" and "time" in record:
                steps.append((record["step"], record["time"]))
            elif record.get("kind") == "epoch" and "time" in record:
                epoch_times.append(record["time"])
    except (OSError, ValueError):
        return None
    done = seconds = 0.0
    for (s0, t0), (s1, t1) in zip(steps, steps[1:]):
        if not any(t0 < t <= t1 for t in epoch_times):
            done, seconds = done + (s1 - s0), seconds + (t1 - t0)
    if not batch_size or seconds <= 0:
        if steps and batch_size and steps[-1][1] > 0:  # too few records: whole-run average
            return round(steps[-1][0] * batch_size / steps[-1][1], 3)
        return None
    return round(done * batch_size / seconds, 3)


def _run_config(out: Path) -> dict:
    """The training config scaledet actually used (``config`` of ``OUT/last.pt``), or {}."""
    try:
        import torch

        checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        return dict(checkpoint.get("config") or {})
    except Exception:  # noqa: BLE001 - only used for images/s and the record
        return {}


def scaledet_train(folder: Path, image_size: int, seed: int, out: Path, threads: int | None,
                   options: Sequence[str]) -> tuple[dict, float, str]:
    """``scaledet train`` on the set in ``folder`` (in a fresh ``out``) with ``options`` (the budget
    and anything else); ``(metrics.json, wall seconds, the command as shown)``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = _scaledet_command() + [
        "train", "--train", str(folder / "train.json"), "--val", str(folder / "val.json"), "--image-size",
        str(image_size), "--seed", str(seed), "--out", str(out), *options,
    ]  # fmt: skip
    code, wall = _run(command, out / "stdout.log", threads)
    shown = "scaledet " + " ".join(command[len(_scaledet_command()):])
    metrics_path = out / "metrics.json"
    if code != 0 or not metrics_path.exists():
        raise RuntimeError(f"scaledet failed (exit {code}): {shown}\n{_tail(out / 'stdout.log')}")
    return json.loads(metrics_path.read_text()), wall, shown


def run_scaledet(folder: Path, image_size: int, minutes: float, seed: int, out: Path, threads: int | None) -> dict:
    metrics, wall, shown = scaledet_train(folder, image_size, seed, out, threads, ["--max-minutes", f"{minutes:g}"])
    config = _run_config(out)
    batch_size = (config.get("batch_size") or 0) * (config.get("grad_accum") or 1) * (metrics.get("world_size") or 1)
    recipe_keys = ("model", "batch_size", "grad_accum", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
                   "ema_decay", "freeze_bn_fraction", "augment", "model_overrides", "amp", "channels_last", "workers")
    return {
        "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "steps": metrics.get("steps"),
        "images_per_s": _train_images_per_s(out, batch_size or None), "images_per_step": batch_size or None,
        "wall_s": round(wall, 1), "train_wall_s": metrics.get("wall_time_s"), "seed": seed, "command": shown,
        "metrics": metrics, "config": {key: config[key] for key in recipe_keys if key in config},
    }  # fmt: skip


def run_effdet(set_name: str, image_size: int, minutes: float, lr: float, seed: int, out: Path, threads: int | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.learnability.effdet_baseline", "--set", set_name, "--image-size",
               str(image_size), "--minutes", f"{minutes:g}", "--lr", f"{lr:g}", "--seed", str(seed),
               "--json", str(result_path)]
    if threads:
        command += ["--threads", str(threads)]
    code, wall = _run(command, out / "stdout.log", threads)
    if code != 0 or not result_path.exists():
        raise RuntimeError(f"effdet failed (exit {code}): {' '.join(command)}\n{_tail(out / 'stdout.log')}")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = round(wall, 1)
    return result


def effdet_sweep(set_name: str, image_size: int, minutes: float, lrs: Sequence[float], cache: Path, runs: Path,
                 threads: int | None) -> dict:
    """The effdet learning-rate sweep of a set, from ``cache`` or run now (then cached)."""
    lr_text = ",".join(f"{lr:g}" for lr in lrs)
    key = f"{set_name}|size={image_size}|minutes={minutes:g}|lrs={lr_text}|v{datasets.GENERATOR_VERSION}"
    table = json.loads(cache.read_text()) if cache.exists() else {}
    if key in table:
        print(f"[{set_name}] effdet sweep from {cache.name}: lr {table[key]['best_lr']:g}", flush=True)
        return table[key]
    out = runs / set_name / "effdet_sweep"
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "sweep.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.learnability.effdet_baseline", "--set", set_name, "--image-size",
               str(image_size), "--minutes", f"{minutes:g}", "--lr-sweep", "--lrs", *(f"{lr:g}" for lr in lrs),
               "--json", str(result_path)]
    if threads:
        command += ["--threads", str(threads)]
    print(f"[{set_name}] effdet lr sweep: {len(lrs)} x {minutes:g} min ...", flush=True)
    code, _ = _run(command, out / "stdout.log", threads)
    if code != 0 or not result_path.exists():
        raise RuntimeError(f"effdet sweep failed (exit {code}): {' '.join(command)}\n{_tail(out / 'stdout.log')}")
    sweep = json.loads(result_path.read_text())
    entry = {"best_lr": sweep["best_lr"], "minutes": minutes, "image_size": image_size,
             "runs": [{k: r[k] for k in ("lr", "AP", "AP50", "steps", "images_per_s", "bad_steps")} for r in sweep["runs"]],
             "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    table = json.loads(cache.read_text()) if cache.exists() else {}
    table[key] = entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(table, indent=2) + "\n")
    print(f"[{set_name}] effdet sweep: " + ", ".join(f"lr {r['lr']:g} AP {r['AP']:.3f}" for r in entry["runs"])
          + f" -> {entry['best_lr']:g}", flush=True)  # fmt: skip
    return entry


# ---- summary ---------------------------------------------------------------------------------


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(set_runs: dict) -> dict:
    out = {}
    for tool in ("scaledet", "effdet"):
        runs = set_runs.get(tool, [])
        row = {"n": len(runs)}
        for key in ("AP", "AP50", "steps", "images_per_s"):
            row[key], row[key + "_std"] = _mean_std([r.get(key) for r in runs])
        out[tool] = row
    s, e = out["scaledet"].get("AP"), out["effdet"].get("AP")
    out["ratio_AP"] = (s / e) if (s is not None and e) else None
    s50, e50 = out["scaledet"].get("AP50"), out["effdet"].get("AP50")
    out["ratio_AP50"] = (s50 / e50) if (s50 is not None and e50) else None
    return out


def _pm(mean, std, digits=3) -> str:
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def machine_summary(machine: dict) -> str:
    """``processor (N CPUs; flag yes/no, ...) · torch X · T threads`` of a :func:`machine_info` dict."""
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["flags"].items())
    caps = f"; kernel caps {machine['kernel_caps']}" if machine.get("kernel_caps") else ""
    return (f"{machine['processor']} ({machine['cpu_count']} CPUs; {flags}{caps}) · torch {machine['torch']} · "
            f"{machine['threads']} threads")


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = [
        "# Learnability benchmark",
        "",
        f"{machine['date_utc']} · {machine_summary(machine)} · {record['minutes']:.3g} min per run · seeds "
        f"{' '.join(map(str, record['seeds']))} · " + (
            f"effdet lr {record['effdet_lr_given']:g} given (--effdet-lr), no sweep"
            if record.get("effdet_lr_given") is not None else
            f"effdet lr from a {record['sweep_minutes']:.3g}-min sweep of "
            f"{', '.join(f'{lr:g}' for lr in record['sweep_lrs'])}")
        + (" · **QUICK (smoke) mode**" if record["quick"] else ""),
        "",
        "| set | role | scaledet AP | scaledet AP50 | effdet AP | effdet AP50 | AP ratio "
        "| steps (scaledet / effdet) | images/s (scaledet / effdet) | effdet lr |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in record["sets"].items():
        summary = entry["summary"]
        s, e = summary["scaledet"], summary["effdet"]
        lr = entry.get("effdet_lr")
        lines.append(
            f"| {name} | {entry['describe']['role']} | {_pm(s.get('AP'), s.get('AP_std'))} "
            f"| {_pm(s.get('AP50'), s.get('AP50_std'))} | {_pm(e.get('AP'), e.get('AP_std'))} "
            f"| {_pm(e.get('AP50'), e.get('AP50_std'))} | {_num(summary['ratio_AP'], 2)} "
            f"| {_num(s.get('steps'), 0)} / {_num(e.get('steps'), 0)} "
            f"| {_num(s.get('images_per_s'))} / {_num(e.get('images_per_s'))} "
            f"| {'-' if lr is None else f'{lr:g}'} |"
        )
    lines += ["", "AP = COCO AP@[.5:.95] on the val split (mean ± sample std over seeds); ratio = scaledet AP / effdet AP. "
              "Tune sets (`cells`, `scenes`) may be used to choose defaults; held-out sets are only reported.", "",
              "| set | role | image size | input | classes | train / val images | objects / image | median box (px) | kind |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, entry in record["sets"].items():
        d = entry["describe"]
        lines.append(f"| {name} | {d['role']} | {d['image_size']} | {d['input_size']} | {d['num_classes']} "
                     f"| {d['num_train']} / {d['num_val']} | {d['mean_objects_per_image_train']:.1f} "
                     f"| {d['median_box_size_train']:.1f} | {d['kind']} |")
    return "\n".join(lines) + "\n"


def _write(record: dict, out: Path) -> None:
    record["machine"]["load_average_now"] = [round(v, 2) for v in os.getloadavg()]
    write_results(out, record, markdown(record))


# ---- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="scaledet defaults vs effdet's best-of-5-lr recipe on the learnability sets")
    parser.add_argument("--sets", nargs="+", default=list(datasets.SET_NAMES), choices=datasets.SET_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (0 with --quick)")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per run (default 8; 1/3 with --quick)")
    parser.add_argument("--sweep-minutes", type=float, default=None,
                        help="budget per effdet sweep lr (default: --minutes, the runs' own; 1/6 with --quick)")
    parser.add_argument("--sweep-lrs", type=float, nargs="+", default=list(SWEEP_LRS))
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny budgets, seed 0, output under the data cache")
    parser.add_argument("--only", choices=("scaledet", "effdet"), default=None, help="run one side only")
    parser.add_argument("--threads", type=int, default=None, help="OMP/torch threads for both sides (default: torch's)")
    parser.add_argument("--out", default=None, help="results path without suffix (default benchmarks/results/learnability)")
    parser.add_argument("--runs", default=None, help="run folders (default runs/learnability[_quick])")
    parser.add_argument("--reuse", action="store_true", help="reuse run results already in the runs folder")
    parser.add_argument("--effdet-lr", type=float, default=None, metavar="LR",
                        help="effdet at this lr instead of its sweep's choice (e.g. when a short sweep is at the floor)")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only run (and cache) effdet's lr sweeps, e.g. with other threads than the runs")
    args = parser.parse_args(argv)

    minutes = args.minutes if args.minutes is not None else (20 / 60 if args.quick else 8.0)
    sweep_minutes = args.sweep_minutes if args.sweep_minutes is not None else (10 / 60 if args.quick else minutes)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    out = Path(args.out) if args.out else (QUICK_DIR / "learnability" if args.quick else RESULTS / "learnability")
    sweep_cache = results_file(out, "_effdet_sweep.json")
    runs = Path(args.runs) if args.runs else REPO / "runs" / ("learnability_quick" if args.quick else "learnability")
    tools = [args.only] if args.only else ["scaledet", "effdet"]

    record = {"benchmark": "learnability", "quick": args.quick, "minutes": minutes, "sweep_minutes": sweep_minutes,
              "effdet_lr_given": args.effdet_lr,
              "sweep_lrs": args.sweep_lrs, "seeds": seeds, "tools": tools, "machine": machine_info(args.threads),
              "scaledet_command": "scaledet train --train SET/train.json --val SET/val.json --image-size S "
                                  "--max-minutes M --seed K --out DIR",
              "sets": {}}  # fmt: skip
    machine = record["machine"]
    print(f"learnability: sets {' '.join(args.sets)}, seeds {seeds}, {minutes:.3g} min per run, tools {tools}; "
          f"{machine['processor']}, torch {machine['torch']}, {machine['threads']} threads", flush=True)
    if args.sweep_only:
        for name in args.sets:
            datasets.prepare(name)
            sweep = effdet_sweep(name, datasets.describe(name)["input_size"], sweep_minutes, args.sweep_lrs, sweep_cache,
                                 runs, args.threads)
            print(f"[{name}] effdet sweep: best lr {sweep['best_lr']:g}", flush=True)
        return 0
    for name in args.sets:
        folder = datasets.prepare(name)
        info = datasets.describe(name)
        image_size = info["input_size"]
        entry = {"describe": info, "effdet_lr": None, "runs": {tool: [] for tool in tools}}
        record["sets"][name] = entry
        if "effdet" in tools and args.effdet_lr is not None:
            entry["effdet_lr"] = args.effdet_lr
        elif "effdet" in tools:
            sweep = effdet_sweep(name, image_size, sweep_minutes, args.sweep_lrs, sweep_cache, runs, args.threads)
            entry["effdet_lr"], entry["effdet_sweep"] = sweep["best_lr"], sweep
        for seed in seeds:
            for tool in tools:
                run_dir = runs / name / f"{tool}_seed{seed}"
                saved = run_dir / "benchmark_result.json"
                result = None
                if args.reuse and saved.exists():
                    result = json.loads(saved.read_text())
                    if result.get("minutes") != minutes or (tool == "effdet" and result.get("lr") != entry["effdet_lr"]):
                        result = None
                if result is None:
                    print(f"[{name}] {tool} seed {seed}: {minutes:g} min ...", flush=True)
                    if tool == "scaledet":
                        result = run_scaledet(folder, image_size, minutes, seed, run_dir, args.threads)
                    else:
                        result = run_effdet(name, image_size, minutes, entry["effdet_lr"], seed, run_dir, args.threads)
                    result["minutes"] = minutes
                    saved.write_text(json.dumps(result, indent=2) + "\n")
                print(f"[{name}] {tool} seed {seed}: AP {result['AP']:.4f} AP50 {result['AP50']:.4f} "
                      f"steps {result['steps']} images/s {result.get('images_per_s')}", flush=True)
                entry["runs"][tool].append(result)
                entry["summary"] = summarise(entry["runs"])
                _write(record, out)
        entry["summary"] = summarise(entry["runs"])
        _write(record, out)
    table = markdown(record)
    print()
    print(table)
    print(f"wrote {results_file(out, '.json')} and {results_file(out, '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
