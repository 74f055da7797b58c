"""DETR's contract, sizes, input checks and weight handling (tiny configurations unless sizes are the point)."""

import dataclasses

import pytest
import torch
from torchvision.ops import box_convert

import scaledet
from scaledet import hub, weights
from scaledet.models import detr
from scaledet.models.detr import convert
from scaledet.models.detr.postprocess import postprocess
from scaledet.models.detr.preprocess import Preprocessor, normalized_targets, resized_size
from scaledet.profiling import count_parameters, profile_model

TINY = dict(backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=3, num_queries=7,
            min_size=64, max_size=96, train_min_sizes=(48, 64))


def tiny(num_classes=4, **extra):
    return scaledet.create_model("detr_r50", num_classes=num_classes, **{**TINY, **extra})


def _images():
    return [torch.rand(3, 60, 80), torch.rand(3, 90, 50)]


def _targets():
    return [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[0.0, 0.0, 49.0, 89.0]]), "labels": torch.tensor([0])}]


def test_parameter_counts_match_the_paper():
    r50 = scaledet.create_model("detr_r50")
    assert count_parameters(r50) == 41_524_768
    assert count_parameters(r50, trainable_only=True) == 41_302_368
    assert sum(p.numel() for p in r50.backbone.parameters() if p.requires_grad) == 23_232_512
    frozen = {name.split(".")[2] for name, p in r50.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}
    assert count_parameters(scaledet.create_model("detr_r101")) == 60_464_672


def test_macs_at_800x1066_match_the_reference():
    profile = profile_model("detr_r50")
    assert profile["native_size"] == [800, 1066]
    assert profile["params"] == 41_524_768 and profile["trainable_params"] == 41_302_368
    assert abs(profile["macs"] / 81.2e9 - 1) < 0.03, profile["macs"]


def test_eval_contract_and_sizes():
    model = tiny().eval()
    assert model.num_classes == 4 and len(model.class_names) == 4 and model.image_size == (64, 96)
    with torch.no_grad():
        detections = model(_images())
    assert len(detections) == 2
    for result, image in zip(detections, _images()):
        assert result["boxes"].shape == (7, 4) and result["scores"].shape == (7,)
        assert result["labels"].dtype == torch.int64 and int(result["labels"].max()) < 4
        assert torch.all(result["scores"][:-1] >= result["scores"][1:])
        assert torch.all(result["boxes"][:, 2:] >= result["boxes"][:, :2])
        centres = (result["boxes"][:, :2] + result["boxes"][:, 2:]) / 2  # sigmoid centres lie inside the image
        assert torch.all(centres >= 0) and torch.all(centres[:, 0] <= image.shape[2]) and torch.all(centres[:, 1] <= image.shape[1])


def test_postprocess_scales_to_pixels_and_drops_no_object():
    logits = torch.tensor([[[0.0, 2.0, 9.0], [3.0, 0.0, 0.0]]])  # query 0 is mostly no-object (last)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0]]])
    result = postprocess(logits, boxes, [(100, 200)])[0]
    assert result["labels"].tolist() == [0, 1]  # query 1 first: higher object score
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 0.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]]))
    probs = logits.softmax(-1)[0]
    torch.testing.assert_close(result["scores"], torch.stack([probs[1, 0], probs[0, 1]]))


