"""Fine-tuning with the default recipe: from scratch vs from pretrained weights, at the default lr and others.

    python -m benchmarks.learnability.fine_tune --pretrained runs/demo/weights.safetensors \\
        --sets scenes slender --steps 600 --lrs 2e-3 --seeds 0 --threads 1 --parallel 2 --out OUT

``scaledet train --pretrained FILE --num-classes K`` gets the same auto recipe as a run from
scratch (AdamW at 8.5e-3 for batch 4, chosen from scratch). Published COCO weights cannot be
fetched offline, so this stands in for them with a detector trained here: ``--pretrained FILE``
(e.g. the demo's shapes weights), or ``--pretrain-on SET --pretrain-steps N`` (scaledet's defaults
on a learnability set, cached under the runs folder). For each target set and seed it trains, with
``scaledet train`` and nothing else changed:

* ``scratch``: the defaults from random weights;
* ``pretrained``: the defaults from the pretrained weights (class predictor re-initialised when
  the class count differs);
* ``pretrained lr X``: the same with ``--lr X`` for each ``--lrs`` value;
* ``pretrained, anchors V`` (``--anchor-variants fit default``): ``--anchors fit`` (the best fit for the data)
  or ``default`` (the checkpoint's kept), where the default ``auto`` re-fits only when that covers the
  boxes better than the checkpoint's (``--no-scratch`` leaves the scratch runs out);
* ``pretrained, class rows fresh`` (``--fresh-class-rows``): the same weights with their classes
  renamed, so no class name is shared and the class predictor starts from scratch, as it did for
  any change of class count before rows were matched by name. Against ``pretrained`` (the rows of
  the classes the target set shares with the checkpoint kept) it measures what the matching brings.

Budgets are optimizer steps (``--max-steps``), not minutes, so the runs may share the machine
(``--parallel``) without changing what they learn. Prints a table (AP, AP50 per variant, mean
over seeds) and writes JSON and markdown with the processor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.learnability import datasets  # noqa: E402
from benchmarks.learnability.run import REPO, RESULTS, _mean_std, machine_info, scaledet_train  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from benchmarks.record import write_results  # noqa: E402
from scaledet.weights import read_checkpoint, save_weights  # noqa: E402


def train(folder: Path, image_size: int, steps: int, seed: int, out: Path, threads: int | None,
          extra: Sequence[str] = ()) -> dict:
    """``scaledet train`` on the set in ``folder`` for ``steps`` optimizer steps; its metrics."""
    metrics, wall, shown = scaledet_train(folder, image_size, seed, out, threads,
                                          ["--max-steps", str(steps), "--no-progress", *extra])
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "steps": metrics["steps"], "wall_s": round(wall, 1),
            "seed": seed, "command": shown}


def pretrain(name: str, steps: int, runs: Path, threads: int | None) -> Path:
    """Weights of scaledet's defaults trained ``steps`` steps on learnability set ``name`` (cached)."""
    out = runs / f"pretrain_{name}_{steps}"
    weights = out / "weights.safetensors"
    if not weights.exists():
        print(f"pretraining on {name} for {steps} steps ...", flush=True)
        result = train(datasets.prepare(name), datasets.describe(name)["input_size"], steps, 0, out, threads)
        print(f"pretrained on {name}: AP {result['AP']:.3f} AP50 {result['AP50']:.3f}", flush=True)
    return weights


def with_classes_renamed(weights: Path) -> Path:
    """A copy of our weights file ``weights`` whose classes are named ``renamed 1``, ``renamed 2``, ...

    Fine-tuned from it, no class name is shared with the data, so the class predictor starts fresh.
    """
    out = weights.with_name(weights.stem + "_classes_renamed.safetensors")
    if not out.exists():
        state_dict, config = read_checkpoint(weights)
        if not config or not config.get("class_names"):
            raise SystemExit(f"{weights} names no classes: --fresh-class-rows needs one of our weights files")
        names = [f"renamed {index + 1}" for index in range(len(config["class_names"]))]
        save_weights(state_dict, out, {**config, "class_names": names})
    return out


def summarise(results: list[dict]) -> dict:
    (ap, ap_std), (ap50, _) = _mean_std([r["AP"] for r in results]), _mean_std([r["AP50"] for r in results])
    return {"AP": round(ap, 4), "AP_std": round(ap_std, 4), "AP50": round(ap50, 4),
            "AP_per_seed": [round(r["AP"], 4) for r in results], "steps": [r["steps"] for r in results]}


