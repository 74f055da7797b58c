"""``scaledet profile [names...] [--json]``: parameters, MACs and anchors beside the paper's numbers."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="model names (default: every model that supports profiling)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`scaledet.profiling.profile_model` rows.

    "vs paper" is our count in the paper's unit over the paper's figure: EfficientDet, DETR and RetinaNet
    count a multiply-accumulate as one FLOP; a paper whose ``flops_per_mac`` is 2 (RT-DETR) counts two.
    """
    lines = ["| model | input | params | trainable | paper params | GMACs | paper GFLOPs | vs paper | anchors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    doubled = []
    for row in rows:
        paper = row["paper"]
        gmacs = row["macs"] / 1e9
        flops_per_mac = paper.get("flops_per_mac", 1)
        ratio = gmacs * flops_per_mac / paper["gflops"] if paper.get("gflops") else None
        if flops_per_mac != 1:
            doubled.append(row["model"])
        paper_params = f"{paper['params_m']}M" if paper.get("params_m") else "-"
        lines.append(f"| {row['model']} | {row['native_size'][0]}x{row['native_size'][1]} | {row['params']:,} | "
                     f"{row['trainable_params']:,} | {paper_params} | {gmacs:.2f} | {_fmt(paper.get('gflops'), 'g')} | "
                     f"{_fmt(ratio, '.3f')} | {_fmt(row['anchors'], ',')} |")
    lines.append("\nvs paper: our count in the paper's unit / the paper's GFLOPs (a FLOP = one multiply-accumulate"
                 + (f"; {', '.join(doubled)}: its paper counts 2 per multiply-accumulate)" if doubled else ")"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scaledet.models.registry import family_hook, list_models
    from scaledet.profiling import profile_model

    known = list_models()
    unknown = [name for name in args.names if name not in known]
    if unknown:  # a user's typo: one line before any work, as bench and doctor say it
        raise ValueError(f"unknown model {', '.join(unknown)}: choose from scaledet.list_models() "
                         f"({', '.join(known[:4])}, ...)")
    names = args.names or [n for n in known if family_hook(n, "profile_info") is not None]
    rows, failed = [], []
    for name in tqdm(names, desc="profiling", disable=len(names) < 4 or args.json):
        try:
            rows.append(profile_model(name))
        except Exception as error:  # one family's failure must not hide the others' rows
            failed.append(f"{name}: {type(error).__name__}: {error}")
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    for line in failed:
        print(f"could not profile {line}", file=sys.stderr)
    return 1 if failed else 0
