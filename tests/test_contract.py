"""Every registered model through every verb of the Detector contract (``scaledet/models/base.py``).

For each name in ``scaledet.list_models()``: the eval output contract, a training step with finite
losses and a gradient on every trainable parameter, save -> ``scaledet.load`` bit-identical,
``optimize()`` equal to eager, a weightless rebuild from the config (what runs exported files)
preprocessing as the model does, and ONNX export equal to eager in onnxruntime.

Inputs are tiny. EfficientDets other than D0 / Lite0 keep their own backbone and structure but
run with a narrow feature network (``EFFICIENTDET_SMALL``); DETR runs with a small transformer.
The full-width variants go through the same checks in ``make test-slow``.

ONNX export costs ~25 s per model whatever its size (``torch.export`` tracing and decompositions),
so the default suite exports one model per export code path: ``ONNX_QUICK`` here (P3-P8 with sum
fusion, dilated DETR, RetinaNet on a timm backbone) and, in tests/test_export_onnx.py and
tests/test_retinanet_contract.py, D0, Lite0, DETR-R50 and RetinaNet-R50. ``make test-slow``
exports every other model here (``test_contract_onnx``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scaledet
from scaledet.export import OnnxDetector, export_onnx
from scaledet.inference.compare import compare_detection_sets
from scaledet.models.base import Batch, Detector
from scaledet.models.registry import build_for_processing

#: input sizes and width reductions that keep a model's checks to seconds
EFFICIENTDET_SMALL = {"image_size": 128, "fpn_channels": 16, "fpn_repeats": 1, "head_repeats": 1}
DETR_SMALL = {"image_size": (64, 96), "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "enc_layers": 1,
              "dec_layers": 2, "num_queries": 12}
FULL_WIDTH = {"efficientdet_d0": {"image_size": 128}, "efficientdet_lite0": {"image_size": 128},
              "efficientdet_d7x": {**EFFICIENTDET_SMALL, "image_size": 256},  # P8: a multiple of 256
              "retinanet_r50_fpn": {"image_size": 128}, "retinanet_r101_fpn": {"image_size": 128},
              "retinanet_effb3_fpn": {"image_size": 128}}
RETINANET_SMALL = {"score_thresh": 0.0}  # random-init scores sit near the 0.01 prior, under the 0.05 default
ONNX_QUICK = ["efficientdet_d7x", "detr_r50_dc5", "retinanet_effb3_fpn"]
#: quick-run options of the families whose every variant shares one reduced form
SMALL_BY_PREFIX = {
    "detr_": DETR_SMALL,
    "rtdetr_": {"image_size": 64, "depths": (1, 1, 1, 1), "widths": (16, 32, 48, 64), "stem_width": 16,
                "encoder_dim": 32, "encoder_heads": 2, "encoder_ffn_dim": 64, "decoder_dim": 32,
                "decoder_heads": 2, "decoder_ffn_dim": 64, "decoder_layers": 2, "num_queries": 12,
                "num_denoising": 12},
    "deformable_detr_": {"image_size": (64, 96), "backbone": "resnet18", "hidden_dim": 32, "num_heads": 2,
                         "ffn_dim": 64, "enc_layers": 1, "dec_layers": 2, "num_queries": 12},
}
NUM_CLASSES = 3


def small_options(name: str) -> dict:
    """``create_model`` keywords for the quick contract run of ``name``."""
    if name.startswith("retinanet_"):
        return {**FULL_WIDTH[name], **RETINANET_SMALL}
    if name in FULL_WIDTH:
        return dict(FULL_WIDTH[name])
    for prefix, options in SMALL_BY_PREFIX.items():
        if name.startswith(prefix):
            return dict(options)
    return dict(EFFICIENTDET_SMALL)


def images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 120, 80, generator=generator)]


TARGETS = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 120.0, 60.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[5.0, 30.0, 40.0, 110.0]]), "labels": torch.tensor([1])}]


@torch.no_grad()
def spread(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter and BatchNorm statistic a little (same family-free rule for all), so
    random-init class scores are not one big tie and folded BatchNorm is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.mul_(1 + 0.2 * noise.abs())
        else:
            scale = float(tensor.std()) if tensor.numel() > 1 and float(tensor.std()) > 0 else 0.1
            tensor.add_(0.3 * scale * noise)
    return model


def build(name: str, options: dict) -> Detector:
    torch.manual_seed(0)
    model = scaledet.create_model(name, num_classes=NUM_CLASSES, **options)
    return spread(model).eval()


def check_detections(detections: list[dict], inputs: list[torch.Tensor], num_classes: int) -> None:
    assert isinstance(detections, list) and len(detections) == len(inputs)
    for det, image in zip(detections, inputs):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["scores"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert torch.isfinite(det["boxes"]).all() and torch.isfinite(det["scores"]).all()
        assert (det["boxes"][:, 2] >= det["boxes"][:, 0]).all() and (det["boxes"][:, 3] >= det["boxes"][:, 1]).all()
        height, width = image.shape[-2:]  # boxes lie inside the image they were predicted on
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= width).all() and (det["boxes"][:, 1::2] <= height).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all(), "scores must be sorted descending"
        if n:
            assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) < num_classes


def check_same(reference: list[dict], other: list[dict], what: str, score_tol: float = 1e-4,
               box_tol: float = 1e-2) -> None:
    comparison = compare_detection_sets(reference, other, score_tol, box_tol)
    assert comparison.passed, f"{what}: {comparison.summary()}"


def run_contract(name: str, tmp_path, options: dict, onnx: bool) -> None:
    model = build(name, options)
    assert isinstance(model, Detector)
    inputs = images()

    # eval output contract
    with torch.no_grad():
        eager = model(inputs)
    check_detections(eager, inputs, NUM_CLASSES)
    assert sum(len(d["scores"]) for d in eager) > 0

    # the weightless rebuild (runs exported files) preprocesses exactly as the model does
    shell = build_for_processing(model.config)
    ours, theirs = model.preprocess(inputs), shell.preprocess(inputs)
    assert isinstance(ours, Batch) and ours.image_sizes == theirs.image_sizes
    assert all(torch.equal(a, b) for a, b in zip(ours.inputs, theirs.inputs))

    # a training step: finite losses, a gradient on every trainable parameter
    model.train()
    losses = model(inputs, TARGETS)
    assert "loss" in losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]} ({len(missing)} parameters)"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():  # the training forward moved the BatchNorm statistics
        eager = model(inputs)

    # save -> scaledet.load: bit-identical weights, the same config, the same detections
    path = model.save(tmp_path / f"{name}.safetensors")  # weights + config
    loaded = scaledet.load(path)
    assert loaded.config == model.config
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    assert all(torch.equal(state[key], reloaded[key]) for key in state)
    with torch.no_grad():
        again = loaded(inputs)
    assert all(torch.equal(a[key], b[key]) for a, b in zip(eager, again) for key in a)

    # optimize(): the same detections
    # folding BatchNorm reassociates sums through up to ~100 perturbed random conv layers (DETR
    # R101-DC5 with AVX2 kernels: 1.2e-4), hence a score tolerance above export's 1e-4
    fast = scaledet.optimize(model)
    with torch.no_grad():
        check_same(eager, fast(inputs), "optimize vs eager", score_tol=5e-4)

    if not onnx:
        return
    # ONNX with post-processing inside, run by onnxruntime: the same detections
    exported = OnnxDetector(export_onnx(model, tmp_path / f"{name}.onnx"))
    assert exported.config == model.config
    check_same(eager, exported(inputs), "onnxruntime vs eager")


@pytest.mark.parametrize("name", scaledet.list_models())
def test_contract(name, tmp_path):
    run_contract(name, tmp_path, small_options(name), onnx=name in ONNX_QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in scaledet.list_models() if n not in ONNX_QUICK])
def test_contract_onnx(name, tmp_path):
    """The quick run's checks plus ONNX for the models it does not export."""
    run_contract(name, tmp_path, small_options(name), onnx=True)


