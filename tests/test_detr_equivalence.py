"""DETR equals Hugging Face's DetrForObjectDetection (auxiliary_loss=False) and loads official checkpoints."""

import os
from pathlib import Path

import pytest
import torch

import scaledet
from scaledet.models.detr import convert
from scaledet.models.detr.preprocess import normalize_and_pad

transformers = pytest.importorskip("transformers")

# (our name, timm backbone, DC5)
CASES = {
    "detr_r50": ("resnet50", False),
    "detr_r50_dc5": ("resnet50", True),
    "detr_r101": ("resnet101", False),
    "detr_r101_dc5": ("resnet101", True),
}


def _randomized_hf_detr(backbone: str, dilation: bool):
    """A transformers DETR with random weights that make every query's output distinct
    (sharper attention than the default init) and non-trivial frozen BatchNorm statistics."""
    config = transformers.DetrConfig(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False,
                                     num_labels=91, auxiliary_loss=False, dilation=dilation)
    model = transformers.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "backbone" in name:
                continue
            if param.dim() > 1:
                sharp = "q_proj" in name or "k_proj" in name
                torch.nn.init.xavier_uniform_(param, gain=8.0 if sharp else 1.0)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.2 * torch.randn_like(param))
        model.model.query_position_embeddings.weight.normal_()
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("weight"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                buffer.normal_(0, 0.1)
    return model


def _batches():
    """Batch of one, and a padded batch of two images of different sizes (normalised + mask)."""
    generator = torch.Generator().manual_seed(0)
    single = [torch.rand(3, 224, 288, generator=generator)]
    pair = [torch.rand(3, 256, 192, generator=generator), torch.rand(3, 200, 320, generator=generator)]
    return [normalize_and_pad(single), normalize_and_pad(pair)]


def _max_differences(hf_model, ours):
    results = []
    with torch.no_grad():
        for batch, mask in _batches():
            reference = hf_model(pixel_values=batch, pixel_mask=(~mask).long())
            logits, boxes, aux = ours.forward_features(batch, mask)
            assert aux == []
            results.append(((reference.logits - logits).abs().max().item(),
                            (reference.pred_boxes - boxes).abs().max().item(),
                            logits.std(dim=1).mean().item()))
    return results


def _check_equal(name, tmp_path):
    backbone, dilation = CASES[name]
    hf_model = _randomized_hf_detr(backbone, dilation)
    path = tmp_path / "hf_detr.bin"
    torch.save(hf_model.state_dict(), path)
    ours = scaledet.create_model(name, pretrained=path).eval()
    assert ours.num_classes == 91
    for logit_diff, box_diff, query_spread in _max_differences(hf_model, ours):
        assert logit_diff <= 1e-4 and box_diff <= 1e-5, (logit_diff, box_diff)
        assert query_spread > 1e-2  # the queries really differ: the comparison is not degenerate


@pytest.mark.parametrize("name", ["detr_r50", "detr_r50_dc5", "detr_r101"])
def test_equal_to_transformers(name, tmp_path):
    _check_equal(name, tmp_path)


@pytest.mark.slow
def test_r101_dc5_equal_to_transformers(tmp_path):
    _check_equal("detr_r101_dc5", tmp_path)


def test_transformers_hub_names_and_wrong_qkv_order(tmp_path):
    """Published hub names (conv_encoder, out_proj, fc1) load too; swapping q and k breaks equality."""
    hf_model = _randomized_hf_detr("resnet50", False)
    state = hf_model.state_dict()
    hub_state = {}
    for key, value in state.items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        key = key.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")
        hub_state[key] = value
    torch.save(hub_state, tmp_path / "hub.bin")
    ours = scaledet.create_model("detr_r50", pretrained=tmp_path / "hub.bin").eval()
    (logit_diff, box_diff, _), _ = _max_differences(hf_model, ours)
    assert logit_diff <= 1e-4 and box_diff <= 1e-5

    swapped = dict(state)
    prefix = "model.decoder.layers.0.encoder_attn."
    swapped[prefix + "q_proj.weight"], swapped[prefix + "k_proj.weight"] = state[prefix + "k_proj.weight"], state[prefix + "q_proj.weight"]
    ours.load_state_dict(convert.from_hf(swapped))
    (logit_diff, _, _), _ = _max_differences(hf_model, ours)
    assert logit_diff > 1e-2


def test_official_layout_round_trip(tmp_path):
    """Our state dict -> official key names (458 tensors, packed in_proj) -> load -> same outputs."""
    model = scaledet.create_model("detr_r50").eval()
    official = convert.to_official(model.state_dict())
    assert len(official) == 458
    assert official["transformer.encoder.layers.0.self_attn.in_proj_weight"].shape == (768, 256)
    assert official["transformer.decoder.layers.5.multihead_attn.out_proj.weight"].shape == (256, 256)
    for key in ("backbone.0.body.layer4.2.bn3.running_var", "transformer.decoder.norm.weight",
                "class_embed.weight", "bbox_embed.layers.2.bias", "query_embed.weight", "input_proj.weight"):
        assert key in official
    torch.save({"model": official, "args": {"lr": 1e-4}}, tmp_path / "detr-official.pth")
    loaded = scaledet.create_model("detr_r50", pretrained=tmp_path / "detr-official.pth").eval()
    batch, mask = _batches()[1]
    with torch.no_grad():
        assert torch.equal(model.forward_features(batch, mask)[0], loaded.forward_features(batch, mask)[0])


def test_converter_is_strict(tmp_path):
    model = scaledet.create_model("detr_r50")
    official = convert.to_official(model.state_dict())
    broken = dict(official)
    del broken["transformer.decoder.norm.bias"]
    broken["transformer.extra.weight"] = torch.zeros(1)
    broken["input_proj.bias"] = torch.zeros(7)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as error:
        scaledet.create_model("detr_r50", pretrained=tmp_path / "broken.pth")
    message = str(error.value)
    assert "missing (1): transformer.decoder_norm.bias" in message
    assert "unexpected (1): transformer.extra.weight" in message
    assert "input_proj.bias: checkpoint (7,) vs model (256,)" in message
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a DETR checkpoint"):
        scaledet.create_model("detr_r50", pretrained=tmp_path / "other.pth")


def _published_r50() -> Path | None:
    # evaluated at collection, before the per-test TORCH_HOME fixture: the user's real torch.hub cache
    candidates = [os.environ.get("SCALEDET_DETR_R50", ""),
                  Path(torch.hub.get_dir()) / "checkpoints" / "detr-r50-e632da11.pth"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _cats_image() -> Path | None:
    path = os.environ.get("SCALEDET_COCO_39769", "")
    return Path(path) if path and Path(path).is_file() else None


@pytest.mark.skipif(_published_r50() is None or _cats_image() is None,
                    reason="needs the published detr-r50-e632da11.pth (torch.hub cache or $SCALEDET_DETR_R50) and COCO "
                           "val image 000000039769.jpg ($SCALEDET_COCO_39769); this machine is offline")
def test_published_r50_golden_values():
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    model = scaledet.create_model("detr_r50", pretrained=_published_r50()).eval()
    image = Image.open(_cats_image()).convert("RGB")
    resized = pil_to_tensor(image.resize((1066, 800), Image.BILINEAR)).float() / 255  # as the HF processor does
    with torch.no_grad():
        logits, boxes, _ = model.forward_features(*normalize_and_pad([resized]))
        detections = model([pil_to_tensor(image).float() / 255])[0]
    expected_logits = torch.tensor([[-19.1194, -0.0893, -11.0154], [-17.3640, -1.8035, -14.0219],
                                    [-20.0461, -0.5837, -11.1060]])
    expected_boxes = torch.tensor([[0.4433, 0.5302, 0.8852], [0.5494, 0.2517, 0.0529], [0.4998, 0.5360, 0.9955]])
    torch.testing.assert_close(logits[0, :3, :3], expected_logits, atol=2e-4, rtol=0)
    torch.testing.assert_close(boxes[0, :3, :3], expected_boxes, atol=2e-4, rtol=0)
    kept = detections["labels"][detections["scores"] > 0.3]
    assert sorted(kept.tolist()) == sorted([75, 75, 63, 17, 17])


def test_a_saved_transformers_model_keeps_its_class_names(tmp_path):
    """save_pretrained writes config.json beside the weights: its id2label names our classes (they were "0".."2")."""
    config = transformers.DetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
                                     num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                                     label2id={"cat": 0, "dog": 1, "bird": 2}, auxiliary_loss=False)
    transformers.DetrForObjectDetection(config).save_pretrained(tmp_path / "hf")
    model = scaledet.load(tmp_path / "hf" / "model.safetensors", model="detr_r50")
    assert model.num_classes == 3 and model.class_names == ["cat", "dog", "bird"]
    assert scaledet.load(tmp_path / "hf" / "model.safetensors", model="detr_r50", num_classes=2).class_names == ["0", "1"]
