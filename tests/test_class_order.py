"""Fine-tuning keeps what a checkpoint's class predictor learned for the classes the data shares with it.

A checkpoint of classes [a, b, c] fine-tuned on data read as [c, a, b] (a VOC folder's alphabetical order, a
re-sorted COCO file) had its class predictor re-initialised (AP 0.706 -> 0.168 after one step at lr 1e-9 in a
new-user pass), as did one fine-tuned onto some of its classes (COCO's person and car). Given class names, the
file's rows are now matched by name: a model of the same classes in another order, or of some of them, detects
what the file's did, class for class; new classes start from the fresh initialisation.
"""

import logging

import pytest
import torch
from torch import Tensor

import scaledet
from scaledet.models.registry import family_of

DETR_TINY = dict(backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=2,
                 num_queries=7, min_size=64, max_size=96, dropout=0.0)
FAMILIES = {
    "efficientdet_d0": dict(image_size=64, backbone="mobilenetv3_small_050", fpn_channels=16, fpn_repeats=1,
                            head_repeats=1),
    "retinanet_r50_fpn": dict(image_size=64, backbone="resnet18"),
    "detr_r50": dict(**DETR_TINY, query_groups=2, denoising_groups=2),
    "deformable_detr_r50": dict(image_size=(64, 96), backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64,
                                enc_layers=1, dec_layers=2, num_queries=12),
    "rtdetr_r18vd": dict(image_size=64, depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), stem_width=16, encoder_dim=32,
                         encoder_heads=2, encoder_ffn_dim=64, decoder_dim=32, decoder_heads=2, decoder_ffn_dim=64,
                         decoder_layers=2, num_queries=12, num_denoising=12),
}
NAMES = ["ant", "bee", "cat", "dog"]


def _source(name, tmp_path):
    """A saved model of classes NAMES whose class predictor gives confident, varied scores (so that detections
    pass the score threshold)."""
    torch.manual_seed(0)
    model = scaledet.create_model(name, num_classes=4, class_names=NAMES, **FAMILIES[name]).eval()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.startswith(tuple(family_of(name).CHECKPOINT.class_head)):
                value.copy_(torch.randn_like(value) * (2.0 if key.endswith("bias") else 0.5))
    return model, model.save(tmp_path / f"{name}.safetensors")


def _named_detections(model, images, only=None):
    """Per image, ``(class name, score, box)`` sorted, for the classes in ``only`` (default all)."""
    with torch.no_grad():
        outputs = model(images)
    def named(label: Tensor) -> str:
        return model.class_names[int(label)].strip().lower()

    return [sorted((named(label), round(float(score), 4), tuple(round(float(v), 2) for v in box))
                   for box, score, label in zip(out["boxes"], out["scores"], out["labels"])
                   if only is None or named(label) in only) for out in outputs]


IMAGES = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(k)) for k in range(2)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_same_classes_in_another_order_detect_the_same(name, tmp_path, caplog):
    source, path = _source(name, tmp_path)
    expected = _named_detections(source, IMAGES)
    assert sum(len(found) for found in expected) > 0
    with caplog.at_level(logging.WARNING, logger="scaledet.models.checkpoints"):
        reordered = scaledet.create_model(name, pretrained=path, class_names=["cat", "ant", "dog", "Bee "]).eval()
    assert "rows of [cat, ant, dog, Bee ] are the checkpoint's (matched by name, reordered)" in caplog.text
    assert reordered.class_names == ["cat", "ant", "dog", "Bee "]
    assert _named_detections(reordered, IMAGES) == expected


@pytest.mark.parametrize("name", ["efficientdet_d0", "detr_r50"])
def test_some_of_the_classes_keep_their_rows_and_new_ones_start_fresh(name, tmp_path, caplog):
    """COCO's person and car for a data set of person, car and drone: two rows kept, one fresh (with DETR's
    "no object" row and per-class training entries from the file)."""
    source, path = _source(name, tmp_path)
    with caplog.at_level(logging.WARNING, logger="scaledet.models.checkpoints"):
        subset = scaledet.create_model(name, pretrained=path, num_classes=2, class_names=["dog", "bee"]).eval()
    assert "rows of [dog, bee] are the checkpoint's (matched by name)" in caplog.text
    # scores are per class (sigmoid) for EfficientDet: the file's detections of the kept classes are all found
    # (and more of low score, no longer crowded out of the top-k candidates by the other two classes)
    if name == "efficientdet_d0":
        found = _named_detections(subset, IMAGES)
        for wanted, got in zip(_named_detections(source, IMAGES, only={"dog", "bee"}), found):
            assert wanted and set(wanted) <= set(got)
    before, after = source.state_dict(), subset.state_dict()
    head = "class_head." if name == "detr_r50" else "network.class_net.predict.pointwise."
    rows = after[head + "bias"].shape[0] // 2 if name == "efficientdet_d0" else 1
    for k, source_k in enumerate([3, 1]):  # dog, bee
        assert torch.equal(after[head + "bias"][k:rows * 2:2], before[head + "bias"][source_k:rows * 4:4])
    if name == "detr_r50":
        assert after["class_head.bias"][2] == before["class_head.bias"][4]  # "no object"
        assert torch.equal(after["denoising.label_embed.weight"], before["denoising.label_embed.weight"][[3, 1]])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scaledet.models.checkpoints"):
        grown = scaledet.create_model(name, pretrained=path, num_classes=3, class_names=["dog", "emu", "ant"])
    assert "rows of [dog, ant] are the checkpoint's (matched by name); [emu] re-initialised" in caplog.text
    fresh = scaledet.create_model(name, num_classes=3, class_names=["dog", "emu", "ant"], **FAMILIES[name])
    if name == "efficientdet_d0":  # the new class's rows: the fresh initialisation's prior bias
        bias = grown.state_dict()[head + "bias"]
        assert torch.equal(bias[1::3], fresh.state_dict()[head + "bias"][1::3])


def test_no_shared_name_re_initialises_even_at_the_same_count(tmp_path, caplog):
    """Four other names for the file's four classes: its rows would predict the file's classes under the new names
    (the Python API relabelled them silently); they are re-initialised."""
    source, path = _source("efficientdet_d0", tmp_path)
    with caplog.at_level(logging.WARNING, logger="scaledet.models.checkpoints"):
        other = scaledet.create_model("efficientdet_d0", pretrained=path, class_names=["w", "x", "y", "z"])
    assert "re-initialised the class predictor (network.class_net.predict.)" in caplog.text
    head = "network.class_net.predict.pointwise.bias"
    assert not torch.equal(other.state_dict()[head], source.state_dict()[head])
    same = scaledet.create_model("efficientdet_d0", pretrained=path)  # no names given: the file's, as they are
    assert same.class_names == NAMES and torch.equal(same.state_dict()[head], source.state_dict()[head])