def markdown(record: dict) -> str:
    machine = record["machine"]
    made = record.get("pretrain")
    source = f" (scaledet's defaults, {made['steps']} steps on {made['set']}: AP {made['AP']:.3f} there)" if made else ""
    lines = [f"Pretrained weights: `{record['pretrained']}`{source}; {record['steps']} optimizer steps per run, seeds "
             f"{record['seeds']}; {describe(machine)}, {machine['threads']} thread(s) per run, "
             f"{record['parallel']} run(s) at a time, {machine['date_utc']}", "",
             "| set | role | variant | AP per seed | AP mean | AP50 mean |", "|---|---|---|---|---:|---:|"]
    for name, entry in record["sets"].items():
        for variant, summary in entry["summary"].items():
            seeds = ", ".join(f"{ap:.3f}" for ap in summary["AP_per_seed"])
            lines.append(f"| {name} | {entry['role']} | {variant} | {seeds} | **{summary['AP']:.3f}** "
                         f"| {summary['AP50']:.3f} |")
    return "\n".join(lines) + f"\n\nCommand: `{record['command']}`\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", help="a weights file to fine-tune from")
    source.add_argument("--pretrain-on", choices=datasets.SET_NAMES, help="make the pretrained weights on this set")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--sets", nargs="+", required=True, choices=datasets.SET_NAMES)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    parser.add_argument("--lrs", type=float, nargs="*", default=[], help="also fine-tune at these lrs")
    parser.add_argument("--anchor-variants", nargs="*", default=[], choices=["fit", "default"],
                        help="also fine-tune with these --anchors values (fit: the best fit for the data; default: "
                             "the checkpoint's kept; the default auto re-fits only when that covers the boxes better "
                             "than the checkpoint's)")
    parser.add_argument("--fresh-class-rows", action="store_true",
                        help="also fine-tune with the class predictor started fresh (the weights' classes renamed)")
    parser.add_argument("--no-scratch", dest="scratch", action="store_false", help="leave out the runs from scratch")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (budgets are steps, not minutes)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "fine_tune"))
    parser.add_argument("--out", default=str(RESULTS / "fine_tune"))
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    weights = Path(args.pretrained) if args.pretrained else pretrain(args.pretrain_on, args.pretrain_steps, runs,
                                                                       args.threads * args.parallel)
    record = {"benchmark": "fine_tune", "pretrained": str(weights), "pretrain_on": args.pretrain_on,
              "steps": args.steps, "seeds": args.seeds, "parallel": args.parallel,
              "machine": machine_info(args.threads), "command": "python -m benchmarks.learnability.fine_tune "
              + " ".join(argv if argv is not None else sys.argv[1:]), "sets": {}}
    jobs = []
    for name in args.sets:
        folder, info = datasets.prepare(name), datasets.describe(name)
        from_weights = ["--pretrained", str(weights), "--num-classes", str(info["num_classes"])]
        variants = {**({"scratch": []} if args.scratch else {}), "pretrained": from_weights,
                    **{f"pretrained, anchors {value}": [*from_weights, "--anchors", value] for value in args.anchor_variants},
                    **{f"pretrained lr {lr:g}": [*from_weights, "--lr", f"{lr:g}"] for lr in args.lrs},
                    **({"pretrained, class rows fresh": ["--pretrained", str(with_classes_renamed(weights)),
                                                        "--num-classes", str(info["num_classes"])]}
                       if args.fresh_class_rows else {})}
        record["sets"][name] = {"role": datasets.role(name), "runs": {variant: [] for variant in variants}}
        for seed in args.seeds:
            for variant, extra in variants.items():
                out = runs / name / f"{variant.replace(', ', '_').replace(' ', '_')}_seed{seed}"
                jobs.append((name, variant, folder, info["input_size"], seed, out, extra))

    def run(job):
        name, variant, folder, size, seed, out, extra = job
        result = train(folder, size, args.steps, seed, out, args.threads, extra)
        print(f"[{name}] {variant} seed {seed}: AP {result['AP']:.4f} AP50 {result['AP50']:.4f}", flush=True)
        return job, result

    with ThreadPoolExecutor(args.parallel) as pool:
        for (name, variant, *_), result in pool.map(run, jobs):
            record["sets"][name]["runs"][variant].append(result)
    if args.pretrain_on:
        made = json.loads((weights.parent / "metrics.json").read_text())
        record["pretrain"] = {"set": args.pretrain_on, "steps": made["steps"], "AP": made["AP"], "AP50": made["AP50"]}
    for entry in record["sets"].values():
        entry["summary"] = {variant: summarise(results) for variant, results in entry["runs"].items()}
    table = markdown(record)
    print(table)
    write_results(Path(args.out), record, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
