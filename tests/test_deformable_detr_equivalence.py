"""Deformable DETR equals transformers' DeformableDetrForObjectDetection (plain, box refinement,
two-stage) on random weights: converted weights, logits and boxes within 1e-4, post-processed
detections equal; full-size parameter counts; ONNX export equal to eager in onnxruntime."""

import pytest
import torch

import scaledet
from scaledet.models.deformable_detr import convert
from scaledet.models.deformable_detr.postprocess import postprocess
from scaledet.models.detr.preprocess import normalize_and_pad

transformers = pytest.importorskip("transformers")

#: our variant and transformers' flags
CASES = {
    "deformable_detr_r50": {"with_box_refine": False, "two_stage": False},
    "deformable_detr_r50_box_refine": {"with_box_refine": True, "two_stage": False},
    "deformable_detr_r50_two_stage": {"with_box_refine": True, "two_stage": True},
}
#: a small transformer on a ResNet-18 (timm in transformers, torchvision here: same layout)
SMALL = {"hidden_dim": 64, "num_heads": 4, "ffn_dim": 128, "enc_layers": 2, "dec_layers": 2, "num_queries": 20}
NUM_CLASSES = 5


def _hf_config(flags: dict, small: bool = True):
    sizes = dict(backbone="resnet18", d_model=64, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_layers=2, decoder_layers=2, num_queries=20,
                 two_stage_num_proposals=20) if small else {}
    return transformers.DeformableDetrConfig(use_timm_backbone=True, use_pretrained_backbone=False,
                                             num_labels=NUM_CLASSES if small else 91, **sizes, **flags)


@torch.no_grad()
def _randomized(model):
    """Random weights with sharp attention and spread sampling offsets (the default init samples a
    fixed pattern with uniform weights), non-trivial frozen BatchNorm statistics."""
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if "backbone" in name:
            continue
        if "norm" in name and name.endswith("weight"):
            param.copy_(1 + 0.2 * noise)
        elif param.dim() > 1:
            sharp = 3.0 if "q_proj" in name or "k_proj" in name else 1.0
            param.copy_(noise * (2.0 / sum(param.shape[:2])) ** 0.5 * sharp)
        else:
            param.copy_(0.3 * noise)
    for name, buffer in model.named_buffers():
        if not buffer.is_floating_point():
            continue
        noise = torch.rand(buffer.shape, generator=generator)
        if name.endswith("running_var") or name.endswith("weight"):
            buffer.copy_(0.5 + noise)
        elif name.endswith("running_mean") or name.endswith("bias"):
            buffer.copy_(0.2 * (noise - 0.5))
    return model


def _batches():
    """A batch of one, and a padded batch of two images of different sizes (normalised + mask)."""
    generator = torch.Generator().manual_seed(0)
    single = [torch.rand(3, 160, 224, generator=generator)]
    pair = [torch.rand(3, 192, 128, generator=generator), torch.rand(3, 150, 240, generator=generator)]
    return [normalize_and_pad(single), normalize_and_pad(pair)]


def _pair(name, tmp_path):
    """transformers' model with random weights and ours loaded from its state dict file."""
    torch.manual_seed(0)
    reference = _randomized(transformers.DeformableDetrForObjectDetection(_hf_config(CASES[name])).eval())
    path = tmp_path / "hf_deformable_detr.bin"
    torch.save(reference.state_dict(), path)
    ours = scaledet.create_model(name, pretrained=path, backbone="resnet18", **SMALL).eval()
    return reference, ours


@pytest.mark.parametrize("name", list(CASES))
def test_equal_to_transformers(name, tmp_path):
    reference, ours = _pair(name, tmp_path)
    assert ours.num_classes == NUM_CLASSES
    processor = transformers.DeformableDetrImageProcessor()
    with torch.no_grad():
        for batch, mask in _batches():
            expected = reference(pixel_values=batch, pixel_mask=(~mask).long())
            logits, boxes, aux, proposals = ours.forward_features(batch, mask)
            assert aux == [] and proposals == ()
            torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-4)
            torch.testing.assert_close(boxes, expected.pred_boxes, rtol=0, atol=1e-4)
            assert logits.std(dim=1).mean() > 0.03 and boxes.std(dim=1).mean() > 0.01  # queries really differ
            sizes = [(300, 400)] * batch.shape[0]
            theirs = processor.post_process_object_detection(expected, threshold=0.0, target_sizes=sizes, top_k=100)
            mine = postprocess(logits, boxes, sizes, ours.top_k)
            for a, b in zip(mine, theirs):
                assert torch.equal(a["labels"], b["labels"])
                torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
                inside = b["boxes"].clamp(min=0).minimum(torch.tensor([400.0, 300.0, 400.0, 300.0]))  # ours are clipped
                torch.testing.assert_close(a["boxes"], inside, rtol=0, atol=1e-2)


