"""RT-DETR equals transformers' RTDetrForObjectDetection: preprocessing, network outputs, detections,
the training loss (denoising included) and the full-size parameter layouts."""

import dataclasses

import pytest
import torch

import scaledet
from scaledet.models import rtdetr
from scaledet.models.rtdetr import convert
from scaledet.weights import compare_state_dicts

from benchmarks.reference import rtdetr_hf_config

transformers = pytest.importorskip("transformers")

NUM_CLASSES = 5
#: our overrides of a shrunk R18-vd / R50-vd (the backbone layouts kept, every width and depth small)
SMALL = {"depths": (1, 2, 1, 1), "stem_width": 16, "encoder_dim": 32, "encoder_heads": 2, "encoder_ffn_dim": 64,
         "decoder_dim": 32, "decoder_heads": 2, "decoder_ffn_dim": 64, "decoder_layers": 3, "num_queries": 20,
         "num_denoising": 12}
WIDTHS = {"basic": (16, 24, 32, 48), "bottleneck": (32, 32, 48, 64)}  # bottleneck: widths[0] != stem
IMAGE_SIZE = 128


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights that make every query and class distinct (the default init zeroes the box
    heads and the attention weights) and non-trivial BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point() or name.endswith("n_points_scale"):  # v2's constant 1 / points
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(0.5 + noise.abs())
        elif name.endswith("running_mean"):
            tensor.copy_(0.1 * noise)
        elif tensor.dim() > 1:
            tensor.copy_(noise * (2.0 / sum(tensor.shape[:2])) ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            tensor.copy_(1 + 0.2 * noise)
        else:
            tensor.copy_(0.2 * noise)
    return model


def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 100, 150, generator=generator), torch.rand(3, 140, 90, generator=generator)]


def converted_pair(name: str, tmp_path, version: int = 1, saved: bool = False, **extra):
    """(transformers model, ours loaded from its state dict through ``create_model(pretrained=)``), eval mode.
    ``version=2``: transformers' RT-DETRv2 in its default decoder form. ``saved``: from the file its
    ``save_pretrained`` writes (the hub's layout: ``encoder.encoder.0``, ``fc1``), not its ``state_dict()``."""
    overrides = {**SMALL, "widths": WIDTHS[rtdetr.VARIANTS[name].block], **extra}
    variant = dataclasses.replace(rtdetr.VARIANTS[name], **overrides)
    config = rtdetr_hf_config(variant, NUM_CLASSES)
    if version == 2:
        config = transformers.RTDetrV2Config(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
    torch.manual_seed(0)
    model_class = transformers.RTDetrForObjectDetection if version == 1 else transformers.RTDetrV2ForObjectDetection
    reference = randomize(model_class(config)).eval()
    path = tmp_path / "hf_rtdetr.pth"
    if saved:
        reference.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf" / "model.safetensors"
    else:
        torch.save(reference.state_dict(), path)
    ours = scaledet.create_model(name, pretrained=path, image_size=IMAGE_SIZE, **overrides).eval()
    assert ours.num_classes == NUM_CLASSES  # counted from the file's class head
    return reference, ours


def test_preprocess_matches_image_processor():
    """Resize to the fixed size (bilinear, antialiased, aspect ratio not kept), [0, 1], no mean / std."""
    model = rtdetr.build("rtdetr_r18vd", image_size=IMAGE_SIZE, **SMALL, widths=WIDTHS["basic"])
    processor = transformers.RTDetrImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    inputs = images()
    theirs = processor(images=inputs, do_rescale=False, return_tensors="pt")["pixel_values"]
    (ours,) = model.preprocess(inputs).inputs
    assert ours.shape == theirs.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, version, saved", [("rtdetr_r18vd", 1, False), ("rtdetr_r50vd", 1, False),
                                                  ("rtdetr_r18vd", 2, False), ("rtdetr_r50vd", 1, True),
                                                  ("rtdetr_r18vd", 2, True)])
