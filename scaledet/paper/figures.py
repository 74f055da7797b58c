"""Figures in the style of the paper's Figures 1 and 4: the paper's COCO AP against our measured
size, cost and latency, for EfficientDet D0-D7x and the RetinaNet baselines we build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Baselines drawn beside the EfficientDet curve: (name, label, the paper's AP for it).
FIGURE_BASELINES: tuple[tuple[str, str, float], ...] = (
    ("retinanet_r50_fpn", "RetinaNet-R50 (640)", 39.2),
    ("retinanet_r101_fpn", "RetinaNet-R101 (640)", 39.9),
    ("retinanet_effb3_fpn", "EfficientNet-B3 + FPN (640)", 40.3),
)


def _axes_panel(ax, xs_det, ys_det, labels, baselines, xlabel: str, log: bool) -> None:
    ax.plot(xs_det, ys_det, "o-", color="tab:red", label="EfficientDet (paper AP)")
    for x, y, label in zip(xs_det, ys_det, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for x, y, label in baselines:
        ax.plot([x], [y], "s", label=label)
    if log:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("COCO AP (paper)")
    ax.grid(alpha=0.3)


def plot_figures(table2_rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``figure_size.png`` (AP vs params and MACs, like Figures 1 and 4a-b) and
    ``figure_latency.png`` (AP vs our measured latency, like Figure 4b-c). ``baseline_rows``:
    dicts with ``model``, ``params``, ``macs``, optional ``latency_ms`` / ``gpu_latency_ms``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    labels = [r["model"].replace("efficientdet_", "").upper() for r in table2_rows]
    ap = [r["paper_ap"] for r in table2_rows]
    ap_of = {name: (label, value) for name, label, value in FIGURE_BASELINES}
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, scale, xlabel in ((axes[0], "params", 1e6, "parameters (M, ours)"), (axes[1], "macs", 1e9, "GMACs (ours)")):
        base = [(r[key] / scale, ap_of[r["model"]][1], ap_of[r["model"]][0]) for r in baseline_rows if r["model"] in ap_of]
        _axes_panel(ax, [r[key] / scale for r in table2_rows], ap, labels, base, xlabel, log=True)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Paper AP vs model size and MACs measured by scaledet (cf. paper Figures 1, 4)")
    fig.tight_layout()
    written.append(out / "figure_size.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    panels = [(k, t) for k, t in (("latency_ms", "CPU"), ("gpu_latency_ms", "GPU")) if any(r.get(k) for r in table2_rows)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels):
            pts = [(r[key], a, lab) for r, a, lab in zip(table2_rows, ap, labels) if r.get(key)]
            base = [(r[key], ap_of[r["model"]][1], ap_of[r["model"]][0]) for r in baseline_rows
                    if r["model"] in ap_of and r.get(key)]
            _axes_panel(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], base,
                        f"batch-1 latency, ms ({title}, ours)", log=True)
        axes[0][0].legend(fontsize=8, loc="lower right")
        fig.suptitle("Paper AP vs latency measured by scaledet (cf. paper Figure 4)")
        fig.tight_layout()
        written.append(out / "figure_latency.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_ablation(rows: list[dict[str, Any]], out: Path) -> Path:
    """Bar chart of the training ablation: mean AP per row with min-max whiskers over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    means = [r["ap_mean"] for r in rows]
    low = [r["ap_mean"] - min(r["aps"]) for r in rows]
    high = [max(r["aps"]) - r["ap_mean"] for r in rows]
    ax.bar(range(len(rows)), means, yerr=[low, high], capsize=4, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("AP on shapes:val (mean, min-max over seeds)")
    ax.set_title("Small-scale training ablation (same budget, recipe and seeds)")
    fig.tight_layout()
    path = out / "figure_ablation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