def test_transformers_hub_names(tmp_path):
    """Published hub names (conv_encoder, out_proj, fc1) load too; swapping q and k breaks equality."""
    reference, _ = _pair("deformable_detr_r50", tmp_path)
    state = reference.state_dict()
    hub = {key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.").replace(".o_proj.", ".out_proj.")
           .replace(".mlp.fc", ".fc"): value for key, value in state.items()}
    assert any(".conv_encoder." in key for key in hub) and any(".out_proj." in key for key in hub)
    torch.save(hub, tmp_path / "hub.bin")
    ours = scaledet.create_model("deformable_detr_r50", pretrained=tmp_path / "hub.bin", backbone="resnet18",
                                 **SMALL).eval()
    batch, mask = _batches()[1]
    with torch.no_grad():
        expected = reference(pixel_values=batch, pixel_mask=(~mask).long()).logits
        torch.testing.assert_close(ours.forward_features(batch, mask)[0], expected, rtol=0, atol=1e-4)
        prefix = "model.decoder.layers.0.self_attn."
        swapped = {**state, prefix + "q_proj.weight": state[prefix + "k_proj.weight"],
                   prefix + "k_proj.weight": state[prefix + "q_proj.weight"]}
        ours.load_state_dict(convert.to_scaledet(swapped, ours))
        assert (ours.forward_features(batch, mask)[0] - expected).abs().max() > 1e-2


def test_plain_model_refuses_per_layer_heads(tmp_path):
    """A box-refinement file (one box head per layer) is no plain model: the converter says so."""
    reference = _randomized(transformers.DeformableDetrForObjectDetection(
        _hf_config(CASES["deformable_detr_r50_box_refine"])))
    torch.save(reference.state_dict(), tmp_path / "refine.bin")
    with pytest.raises(ValueError, match="one head per decoder layer"):
        scaledet.create_model("deformable_detr_r50", pretrained=tmp_path / "refine.bin", backbone="resnet18", **SMALL)
    with pytest.raises(ValueError, match="not a Deformable DETR checkpoint"):
        convert.to_scaledet({"something": torch.zeros(1)}, None)


def test_box_refine_model_refuses_a_plain_file(tmp_path):
    """A plain file repeats one shared head per layer and has no decoder box heads: loading it into a
    box-refinement model (which would refine boxes with it) is refused."""
    reference = _randomized(transformers.DeformableDetrForObjectDetection(_hf_config(CASES["deformable_detr_r50"])))
    state = reference.state_dict()
    assert not any(key.startswith("model.decoder.bbox_embed.") for key in state) and "bbox_embed.1.layers.0.weight" in state
    torch.save(state, tmp_path / "plain.bin")
    with pytest.raises(ValueError, match="plain Deformable DETR checkpoint"):
        scaledet.create_model("deformable_detr_r50_box_refine", pretrained=tmp_path / "plain.bin",
                              backbone="resnet18", **SMALL)


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_parameter_count(name):
    """Full-size R50 models on the meta device: as many parameters as transformers' (whose
    box-refinement model ties its class heads across layers, where the official code has one per layer)."""
    with torch.device("meta"):
        ours = scaledet.create_model(name)
        reference = transformers.DeformableDetrForObjectDetection(_hf_config(CASES[name], small=False))
    count = sum(p.numel() for p in ours.parameters())
    expected = sum(p.numel() for p in reference.parameters())
    if name == "deformable_detr_r50_box_refine":
        expected += 5 * (256 * 91 + 91)  # transformers shares the 6 class heads; the official model does not
    assert count == expected
    assert 39e6 < count < 42e6  # the paper's 40M


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deformable_detr_r50", "deformable_detr_r50_two_stage"])
def test_onnx_equal_to_eager(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from scaledet.export import OnnxDetector, export_onnx
    from scaledet.inference.compare import compare_detection_sets

    torch.manual_seed(0)
    model = scaledet.create_model(name, num_classes=3, image_size=(64, 96), backbone="resnet18", hidden_dim=32,
                                  num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=2, num_queries=12).eval()
    _randomized(model)
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 120, 80, generator=generator)]
    with torch.no_grad():
        eager = model(images)
    exported = OnnxDetector(export_onnx(model, tmp_path / f"{name}.onnx"))
    comparison = compare_detection_sets(eager, exported(images), 1e-4, 1e-2)
    assert comparison.passed, comparison.summary()
