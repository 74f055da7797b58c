"""``scaledet paper``: reproduce the EfficientDet paper's comparisons as a markdown report with figures.

Writes ``OUT/report.md``, ``OUT/measurements.json`` and PNG figures (default ``OUT`` = ``docs/paper``)
and prints the tables. Sizes are counted on the meta device (seconds); latency runs real forward
passes on ``--device`` (a few minutes on a CPU: D7x at 1536 px is the slowest); ``--train-ablation``
trains every feature network / fusion row (minutes per run, resumable via the JSON cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from scaledet.paper.budget import AblationBudget

    default = AblationBudget()
    parser.add_argument("--out", type=Path, default=Path("docs/paper"), help="output folder (default docs/paper)")
    parser.add_argument("--device", default="cpu", help="device for latency and fusion timing (cpu, cuda, ...)")
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="skip every timed forward pass (sizes, ratios and figures of size only)")
    parser.add_argument("--gpu-json", type=Path, default=None,
                        help="import GPU latencies: a measurements.json of `scaledet paper --device cuda` "
                             "or a `scaledet bench --device cuda` JSON (default: OUT/gpu_measurements.json if present)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse OUT/measurements.json for tables 1-6 (only the ablation and figures are redone)")
    parser.add_argument("--train-ablation", action="store_true", help="train the feature-network / fusion ablation")
    parser.add_argument("--ablation-device", default=None, help="device for the ablation (default --device)")
    parser.add_argument("--ablation-cache", type=Path, default=None, help="JSON cache of finished runs (default OUT/ablation_cache.json)")
    parser.add_argument("--ablation-minutes", type=float, default=None, help=f"wall-clock safety cap per run (default {default.max_minutes:g})")
    parser.add_argument("--ablation-epochs", type=int, default=None, help=f"epochs per run (default {default.epochs})")
    parser.add_argument("--ablation-steps", type=int, default=None, help="stop each run after N steps (smoke tests)")
    parser.add_argument("--ablation-images", type=int, default=None, help=f"shapes:train images (default {default.train_images})")
    parser.add_argument("--ablation-size", type=int, default=None, help=f"input size in px (default {default.image_size})")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"seeds per row (default {' '.join(map(str, default.seeds))}; at least 2)")
    parser.add_argument("--note", default=None, help="a remark about this run printed in the report (e.g. machine load)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def budget_from_args(args: argparse.Namespace):
    """The :class:`AblationBudget` with the flags that were given."""
    import dataclasses

    from scaledet.paper.budget import AblationBudget

    given = {"max_minutes": args.ablation_minutes, "epochs": args.ablation_epochs, "max_steps": args.ablation_steps,
             "train_images": args.ablation_images, "image_size": args.ablation_size,
             "seeds": tuple(args.seeds) if args.seeds else None}
    budget = dataclasses.replace(AblationBudget(), **{k: v for k, v in given.items() if v is not None})
    sizes = {"--ablation-minutes": args.ablation_minutes, "--ablation-epochs": args.ablation_epochs,
             "--ablation-steps": args.ablation_steps, "--ablation-images": args.ablation_images,
             "--ablation-size": args.ablation_size}
    below = [f"{flag} {value:g}" for flag, value in sizes.items() if value is not None and not value > 0]
    if below:  # said before the report's minutes of measurements, not when the ablation starts
        raise ValueError(f"{', '.join(below)}: must be > 0")
    if len(budget.seeds) < 2:
        raise ValueError(f"the ablation needs at least 2 seeds to give a spread, got {list(budget.seeds)}")
    return budget


def run(args: argparse.Namespace) -> int:
    from scaledet.engine.distributed import resolve_device
    from scaledet.errors import UserError
    from scaledet.paper.report import ReportOptions, build_report

    gpu_json = args.gpu_json
    if gpu_json is None and (args.out / "gpu_measurements.json").exists():
        gpu_json = args.out / "gpu_measurements.json"
    if gpu_json is not None and not gpu_json.exists():
        raise UserError(f"--gpu-json {gpu_json} does not exist")
    budget = budget_from_args(args)
    args.device = str(resolve_device(args.device))
    options = ReportOptions(out=args.out, device=args.device, latency=args.latency, gpu_json=gpu_json,
                            train_ablation=args.train_ablation, ablation_budget=budget,
                            ablation_device=args.ablation_device, ablation_cache=args.ablation_cache,
                            progress=args.progress, reuse=args.reuse, note=args.note, command="scaledet " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["paper"] else "scaledet paper")
    text = build_report(options)
    print(text)
    print(f"wrote {args.out / 'report.md'}, {args.out / 'measurements.json'} and figures", file=sys.stderr)
    return 0