LARGE = [n for n in scaledet.list_models() if n not in FULL_WIDTH]


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_contract_full_width(name, tmp_path):
    """The same checks with each variant's own feature-network width and depth (DETR: full transformer)."""
    if name.startswith("detr_"):
        options = {"image_size": (64, 96)}
    else:
        options = {"image_size": 256 if name == "efficientdet_d7x" else 128}
    run_contract(name, tmp_path, options, onnx=False)


def test_every_family_is_covered():
    """Each registry family has at least one model in the quick run (a new family is walked too)."""
    from scaledet.models.registry import FAMILIES

    names = scaledet.list_models()
    assert all(any(n.startswith(f.prefix) for n in names) for f in FAMILIES)


@pytest.mark.parametrize("name", ["efficientdet_d0", "retinanet_r50_fpn", "detr_r50", "deformable_detr_r50",
                                  "rtdetr_r18vd"])
def test_backbone_lr_reaches_the_backbone_of_every_family(name):
    """``--backbone-lr`` trains the backbone's parameters at that rate and nothing else (it did nothing for
    EfficientDet and RetinaNet, whose backbones sit under ``network.`` / ``net.``)."""
    with torch.device("meta"):
        model = scaledet.create_model(name, num_classes=NUM_CLASSES)
    groups = model.param_groups(1e-3, 0.05, 0.123)
    at_backbone_lr = {id(p) for group in groups if group["lr"] == 0.123 for p in group["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in at_backbone_lr]
    assert names and all(".backbone." in f".{n}" and ".fpn." not in n for n in names)
    assert sum(p.numel() for p in model.parameters() if id(p) in at_backbone_lr) > 1e6


@pytest.mark.parametrize("name", ["efficientdet_d0", "retinanet_r50_fpn", "detr_r50", "deformable_detr_r50",
                                  "rtdetr_r18vd"])
def test_a_thin_strip_of_an_image_is_detected_on_not_refused(name):
    """A 2000 x 3 or 1100 x 1 image (a scan line, a banner) scaled its short side to 0 pixels and failed inside
    ``F.interpolate`` for four families; it runs, with boxes inside the image."""
    torch.manual_seed(0)
    model = scaledet.create_model(name, num_classes=NUM_CLASSES, **small_options(name)).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 3, 2000), torch.rand(3, 1100, 1)])
    for output, (height, width) in zip(outputs, [(3, 2000), (1100, 1)]):
        boxes = output["boxes"]
        assert boxes.shape[1] == 4 and len(output["scores"]) == len(boxes)
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()


def test_one_image_batches_with_a_1x1_map_say_what_to_change():
    """D0 at 128 px has a 1 x 1 P7 map: a one-image training batch gave torch's 'Expected more than 1 value per
    channel when training'; the message now names the batch and the input size and what to change."""
    model = scaledet.create_model("efficientdet_d0", num_classes=NUM_CLASSES, **EFFICIENTDET_SMALL).train()
    target = {"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"a training batch of 1 image\(s\) at input size 128x128: .*\(--batch-size\)"):
        model([torch.rand(3, 128, 128)], [target])
    assert torch.isfinite(model([torch.rand(3, 128, 128)] * 2, [target] * 2)["loss"])