def test_outputs_and_detections_equal_transformers(name, version, saved, tmp_path):
    reference, ours = converted_pair(name, tmp_path, version, saved)
    inputs = images()
    batch = ours.preprocess(inputs)
    with torch.no_grad():
        expected = reference(pixel_values=batch.inputs[0])
        logits, boxes = ours.forward_features(*batch.inputs)
        detections = ours.postprocess((logits, boxes), batch)
    torch.testing.assert_close(logits, expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes, expected.pred_boxes, atol=1e-4, rtol=0)
    assert logits.std() > 0.5 and boxes.std() > 0.05  # queries and classes are distinct
    processor = transformers.RTDetrImageProcessor()
    theirs = processor.post_process_object_detection(expected, threshold=0.0, target_sizes=batch.image_sizes)
    for mine, other, (height, width) in zip(detections, theirs, batch.image_sizes):
        assert torch.equal(mine["labels"], other["labels"])
        torch.testing.assert_close(mine["scores"], other["scores"], atol=1e-5, rtol=0)
        inside = other["boxes"].clamp(min=0).minimum(torch.tensor([width, height, width, height]))  # ours are clipped
        torch.testing.assert_close(mine["boxes"], inside, atol=1e-2, rtol=0)  # pixels


def test_training_loss_equals_transformers(tmp_path):
    """The same denoising draws (same seed), matching and VFL + L1 + GIoU terms on every output."""
    reference, ours = converted_pair("rtdetr_r50vd", tmp_path, backbone_norm="frozen")
    inputs = images()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 90.0, 80.0], [60.0, 20.0, 140.0, 60.0]]),
                "labels": torch.tensor([0, 4])},
               {"boxes": torch.tensor([[5.0, 30.0, 40.0, 110.0]]), "labels": torch.tensor([2])}]
    batch = ours.preprocess(inputs, training=True)
    normalized = scaledet.models.detr.preprocess.normalized_targets(batch.image_sizes, targets)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in normalized]
    reference.train(), ours.train()
    torch.manual_seed(7)
    expected = reference(pixel_values=batch.inputs[0], labels=labels)
    torch.manual_seed(7)
    losses = ours(inputs, targets)
    torch.testing.assert_close(losses["loss"], expected.loss, atol=1e-4, rtol=1e-5)
    # term by term: ours unweighted, theirs weighted; their encoder term is the last "_aux_"
    weights = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    last_aux = f"_aux_{SMALL['decoder_layers'] - 1}"
    assert len(expected.loss_dict) == len(losses) - 1
    for name, value in losses.items():
        if name != "loss":
            base = "_".join(name.split("_")[:2])
            theirs = expected.loss_dict[name.replace("_enc", last_aux)]
            torch.testing.assert_close(weights[base] * value, theirs, atol=1e-5, rtol=1e-5, msg=name)


FULL = ["rtdetr_r18vd", "rtdetr_r34vd", "rtdetr_r50vd", "rtdetr_r101vd"]


