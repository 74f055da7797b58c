"""The tables of the reproduction report: each ``tableN(...)`` returns rows (dicts of plain numbers,
JSON-able) and :func:`markdown` renders any of them. Nothing here trains."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from scaledet.models.efficientdet import VARIANTS, compound_scaling
from scaledet.models.registry import family_hook
from scaledet.paper import measure
from scaledet.paper.reference import (
    EFFICIENTDET_MODELS,
    FEATURE_NETWORKS,
    PAPER_LATENCY_MS,
    TABLE4,
    TABLE6,
    FeatureNetworkRow,
)

Row = dict[str, Any]
#: Table 5's setting: EfficientDet-D3's backbone (EfficientNet-B3), input (896), width (160),
#: depth (6 layers) and heads (4 layers) for every feature network.
TABLE5_MODEL = "efficientdet_d3"
WITHIN = 0.10  # "reproduced" tolerance on params / MACs


def _variant(name: str):
    return VARIANTS[name]


def table1() -> list[Row]:
    """Compound scaling: equations 1-3 (``compound_scaling``) vs the published Table 1 (our variant table)."""
    rows = []
    for phi, name in enumerate(EFFICIENTDET_MODELS):
        v = _variant(name)
        eq = compound_scaling(min(phi, 7)) if name != "efficientdet_d7x" else None
        published = (v.image_size[0], v.fpn_channels, v.fpn_repeats, v.head_repeats)
        equation = (eq.image_size, eq.fpn_channels, eq.fpn_repeats, eq.head_repeats) if eq else None
        rows.append({"model": name.replace("efficientdet_", "D").replace("d", ""), "phi": phi if eq else None,
                     "backbone": v.backbone.replace("tf_efficientnet_", "B").replace("b", ""),
                     "input": published[0], "input_eq": equation and equation[0],
                     "channels": published[1], "channels_eq": equation and equation[1],
                     "layers": published[2], "layers_eq": equation and equation[2],
                     "head_layers": published[3], "head_layers_eq": equation and equation[3],
                     "matches": equation == published if equation else None})
    return rows


def _latency_runs(index: int) -> tuple[int, int]:
    """(runs, warmup) for the index-th EfficientDet: fewer passes for the big ones."""
    return (3, 1) if index < 3 else (2, 1) if index < 5 else (1, 1)


def table2(device: str | None = "cpu", imported: dict[str, float] | None = None, progress: bool = True) -> list[Row]:
    """D0-D7x: our params/MACs vs the paper, latency measured on ``device`` (``None``: skip),
    ``imported`` GPU latencies (model -> ms), the paper's V100 latency and test-dev AP."""
    rows = []
    for index, name in enumerate(tqdm(EFFICIENTDET_MODELS, desc="Table 2", disable=not progress)):
        v = _variant(name)
        size = measure.measure_size(measure.build_meta(name), v.image_size)
        latency = None
        if device is not None:
            runs, warmup = _latency_runs(index)
            latency = measure.model_latency_ms(name, device, runs=runs, warmup=warmup)
        rows.append({"model": name, "params": size.params, "paper_params_m": v.paper.params_m,
                     "macs": size.macs, "paper_gflops": v.paper.gflops, "latency_ms": latency,
                     "latency_device": device, "gpu_latency_ms": (imported or {}).get(name),
                     "paper_v100_ms": PAPER_LATENCY_MS["v100"][name], "paper_ap": v.paper.ap_test_dev})
    return rows


def table4() -> list[Row]:
    """ResNet50+FPN, EfficientNet-B3+FPN, EfficientNet-B3+BiFPN: params/MACs vs 34M/97B, 21M/75B, 12M/24B."""
    rows = []
    for ref in TABLE4:
        size_hw = tuple(family_hook(ref.model, "profile_info")(ref.model)["native_size"])
        size = measure.measure_size(measure.build_meta(ref.model), size_hw)
        rows.append({"label": ref.label, "model": ref.model, "input": size_hw[0], "params": size.params,
                     "paper_params_m": ref.params_m, "macs": size.macs, "paper_gflops": ref.gflops,
                     "paper_ap": ref.ap, **_within(size.params / 1e6, ref.params_m, size.macs / 1e9, ref.gflops)})
    return rows


def _within(params_m: float, paper_params_m: float, gmacs: float, paper_gflops: float) -> Row:
    p, m = params_m / paper_params_m, gmacs / paper_gflops
    return {"params_vs_paper": p, "macs_vs_paper": m, "within_10pct": abs(p - 1) <= WITHIN and abs(m - 1) <= WITHIN}


def table5(rows: Sequence[FeatureNetworkRow] = FEATURE_NETWORKS, model: str | None = None) -> list[Row]:
    """Each feature network in ``model``'s setting (default :data:`TABLE5_MODEL`: same backbone, heads,
    width, repeats): params and MACs of the whole detector and of the feature network, ratios vs
    repeated top-down FPN."""
    model = model or TABLE5_MODEL
    v = _variant(model)
    out = []
    for row in rows:
        size = measure.measure_size(measure.build_meta(model, feature_network=row.topology, fusion=row.fusion),
                                    v.image_size, part="network.fpn")
        out.append({"key": row.key, "label": row.label, "params": size.params, "macs": size.macs,
                    "fn_params": size.part_params, "fn_macs": size.part_macs, "paper_ap": row.ap,
                    "paper_params_ratio": row.params_ratio, "paper_flops_ratio": row.flops_ratio})
    base = next(r for r in out if r["key"] == "fpn")
    for r in out:
        for field in ("params", "macs", "fn_params", "fn_macs"):
            r[field + "_ratio"] = r[field] / base[field]
    return out


