"""EfficientDet equals the reference port (effdet 0.4.1) for all 15 variants.

effdet's ``tf_efficientdet_*`` with random weights and randomised BN statistics is saved to a
``.pth`` file, loaded through ``create_model(name, pretrained=FILE, image_size=S)`` and compared
with effdet's ``DetBenchPredict`` on the same images: raw outputs, then detections.
"""

from __future__ import annotations

import time

import pytest
import torch

import scaledet
from scaledet.models.efficientdet import VARIANTS, postprocess

effdet = pytest.importorskip("effdet")

RAW_TOL = 1e-4
SCORE_TOL = 1e-4
BOX_TOL = 1e-2  # pixels
SIZES = {"square": (256, 256), "non_square": (192, 320)}


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine terms, random fusion weights, spread class biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.BatchNorm2d):
            n = sub.num_features
            sub.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            sub.running_var.copy_(torch.rand(n, generator=gen) * 0.75 + 0.5)
            sub.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            sub.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    for name, param in module.named_parameters():
        if name.endswith("edge_weights"):
            param.copy_(torch.rand(param.shape, generator=gen) + 0.25)
        if name.startswith("class_net.predict.conv_pw.bias"):
            param.copy_(torch.randn(param.shape, generator=gen) - 3.0)


def effdet_bench(name: str, size: tuple[int, int]):
    bench = effdet.create_model("tf_" + name, bench_task="predict", pretrained=False, pretrained_backbone=False,
                                image_size=size)
    randomise(bench.model)
    return bench.eval()


@pytest.fixture(autouse=True)
def keep_boxes_without_area(monkeypatch):
    """effdet keeps candidates that clipping leaves without area (zero-width boxes on the image's edge;
    random weights, D6 especially, make nearly all of them so); scaledet drops them before NMS
    (``MIN_BOX_SIDE``, tested in test_efficientdet_model.py). Compared here with the drop turned off:
    everything else must be effdet's exactly, tied scores' order included."""
    monkeypatch.setattr(postprocess, "MIN_BOX_SIDE", float("-inf"))


def compare_variant(name: str, size: tuple[int, int], tmp_path) -> dict[str, float]:
    """Largest differences between effdet and scaledet for one variant and input size.

    ``raw``: network outputs. ``score`` / ``box``: detections of our whole model (resize, network,
    post-processing) vs ``DetBenchPredict``. ``pp_score`` / ``pp_box``: our post-processing fed
    effdet's own raw outputs, which isolates post-processing from float rounding in the network.
    """
    torch.manual_seed(0)
    bench = effdet_bench(name, size)
    path = tmp_path / f"{name}.pth"
    torch.save(bench.model.state_dict(), path)
    ours = scaledet.create_model(name, pretrained=str(path), image_size=size).eval()

    images = torch.rand(2, 3, *size)
    variant = VARIANTS[name]
    batch = (images - torch.tensor(variant.mean).view(3, 1, 1)) / torch.tensor(variant.std).view(3, 1, 1)
    with torch.no_grad():
        ref_cls, ref_box = bench.model(batch)
        our_cls, our_box = ours.forward_features(batch)
        assert [t.shape for t in our_cls] == [t.shape for t in ref_cls]
        assert [t.shape for t in our_box] == [t.shape for t in ref_box]
        raw = max((a - b).abs().max().item() for a, b in zip(our_cls + our_box, ref_cls + ref_box))
        img_info = {"img_scale": torch.ones(2), "img_size": torch.tensor([[size[1], size[0]]] * 2)}
        ref_det = bench(batch, img_info=img_info)
        our_det = ours(list(images))
        pp_det = ours.postprocess((ref_cls, ref_box), ours.preprocess(list(images)))  # images are at `size`: scale 1
    return {"raw": raw, **detection_diff(our_det, ref_det), **detection_diff(pp_det, ref_det, "pp_")}


def detection_diff(ours: list[dict], ref: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Largest score and box differences of our detections vs effdet's ``[B, 100, 6]`` rows."""
    score_diff = box_diff = 0.0
    for det, rows in zip(ours, ref):
        n = len(det["scores"])
        assert n == int((rows[:, 4] > 0).sum()) and n > 0
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        score_diff = max(score_diff, (det["scores"] - rows[:n, 4]).abs().max().item())
        box_diff = max(box_diff, _box_diff(det, rows[:n]))
    return {prefix + "score": score_diff, prefix + "box": box_diff}


def _box_diff(det: dict, ref: torch.Tensor) -> float:
    """Largest box difference, pairing each detection with the reference detection of the same
    label and (within SCORE_TOL) the same score that is closest: detections whose scores tie
    exactly may come out of NMS in either order."""
    same = ((det["scores"][:, None] - ref[None, :, 4]).abs() <= SCORE_TOL) & (
        det["labels"][:, None] == ref[None, :, 5].long() - 1)
    distance = (det["boxes"][:, None, :] - ref[None, :, :4]).abs().amax(-1)
    distance = torch.where(same, distance, torch.full_like(distance, float("inf")))
    return distance.min(dim=1).values.max().item()


def check(name: str, size: tuple[int, int], tmp_path, end_to_end: bool = True) -> None:
    start = time.perf_counter()
    diff = compare_variant(name, size, tmp_path)
    print(f"\n{name} {size}: max |raw| {diff['raw']:.2e}, |score| {diff['score']:.2e}, "
          f"|box| {diff['box']:.2e} px; post-processing alone: |score| {diff['pp_score']:.2e}, "
          f"|box| {diff['pp_box']:.2e} px ({time.perf_counter() - start:.1f}s)")
    assert diff["raw"] < RAW_TOL
    assert diff["pp_score"] < SCORE_TOL and diff["pp_box"] < BOX_TOL
    if end_to_end:
        assert diff["score"] < SCORE_TOL
        assert diff["box"] < BOX_TOL


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_equal_to_effdet(name, size, tmp_path):
    check(name, SIZES[size], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_equal_to_effdet_native_size(name, tmp_path):
    """At native resolution random weights give many candidates whose logits tie to ~1e-7 (e.g.
    along the image border); rounding at that level can flip which of two overlapping boxes NMS
    keeps (seen for D4 at 1024: one swap, 8 px). So end-to-end detections are only printed here;
    raw outputs and post-processing (on effdet's raw outputs) are asserted."""
    check(name, VARIANTS[name].image_size, tmp_path, end_to_end=False)