@pytest.mark.parametrize("name", FULL)
def test_full_size_layout_equals_transformers(name):
    """Every converted tensor of transformers' full-size model has our key and shape, and the
    parameter counts agree (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        ours = scaledet.create_model(name)
        reference = transformers.RTDetrForObjectDetection(rtdetr_hf_config(rtdetr.VARIANTS[name], 80))
    theirs = convert.to_scaledet(reference.state_dict())
    mine = {k: v for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    report = compare_state_dicts(theirs, mine)
    assert not report, str(report)
    count = sum(v.numel() for v in mine.values() if v.is_floating_point())
    assert count == sum(v.numel() for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked"))
    print(name, f"{count / 1e6:.2f}M")


def test_onnx_export_equals_eager(tmp_path):
    """The exported graph (network + top-k post-processing) in onnxruntime gives the eager detections."""
    pytest.importorskip("onnxruntime")
    from tests.test_contract import build, check_same, images as contract_images, small_options
    from scaledet.export import OnnxDetector, export_onnx

    model = build("rtdetr_r18vd", small_options("rtdetr_r18vd"))
    inputs = contract_images()
    with torch.no_grad():
        eager = model(inputs)
    exported = OnnxDetector(export_onnx(model, tmp_path / "rtdetr.onnx"))
    assert exported.config == model.config
    check_same(eager, exported(inputs), "onnxruntime vs eager")


# module paths of the official lyuwenyu/RT-DETR rtdetr_pytorch code (presnet.py, hybrid_encoder.py,
# rtdetr_decoder.py) -> ours, one per renaming rule
OFFICIAL_KEYS = {
    "backbone.conv1.conv1_1.conv.weight": "backbone.stem.0.conv.weight",
    "backbone.conv1.conv1_3.norm.running_var": "backbone.stem.2.norm.running_var",
    "backbone.res_layers.0.blocks.0.short.conv.weight": "backbone.stages.0.0.shortcut.conv.weight",
    "backbone.res_layers.0.blocks.0.short.norm.bias": "backbone.stages.0.0.shortcut.norm.bias",
    "backbone.res_layers.2.blocks.0.short.conv.conv.weight": "backbone.stages.2.0.shortcut.conv.weight",
    "backbone.res_layers.2.blocks.0.short.conv.norm.weight": "backbone.stages.2.0.shortcut.norm.weight",
    "backbone.res_layers.3.blocks.1.branch2c.norm.running_mean": "backbone.stages.3.1.conv3.norm.running_mean",
    "backbone.res_layers.1.blocks.1.branch2a.conv.weight": "backbone.stages.1.1.conv1.conv.weight",
    "encoder.input_proj.2.0.weight": "encoder.input_proj.2.conv.weight",
    "encoder.input_proj.0.1.running_var": "encoder.input_proj.0.norm.running_var",
    "encoder.encoder.0.layers.0.self_attn.in_proj_weight": "encoder.aifi.0.self_attn.in_proj_weight",
    "encoder.encoder.0.layers.0.linear2.bias": "encoder.aifi.0.ffn.linear2.bias",
    "encoder.encoder.0.layers.0.norm2.weight": "encoder.aifi.0.norm2.weight",
    "encoder.fpn_blocks.1.bottlenecks.2.conv2.norm.bias": "encoder.fpn_blocks.1.bottlenecks.2.conv2.norm.bias",
    "encoder.pan_blocks.0.conv3.conv.weight": "encoder.pan_blocks.0.conv3.conv.weight",
    "decoder.input_proj.1.norm.weight": "decoder.input_proj.1.norm.weight",
    "decoder.decoder.layers.5.cross_attn.sampling_offsets.bias": "decoder.layers.5.cross_attn.sampling_offsets.bias",
    "decoder.decoder.layers.0.self_attn.out_proj.weight": "decoder.layers.0.self_attn.out_proj.weight",
    "decoder.decoder.layers.2.linear1.weight": "decoder.layers.2.ffn.linear1.weight",
    "decoder.decoder.layers.2.norm3.bias": "decoder.layers.2.norm3.bias",
    "decoder.dec_score_head.4.bias": "decoder.class_heads.4.bias",
    "decoder.dec_bbox_head.0.layers.2.weight": "decoder.box_heads.0.layers.2.weight",
    "decoder.enc_bbox_head.layers.1.bias": "decoder.enc_bbox_head.layers.1.bias",
    "decoder.denoising_class_embed.weight": "decoder.denoising_class_embed.weight",
    "decoder.query_pos_head.layers.0.weight": "decoder.query_pos_head.layers.0.weight",
}


def test_official_layout_names():
    """Each official module path lands on our key, which exists in our models; the
    official decoder's cached anchors and the BatchNorm counters are dropped."""
    state = {key: torch.zeros(1) for key in OFFICIAL_KEYS}
    state.update({"decoder.anchors": torch.zeros(1), "decoder.valid_mask": torch.zeros(1),
                  "encoder.lateral_convs.0.norm.num_batches_tracked": torch.zeros(())})
    assert convert.detect_format(state) == "official"
    assert set(convert.to_scaledet(state)) == set(OFFICIAL_KEYS.values())
    for official, ours_key in OFFICIAL_KEYS.items():
        assert list(convert.from_official({official: torch.zeros(1)})) == [ours_key], official
    with torch.device("meta"):  # R50 (bottleneck conv3) and R18 (encoder conv3 at expansion 0.5)
        ours = {key for name in ("rtdetr_r50vd", "rtdetr_r18vd") for key in scaledet.create_model(name).state_dict()}
    assert set(OFFICIAL_KEYS.values()) <= ours
