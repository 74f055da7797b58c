"""Weights: the effdet converter (strict), pretrained="coco" through the hash-checked cache,
our safetensors round trip, and a different num_classes re-initialising the class predictor."""

import dataclasses
import logging

import pytest
import torch

import scaledet
from scaledet import hub
from scaledet.models.efficientdet import VARIANTS
from scaledet.models.efficientdet.convert import convert_effdet_state_dict
from scaledet.weights import save_weights

effdet = pytest.importorskip("effdet")

NAME = "efficientdet_lite0"  # the smallest variant


@pytest.fixture(scope="module")
def effdet_state():
    torch.manual_seed(1)
    model = effdet.create_model("tf_" + NAME, pretrained=False, pretrained_backbone=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.state_dict()


def _same_weights(model, effdet_sd):
    ours = convert_effdet_state_dict(effdet_sd, model.variant, model.state_dict())
    return all(torch.equal(model.state_dict()[k], v) for k, v in ours.items())


def test_converter_is_strict(effdet_state):
    variant = VARIANTS[NAME]
    expected = scaledet.create_model(NAME).state_dict()
    converted = convert_effdet_state_dict(effdet_state, variant, expected)
    assert set(converted) == set(expected) and len(converted) == len(effdet_state)
    broken = dict(effdet_state)
    broken["fpn.cell.0.fnode.0.extra.weight"] = torch.zeros(1)
    del broken["box_net.predict.conv_pw.bias"]
    with pytest.raises(ValueError) as info:
        convert_effdet_state_dict(broken, variant, expected)
    assert "fpn.cell.0.fnode.0.extra.weight" in str(info.value)
    assert "network.box_net.predict.pointwise.bias" in str(info.value) and "missing" in str(info.value)
    with pytest.raises(ValueError, match="shape mismatch"):  # a Lite0 file for a Lite1 model
        convert_effdet_state_dict(effdet_state, VARIANTS["efficientdet_lite1"],
                                  scaledet.create_model("efficientdet_lite1").state_dict())


def _publish(tmp_path, monkeypatch, state):
    """Stand in for the release asset: a local file, its file:// URL and hash in the table."""
    path = tmp_path / "release" / "tf_efficientdet_lite0-local.pth"
    path.parent.mkdir()
    torch.save(state, path)
    variant = VARIANTS[NAME]
    url, digest = path.as_uri(), hub.sha256_of(path)[:8]
    monkeypatch.setitem(VARIANTS, NAME, dataclasses.replace(variant, pretrained_url=url, pretrained_sha256=digest))
    return url


def test_pretrained_coco_downloads_checks_and_converts(tmp_path, monkeypatch, effdet_state):
    _publish(tmp_path, monkeypatch, effdet_state)
    model = scaledet.create_model(NAME, pretrained="coco")
    assert _same_weights(model, effdet_state)
    assert (hub.cache_dir() / "tf_efficientdet_lite0-local.pth").exists()
    assert model.class_names[0] == "person" and len(model.class_names) == 90


def test_pretrained_coco_hash_mismatch(tmp_path, monkeypatch, effdet_state):
    _publish(tmp_path, monkeypatch, effdet_state)
    variant = VARIANTS[NAME]
    monkeypatch.setitem(VARIANTS, NAME, dataclasses.replace(variant, pretrained_sha256="00000000"))
    with pytest.raises(RuntimeError, match="does not match the published hash"):
        scaledet.create_model(NAME, pretrained="coco")


def test_pretrained_coco_offline_names_url_and_place(tmp_path, monkeypatch):
    variant = VARIANTS[NAME]
    url = (tmp_path / "nowhere" / "tf_efficientdet_lite0-dfacfc78.pth").as_uri()
    monkeypatch.setitem(VARIANTS, NAME, dataclasses.replace(variant, pretrained_url=url))
    with pytest.raises(RuntimeError) as info:
        scaledet.create_model(NAME, pretrained="coco")
    message = str(info.value)
    assert url in message and str(hub.cache_dir() / "tf_efficientdet_lite0-dfacfc78.pth") in message


def test_new_num_classes_keeps_all_but_class_predictor(tmp_path, monkeypatch, effdet_state, caplog):
    _publish(tmp_path, monkeypatch, effdet_state)
    with caplog.at_level(logging.INFO):
        model = scaledet.create_model(NAME, pretrained="coco", num_classes=3)
    assert [r.getMessage() for r in caplog.records if "re-initialised the class predictor" in r.getMessage()]
    assert model.num_classes == 3 and model.network.class_net.predict.pointwise.out_channels == 27
    converted = convert_effdet_state_dict(effdet_state, model.variant)
    state = model.state_dict()
    for key, value in converted.items():
        if not key.startswith("network.class_net.predict."):
            assert torch.equal(state[key], value), key


def test_safetensors_round_trip(tmp_path):
    model = scaledet.create_model(NAME, num_classes=2, image_size=(192, 256), class_names=["cat", "dog"],
                                  fusion="softmax")
    path = save_weights(model.state_dict(), tmp_path / "model.safetensors", model.config)
    again = scaledet.create_model(NAME, pretrained=path)
    assert again.config == model.config
    assert again.class_names == ["cat", "dog"] and again.image_size == (192, 256) and again.variant.fusion == "softmax"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    image = [torch.rand(3, 100, 150)]
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(image)[0]["scores"], again(image)[0]["scores"])


def test_unrecognised_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="neither a scaledet EfficientDet nor an effdet checkpoint"):
        scaledet.create_model(NAME, pretrained=path)