def table6(device: str = "cpu", models: Sequence[str] | None = None, runs: int = 5, progress: bool = True) -> list[Row]:
    """Speed of fast vs softmax fusion (the BiFPN of each model, same weights and inputs) on ``device``."""
    rows = []
    for name, soft_ap, fast_ap, paper_speedup in tqdm(TABLE6, desc=f"Table 6 ({device})", disable=not progress):
        if models is not None and name not in models:
            continue
        speed = measure.fusion_speed(name, device, runs=runs)
        rows.append({"model": name, "device": device, **speed, "paper_speedup": paper_speedup,
                     "paper_softmax_ap": soft_ap, "paper_fast_ap": fast_ap})
    return rows


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return format(value, spec)


def markdown(headers: Sequence[str], rows: Sequence[Row], cells: Callable[[Row], Sequence[str]]) -> str:
    """A Markdown table: ``headers`` and one line of ``cells(row)`` per row."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _cmp(ours: Any, eq: Any) -> str:
    return f"{ours}" if eq is None or eq == ours else f"{ours} (eq. {eq})"


def table1_markdown(rows: list[Row]) -> str:
    return markdown(["model", "phi", "backbone", "input", "BiFPN channels", "BiFPN layers", "head layers", "equations give the table"],
                    rows, lambda r: [r["model"], _fmt(r["phi"]), r["backbone"], _cmp(r["input"], r["input_eq"]),
                                     _cmp(r["channels"], r["channels_eq"]), _cmp(r["layers"], r["layers_eq"]),
                                     _cmp(r["head_layers"], r["head_layers_eq"]), _fmt(r["matches"])])


def table2_markdown(rows: list[Row]) -> str:
    device = next((r["latency_device"] for r in rows if r["latency_device"]), "cpu")
    return markdown(
        ["model", "params (ours)", "paper", "GMACs (ours)", "paper GFLOPs", f"latency {device} ms (ours)",
         "GPU ms (ours)", "paper V100 ms", "paper AP"], rows,
        lambda r: [r["model"], f"{r['params'] / 1e6:.2f}M", f"{r['paper_params_m']:g}M", f"{r['macs'] / 1e9:.2f}",
                   f"{r['paper_gflops']:g}", _fmt(r["latency_ms"], ".0f"), _fmt(r["gpu_latency_ms"], ".1f"),
                   f"{r['paper_v100_ms']:g}", f"{r['paper_ap']:g}"])


def table4_markdown(rows: list[Row]) -> str:
    return markdown(
        ["model", "scaledet name", "input", "params (ours)", "paper", "GMACs (ours)", "paper", "ours/paper params",
         "ours/paper MACs", "within 10%", "paper AP"], rows,
        lambda r: [r["label"], f"`{r['model']}`", str(r["input"]), f"{r['params'] / 1e6:.2f}M", f"{r['paper_params_m']:g}M",
                   f"{r['macs'] / 1e9:.1f}", f"{r['paper_gflops']:g}B", f"{r['params_vs_paper']:.3f}",
                   f"{r['macs_vs_paper']:.3f}", _fmt(r["within_10pct"]), f"{r['paper_ap']:g}"])


def table5_markdown(rows: list[Row]) -> str:
    return markdown(
        ["feature network", "params", "GMACs", "params ratio (ours)", "MACs ratio (ours)", "paper params ratio",
         "paper FLOPs ratio", "feature-net params", "feature-net GMACs", "feature-net params ratio",
         "feature-net MACs ratio", "paper AP"], rows,
        lambda r: [r["label"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e9:.2f}", f"{r['params_ratio']:.2f}x",
                   f"{r['macs_ratio']:.2f}x", _fmt(r["paper_params_ratio"], ".2f"), _fmt(r["paper_flops_ratio"], ".2f"),
                   f"{r['fn_params'] / 1e6:.2f}M", f"{r['fn_macs'] / 1e9:.2f}", f"{r['fn_params_ratio']:.2f}x",
                   f"{r['fn_macs_ratio']:.2f}x", _fmt(r["paper_ap"], "g")])


def table6_markdown(rows: list[Row]) -> str:
    return markdown(
        ["model (BiFPN only)", "device", "softmax ms", "fast ms", "speed-up (ours)", "paper GPU speed-up",
         "paper AP softmax / fast"], rows,
        lambda r: [r["model"], r["device"], f"{r['softmax_ms']:.1f}", f"{r['fast_ms']:.1f}", f"{r['speedup']:.2f}x",
                   f"{r['paper_speedup']:.2f}x", f"{r['paper_softmax_ap']:g} / {r['paper_fast_ap']:g}"])