def test_box_format_round_trips():
    xyxy = torch.tensor([[5.0, 6.0, 40.0, 50.0], [0.0, 0.0, 80.0, 60.0]])
    image = torch.rand(3, 60, 80)
    normalised = normalized_targets([tuple(image.shape[1:])], [{"boxes": xyxy, "labels": torch.tensor([0, 1])}])[0]["boxes"]
    torch.testing.assert_close(normalised[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    back = box_convert(normalised, "cxcywh", "xyxy") * torch.tensor([80.0, 60.0, 80.0, 60.0])
    torch.testing.assert_close(back, xyxy)
    torch.testing.assert_close(box_convert(box_convert(xyxy, "xyxy", "cxcywh"), "cxcywh", "xyxy"), xyxy)


def test_resize_rule():
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(640, 480, 800, 1333) == (1066, 800)
    assert resized_size(100, 1000, 800, 1333) == (133, 1330)  # as the official rule (int truncation)
    batch, mask = Preprocessor(800, 1333)([torch.rand(3, 480, 640), torch.rand(3, 600, 300)])
    assert batch.shape == (2, 3, 1332, 1066) and mask.shape == (2, 1332, 1066)  # 600x300 -> 1332x666
    assert not mask[0, :800, :1066].any() and mask[0, 800:].all() and mask[1, :, 666:].all()
    assert not mask[1, :, :666].any()
    training = Preprocessor(800, 1333, (480, 512))
    sizes = {training([torch.rand(3, 40, 40)], training=True)[0].shape[-1] for _ in range(20)}
    assert sizes == {480, 512}


def test_aux_outputs_in_training_only_and_gradients_reach_every_trainable_parameter():
    model = tiny().train()
    with torch.no_grad():  # biases start at 0; move them so no gradient is zero by coincidence of the init
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    losses = model(_images(), _targets())
    expected = {"loss"} | {f"{term}{suffix}" for term in ("loss_ce", "loss_bbox", "loss_giou")
                           for suffix in ("", "_0", "_1")}
    assert set(losses) == expected
    weighted = sum(w * (losses[t] + losses[t + "_0"] + losses[t + "_1"])
                   for t, w in (("loss_ce", 1.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)))
    torch.testing.assert_close(losses["loss"], weighted)
    losses["loss"].backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    model.eval()
    batch, mask = model.preprocessor(_images())
    assert model.forward_features(batch, mask)[2] == []
    model.train()
    assert len(model.forward_features(batch, mask)[2]) == 2


def test_param_groups_follow_the_recipe():
    model = tiny()
    recipe = detr.RECIPES["paper"]
    groups = model.param_groups(recipe["lr"], weight_decay=recipe["weight_decay"], backbone_lr=recipe["backbone_lr"])
    assert [g["lr"] for g in groups] == [1e-4, 1e-5] and all(g["weight_decay"] == 1e-4 for g in groups)
    backbone_trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    assert sum(p.numel() for p in groups[1]["params"]) == backbone_trainable
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model, trainable_only=True)
    assert model.param_groups(1e-3, 1e-4)[1]["lr"] == pytest.approx(1e-4)
    assert (recipe["clip_grad"], recipe["lr_drop_at"], detr.VARIANTS["detr_r50"].train_min_sizes[0]) == (0.1, 2 / 3, 480)


@pytest.mark.parametrize("images, message", [
    ([torch.rand(1, 20, 20)], "3 \\(RGB\\) channels"),
    ([torch.rand(20, 20)], "Tensor\\[3, H, W\\]"),
    (torch.rand(3, 20, 20), "list"),
    ([torch.rand(3, 20, 20) * 255], "values must be in \\[0, 1\\]"),
    ([torch.full((3, 20, 20), float("nan"))], "NaN"),
    ([torch.randint(0, 2, (3, 20, 20))], "float"),
])
def test_bad_images_are_rejected(images, message):
    model = tiny().eval()
    with pytest.raises(ValueError, match=message):
        model(images)


@pytest.mark.parametrize("change, message", [
    (lambda t: t[0].update(boxes=torch.tensor([[1.0, float("nan"), 5.0, 5.0], [0.0, 0.0, 1.0, 1.0]])), "NaN"),
    (lambda t: t[0].update(boxes=torch.tensor([[9.0, 1.0, 5.0, 5.0], [0.0, 0.0, 1.0, 1.0]])), "x2 >= x1"),
    (lambda t: t[0].update(labels=torch.tensor([1, 4])), "labels must be in \\[0, 4\\)"),
    (lambda t: t[0].update(labels=torch.tensor([1.0, 2.0])), "int64"),
    (lambda t: t[1].update(boxes=torch.zeros(1, 5)), "\\[M, 4\\]"),
    (lambda t: t.pop(), "one dict per image"),
])
def test_bad_targets_are_rejected(change, message):
    model = tiny().train()
    targets = _targets()
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(_images(), targets)
    with pytest.raises(ValueError, match="needs targets"):
        model(_images())


def test_unknown_option_and_bad_image_size():
    with pytest.raises(ValueError, match="unknown DETR option.*'hidden'"):
        scaledet.create_model("detr_r50", hidden=3)
    with pytest.raises(ValueError, match="shorter side, longest-side cap"):
        scaledet.create_model("detr_r50", image_size=(900, 800), **{k: v for k, v in TINY.items() if "size" not in k})


def test_multi_scale_training_sizes_follow_the_eval_resize():
    """480..800 at the default 800; the same fractions of a smaller shorter side (not 480+ px for a
    128 px setting); explicit sizes win; none without resizing. Derived, so not stored in the config."""
    small = {k: v for k, v in TINY.items() if "size" not in k}
    assert scaledet.create_model("detr_r50", **small).preprocessor.train_min_sizes == detr.variants.DETR_TRAIN_SCALES
    model = scaledet.create_model("detr_r50", image_size=128, **small)
    assert model.image_size == (128, 213) and "train_min_sizes" not in model.config["overrides"]
    assert model.preprocessor.train_min_sizes == (77, 82, 87, 92, 97, 102, 108, 113, 118, 123, 128)
    rebuilt = scaledet.models.registry.create_from_config(model.config)
    assert rebuilt.preprocessor.train_min_sizes == model.preprocessor.train_min_sizes
    assert scaledet.create_model("detr_r50", image_size=128, train_min_sizes=(96,), **small).preprocessor.train_min_sizes == (96,)
    assert scaledet.create_model("detr_r50", min_size=0, **small).preprocessor.train_min_sizes == ()


def test_save_and_reload_round_trip(tmp_path):
    model = tiny(num_classes=3, dropout=0.0).eval()
    model.class_names = ["cat", "dog", "fox"]
    path = weights.save_weights(model.state_dict(), tmp_path / "detr.safetensors", model.config)
    assert model.config["overrides"]["train_min_sizes"] == [48, 64] and model.config["image_size"] == [64, 96]
    reloaded = scaledet.create_model("detr_r50", pretrained=path).eval()
    assert reloaded.class_names == ["cat", "dog", "fox"] and reloaded.num_classes == 3
    assert reloaded.config == model.config
    images = _images()
    with torch.no_grad():
        first, second = model(images), reloaded(images)
    for a, b in zip(first, second):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_from_scratch_backbone_trains_batchnorm_and_every_stage(tmp_path):
    model = tiny(backbone_norm="batch", backbone_trainable_layers=5).train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    model(_images(), _targets())["loss"].backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0 and model.backbone.body.bn1.weight.grad is not None
    assert model.backbone.body.bn1.num_batches_tracked.item() == 1  # statistics are updated in training
    path = weights.save_weights(model.state_dict(), tmp_path / "scratch.safetensors", model.config)
    reloaded = scaledet.create_model("detr_r50", pretrained=path)
    assert reloaded.config == model.config
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, reloaded.state_dict()[key]), key
    frozen_two = tiny(backbone_norm="batch", backbone_trainable_layers=2)
    trainable = {name.split(".")[2] for name, p in frozen_two.named_parameters() if name.startswith("backbone.") and p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny(backbone_norm="group")
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        tiny(backbone_trainable_layers=6)


def test_new_num_classes_resets_only_the_class_head(tmp_path):
    source = tiny(num_classes=91)
    torch.save({"model": convert.to_official(source.state_dict())}, tmp_path / "official.pth")
    model = scaledet.create_model("detr_r50", num_classes=5, pretrained=tmp_path / "official.pth", **TINY)
    assert model.class_head.weight.shape == (6, 32) and model.class_names == [str(i) for i in range(5)]
    for key, value in model.state_dict().items():
        if not key.startswith("class_head."):
            assert torch.equal(value, source.state_dict()[key]), key
    same = scaledet.create_model("detr_r50", pretrained=tmp_path / "official.pth", **TINY)
    assert same.num_classes == 91 and same.class_names[17] == "cat"
    assert torch.equal(same.class_head.weight, source.class_head.weight)


def test_pretrained_coco_downloads_checks_hash_and_reports_offline(tmp_path, monkeypatch):
    source = tiny(num_classes=91)
    published = tmp_path / "published.pth"
    torch.save({"model": convert.to_official(source.state_dict())}, published)
    digest = hub.sha256_of(published)[:8]
    row = detr.VARIANTS["detr_r50"]
    monkeypatch.setitem(detr.VARIANTS, "detr_r50", dataclasses.replace(row, url=published.as_uri(), sha256_prefix=digest))
    model = scaledet.create_model("detr_r50", pretrained="coco", **TINY)
    assert (hub.cache_dir() / "published.pth").exists()
    assert torch.equal(model.query_embed.weight, source.query_embed.weight)
    monkeypatch.setitem(detr.VARIANTS, "detr_r50", dataclasses.replace(row, url=published.as_uri(), sha256_prefix="0000"))
    with pytest.raises(RuntimeError, match="does not match the published hash"):
        scaledet.create_model("detr_r50", pretrained="coco", **TINY)
    monkeypatch.setitem(detr.VARIANTS, "detr_r50", dataclasses.replace(row, url=(tmp_path / "gone.pth").as_uri()))
    with pytest.raises(RuntimeError, match="place it at"):
        scaledet.create_model("detr_r50", pretrained="coco", **TINY)


def test_published_urls_carry_their_hash_prefix():
    for name, row in detr.VARIANTS.items():
        assert row.url.startswith("https://dl.fbaipublicfiles.com/detr/") and row.url.endswith(f"-{row.sha256_prefix}.pth")
    assert sorted(detr.VARIANTS) == ["detr_r101", "detr_r101_dc5", "detr_r50", "detr_r50_dc5"]
    assert set(scaledet.list_models()) >= set(detr.VARIANTS)


class _Network(torch.nn.Module):
    """forward_features without the (empty in eval) aux list, as an exporter sees it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, mask):
        logits, boxes, _ = self.model.forward_features(batch, mask)
        return logits, boxes


def test_forward_features_exports_with_dynamic_sizes():
    """torch.export (what the ONNX dynamo exporter uses) with dynamic batch, height and width."""
    from torch.export import Dim

    network = _Network(tiny().eval())
    batch, mask = torch.randn(2, 3, 96, 128), torch.zeros(2, 96, 128, dtype=torch.bool)
    size, height, width = Dim("batch", min=1, max=16), Dim("h32", min=2, max=64), Dim("w32", min=2, max=64)
    exported = torch.export.export(network, (batch, mask), dynamic_shapes=(
        {0: size, 2: 32 * height, 3: 32 * width}, {0: size, 1: 32 * height, 2: 32 * width}))
    other, other_mask = torch.randn(3, 3, 128, 96), torch.zeros(3, 128, 96, dtype=torch.bool)
    other_mask[1, 100:] = True  # a padded image of another size
    with torch.no_grad():
        for exported_out, eager_out in zip(exported.module()(other, other_mask), network(other, other_mask)):
            torch.testing.assert_close(exported_out, eager_out, atol=1e-6, rtol=0)
