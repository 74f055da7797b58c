"""End-of-run pictures: ``curves.png`` (loss, lr, AP) and ``predictions.png`` (boxes on images)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss and lr per logged step, AP/AP50 per evaluated epoch, from the run log records."""
    plt = _pyplot()
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch" and r.get("AP") is not None]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")  # tight_layout warned on some logs
    every_loss = sorted({k for r in steps for k in r if "loss" in k})
    loss_keys = [key for key in every_loss if not _auxiliary(key)]  # DETR-family runs log 20-40 terms
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in steps if key in r]
        axes[0].plot(*zip(*points), label=key) if points else None
    hidden = len(every_loss) - len(loss_keys)
    axes[0].set(title="training loss" + (f" ({hidden} auxiliary terms in log.jsonl)" if hidden else ""),
                xlabel="step", yscale="log")
    if loss_keys:
        axes[0].legend()
    if steps:
        axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps])
    axes[1].set(title="learning rate", xlabel="step")
    for key in ("AP", "AP50"):
        if epochs:
            axes[2].plot([r["epoch"] for r in epochs], [r[key] for r in epochs], marker="o", label=key)
    axes[2].set(title="validation AP", xlabel="epoch", ylim=(0, 1))
    if epochs:
        axes[2].legend()
    path = Path(path)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _auxiliary(key: str) -> bool:
    """A loss term of an auxiliary decoder layer, the encoder's proposals or the denoising queries
    (``loss_giou_aux_0``, ``loss_vfl_enc``, ``loss_bbox_dn_2``): logged, not drawn."""
    parts = key.split("_")
    return any(part in ("aux", "enc", "dn") or part.isdigit() for part in parts[1:])


def plot_predictions(
    images: Sequence[torch.Tensor],
    predictions: Sequence[dict[str, torch.Tensor]],
    class_names: Sequence[str],
    path: str | Path,
    score_threshold: float = 0.3,
    targets: Sequence[dict[str, torch.Tensor]] | None = None,
    min_side: int = 256,
) -> Path:
    """A grid of ``images`` (float [3,H,W] in [0,1]) with predicted boxes (xyxy pixels) drawn.

    Ground-truth boxes (if ``targets`` is given) are drawn thin in white under the predictions;
    predictions scoring below ``score_threshold`` are left out. When every image is smaller than
    ``min_side`` all are enlarged by the same integer factor (one scale across the grid).
    """
    from torchvision.utils import draw_bounding_boxes, make_grid

    from scaledet.inference.predict import class_colors

    drawn = []
    zoom = max(1, min_side // max((max(image.shape[-2:]) for image in images), default=1))  # legible labels
    for index, (image, prediction) in enumerate(zip(images, predictions)):
        canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
        canvas = canvas.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
        if targets is not None and len(targets[index]["boxes"]):
            canvas = draw_bounding_boxes(canvas, targets[index]["boxes"].cpu() * zoom, colors="white", width=1)
        keep = prediction["scores"] >= score_threshold
        boxes, labels, scores = (prediction[key][keep].cpu() for key in ("boxes", "labels", "scores"))
        boxes = boxes * zoom
        if len(boxes):
            names = [f"{_name(class_names, int(l))} {float(s):.2f}" for l, s in zip(labels, scores)]
            canvas = draw_bounding_boxes(canvas, boxes, labels=names, colors=class_colors(labels), width=2)
        drawn.append(canvas)
    if not drawn:
        raise ValueError("plot_predictions needs at least one image")
    size = max(max(t.shape[1] for t in drawn), max(t.shape[2] for t in drawn))
    padded = [torch.nn.functional.pad(t, (0, size - t.shape[2], 0, size - t.shape[1])) for t in drawn]
    grid = make_grid(padded, nrow=math.ceil(math.sqrt(len(padded))), padding=4)
    path = Path(path)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)
