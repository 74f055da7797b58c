"""The small-scale training ablation: feature networks and fusion modes trained with one budget.

Every row of :data:`~scaledet.paper.reference.FEATURE_NETWORKS` (Table 5's six feature networks
plus BiFPN with softmax fusion, so the three fusion modes are BiFPN sum / softmax / fast) is
trained from scratch on the built-in shapes data with the same recipe, budget and seeds, and
evaluated with COCO AP on the held-out shapes split. Finished (row, seed) runs are stored in a
JSON cache, so an interrupted ablation resumes where it stopped and a finished one is only read.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scaledet.data import shapes_split
from scaledet.engine import Trainer, TrainConfig
from scaledet.engine.run import add_train_transforms, build_model
from scaledet.paper.budget import AblationBudget
from scaledet.paper.reference import FEATURE_NETWORKS, FeatureNetworkRow
from scaledet.paper.tables import markdown
from scaledet.weights import readable_as_umask_allows


def load_cache(path: Path) -> dict[str, Any]:
    """The cache file's ``{"budget": str, "runs": {"<row>/<seed>": metrics}}`` (empty if absent)."""
    if not path.exists():
        return {"budget": None, "runs": {}}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise ValueError(f"{path}: not an ablation cache (expected {{'budget': ..., 'runs': {{...}}}})")
    return data


def _save_cache(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    readable_as_umask_allows(tmp.name)  # a report artefact, readable like any other file
    os.replace(tmp.name, path)


def train_one(row: FeatureNetworkRow, seed: int, budget: AblationBudget, device: str, out: Path) -> dict[str, Any]:
    """Train and evaluate one (row, seed); returns COCO AP / AP50, steps and wall time."""
    config = TrainConfig.for_model(
        budget.model, train="shapes:train", val="shapes:val", image_size=budget.image_size, epochs=budget.epochs,
        max_minutes=budget.max_minutes, max_steps=budget.max_steps, batch_size=budget.batch_size, lr=budget.lr,
        ema_decay=budget.ema_decay, bn_momentum=budget.bn_momentum, freeze_bn_fraction=budget.freeze_bn_fraction,
        warmup_epochs=budget.warmup_epochs, seed=seed, recipe="paper",  # every value explicit, as measured
        device=device, out=str(out), progress=False, eval_every=0, predictions_grid=0,
        augment={"scale_range": tuple(budget.scale_range)},
        model_overrides={"feature_network": row.topology, "fusion": row.fusion, "backbone_drop_path_rate": 0.0},
        **budget.extra,
    )
    train = shapes_split("train", num_images=budget.train_images, image_size=budget.image_size)
    val = shapes_split("val", num_images=budget.val_images, image_size=budget.image_size)
    model = build_model(config, list(train.class_names))
    add_train_transforms(train, config, model)
    metrics = Trainer(config, model, train, val).fit()
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "steps": metrics["steps"],
            "wall_time_s": metrics["wall_time_s"]}


def run_ablation(cache_path: Path, budget: AblationBudget = AblationBudget(), device: str = "cpu",
                 rows: Sequence[FeatureNetworkRow] = FEATURE_NETWORKS, progress: bool = True,
                 work_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train every (row, seed) not yet in ``cache_path`` and return :func:`summarise` of the cache."""
    cache = load_cache(cache_path)
    if cache["budget"] not in (None, budget.key()):
        raise ValueError(f"{cache_path} holds runs of another budget; delete it or pass another --ablation-cache")
    cache["budget"] = budget.key()
    todo = [(row, seed) for row in rows for seed in budget.seeds if f"{row.key}/{seed}" not in cache["runs"]]
    work = work_dir or Path("runs/paper_ablation")  # checkpoints and logs of each run (not the report folder)
    bar = tqdm(total=len(rows) * len(budget.seeds), initial=len(rows) * len(budget.seeds) - len(todo),
               desc="training ablation", unit="run", disable=not progress)
    for row, seed in todo:
        bar.set_postfix_str(f"{row.key} seed {seed}")
        cache["runs"][f"{row.key}/{seed}"] = train_one(row, seed, budget, device, work / f"{row.key}_{seed}")
        _save_cache(cache_path, cache)
        bar.update()
    bar.close()
    return summarise(cache, rows, budget.seeds)


def summarise(cache: dict[str, Any], rows: Sequence[FeatureNetworkRow] = FEATURE_NETWORKS,
              seeds: Sequence[int] = (0, 1)) -> list[dict[str, Any]]:
    """Per row: AP of every seed, mean, sample standard deviation and AP50 mean (rows with all seeds only)."""
    out = []
    for row in rows:
        runs = [cache["runs"].get(f"{row.key}/{seed}") for seed in seeds]
        if any(r is None for r in runs):
            continue
        aps = [100 * r["AP"] for r in runs]
        out.append({"key": row.key, "label": row.label, "aps": aps, "ap_mean": statistics.fmean(aps),
                    "ap_std": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                    "ap50_mean": statistics.fmean(100 * r["AP50"] for r in runs),
                    "steps": runs[0]["steps"], "paper_ap": row.ap})
    return out


def ranking_sentence(rows: list[dict[str, Any]]) -> str:
    """One sentence: does the paper's ranking (by its Table 5 AP) hold in our measured means?"""
    ranked = [r for r in rows if r["paper_ap"] is not None]
    if len(ranked) < 2:
        return "Too few rows finished to compare rankings."
    paper_order = [r["label"] for r in sorted(ranked, key=lambda r: -r["paper_ap"])]
    ours_order = [r["label"] for r in sorted(ranked, key=lambda r: -r["ap_mean"])]
    best = ours_order[0]
    spread = max(r["ap_std"] for r in ranked)
    gap = sorted((r["ap_mean"] for r in ranked), reverse=True)
    if ours_order == paper_order:
        verdict = "The paper's ranking holds exactly at this scale"
    elif best == paper_order[0]:
        verdict = f"The paper's best network ({best}) is also best here, but the rest of the order differs"
    else:
        verdict = f"The paper's ranking does not hold at this scale: {best} is best here, the paper's best is {paper_order[0]}"
    noise = "so the order is within seed noise" if gap[0] - gap[1] < 2 * spread else "beyond seed noise"
    return (f"{verdict} (our order of the rows the paper's Table 5 scores: {' > '.join(ours_order)}; "
            f"the top two means differ by {gap[0] - gap[1]:.2f} AP and the largest seed standard deviation is {spread:.2f} AP, {noise}).")


def ablation_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown(["feature network", "AP per seed", "AP mean +- std", "AP50 mean", "steps", "paper AP (COCO)"], rows,
                    lambda r: [r["label"], ", ".join(f"{a:.2f}" for a in r["aps"]), f"{r['ap_mean']:.2f} +- {r['ap_std']:.2f}",
                               f"{r['ap50_mean']:.2f}", str(r["steps"]), "-" if r["paper_ap"] is None else f"{r['paper_ap']:g}"])
