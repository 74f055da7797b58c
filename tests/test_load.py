"""scaledet.load: our files round-trip bit-identically for every family, other projects' files
load with model=NAME, and a file that does not fit is one error naming the keys."""

import logging

import pytest
import torch

import scaledet
from scaledet.errors import UserError
from scaledet.models.checkpoints import CheckpointMismatch
from scaledet.models.efficientdet.convert import convert_effdet_state_dict
from scaledet.weights import save_weights

#: a reduced DETR (ResNet-18, one encoder layer, 7 queries, 64-96 px) that builds in well under a second
TINY_DETR = dict(backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=2,
                 num_queries=7, min_size=64, max_size=96)
MODELS = {
    "efficientdet_d0": dict(num_classes=3, image_size=(96, 128), class_names=["cat", "dog", "fox"],
                            category_ids=[1, 5, 90], fusion="softmax"),
    "retinanet_r50_fpn": dict(num_classes=2, image_size=128, class_names=["a", "b"], backbone="resnet18"),
    "detr_r50": dict(num_classes=4, **TINY_DETR),
}


def _spread(model: torch.nn.Module) -> torch.nn.Module:
    """Weights and BatchNorm statistics away from their init values (a round trip must keep them)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand(value.shape, generator=generator) * 0.01)
            else:
                value.add_(2)  # num_batches_tracked
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_bit_identical(tmp_path, name):
    model = _spread(scaledet.create_model(name, **MODELS[name]))
    path = save_weights(model.state_dict(), tmp_path / f"{name}.safetensors", model.config)
    loaded = scaledet.load(path)
    assert not loaded.training and loaded.config == model.config
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    # explicit arguments win over the file's config, which wins over the variant's defaults
    again = scaledet.load(path, num_classes=6)
    assert again.num_classes == 6 and again.config["overrides"] == model.config["overrides"]
    assert again.class_names != model.class_names and again.category_ids == list(range(1, 7))


def test_a_different_class_count_reinitialises_only_the_class_predictor(tmp_path, caplog):
    model = _spread(scaledet.create_model("retinanet_r50_fpn", **MODELS["retinanet_r50_fpn"]))
    path = save_weights(model.state_dict(), tmp_path / "r.safetensors", model.config)
    with caplog.at_level(logging.WARNING):
        loaded = scaledet.load(path, num_classes=5)
    assert "re-initialised the class predictor" in caplog.text and loaded.num_classes == 5
    before, after = model.state_dict(), loaded.state_dict()
    reshaped = sorted(key for key in before if after[key].shape != before[key].shape)
    assert reshaped == ["net.head.classification_head.cls_logits.bias", "net.head.classification_head.cls_logits.weight"]
    assert all(torch.equal(after[key], before[key]) for key in before if key not in reshaped)


def test_effdet_file_loads_with_model_name(tmp_path):
    effdet = pytest.importorskip("effdet")
    reference = effdet.create_model("tf_efficientdet_lite0", pretrained=False, pretrained_backbone=False)
    path = tmp_path / "tf_efficientdet_lite0.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(UserError, match="does not name its model.*--model NAME"):
        scaledet.load(path)
    loaded = scaledet.load(path, model="efficientdet_lite0")
    assert loaded.num_classes == 90 and loaded.class_names[0] == "person"
    expected = convert_effdet_state_dict(reference.state_dict(), loaded.variant)
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in expected.items())
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(UserError, match=f"{other}: neither a scaledet EfficientDet nor an effdet checkpoint"):
        scaledet.load(other, model="efficientdet_lite0")


def test_a_file_that_does_not_fit_is_one_error_naming_the_keys(tmp_path):
    model = scaledet.create_model("detr_r50", **MODELS["detr_r50"])
    state = model.state_dict()
    del state["transformer.decoder_norm.bias"]
    state["transformer.extra.weight"] = torch.zeros(1)
    state["input_proj.bias"] = torch.zeros(7)
    path = save_weights(state, tmp_path / "broken.safetensors", model.config)
    with pytest.raises(CheckpointMismatch) as error:
        scaledet.load(path)
    message = str(error.value)
    assert message.startswith(f"{path} does not fit detr_r50 (4 classes): ")
    assert "missing (1): transformer.decoder_norm.bias" in message
    assert "unexpected (1): transformer.extra.weight" in message
    assert "shape mismatch (1): input_proj.bias: checkpoint (7,) vs model (32,)" in message
    assert len(message.splitlines()) == 1


def test_arguments_each_source_cannot_take(tmp_path):
    with pytest.raises(UserError, match="give the model name"):
        scaledet.load(None)
    with pytest.raises(UserError, match="give the model name"):
        scaledet.load("coco")
    with pytest.raises(UserError, match="retinanet_r50_fpn has no COCO weights to download here.*retinanet_resnet50_fpn_coco"):
        scaledet.load("coco", model="retinanet_r50_fpn")
    with pytest.raises(FileNotFoundError):
        scaledet.load(tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match="exported graph: num_classes, image_size cannot change it"):
        scaledet.load(tmp_path / "model.onnx", num_classes=3, image_size=64)
    random = scaledet.load(None, model="efficientdet_d0", num_classes=2, image_size=64)
    assert random.num_classes == 2 and not random.training


def test_our_file_for_another_model_says_which_model_it_holds(tmp_path):
    model = scaledet.create_model("efficientdet_lite0", num_classes=2, image_size=64)
    path = save_weights(model.state_dict(), tmp_path / "l0.safetensors", model.config)
    with pytest.raises(UserError, match=r"l0.safetensors holds efficientdet_lite0 weights, which do not fit "
                                        r"efficientdet_d0: give --model efficientdet_lite0"):
        scaledet.load(path, model="efficientdet_d0")
    # same family, where the file's options make the weights fit: a ResNet-18 DETR file loaded as detr_r101 trained
    # and saved the ResNet-18 network under that name
    detr = scaledet.create_model("detr_r50", num_classes=2, backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64,
                                 enc_layers=1, dec_layers=1, num_queries=4)
    with pytest.raises(UserError, match=r"holds detr_r50 weights, which do not fit detr_r101: give --model detr_r50"):
        scaledet.load(detr.save(tmp_path / "small_detr.safetensors"), model="detr_r101")
    for other in ("detr_r50", "retinanet_r50_fpn"):  # another family: its options failed first, named as unknown
        with pytest.raises(UserError, match=rf"holds efficientdet_lite0 weights, which do not fit {other}: give"):
            scaledet.load(path, model=other)
