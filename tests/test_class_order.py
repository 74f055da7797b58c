"""Fine-tuning onto the same classes in another order keeps what the class predictor learned.

A checkpoint of classes [a, b, c] fine-tuned on data read as [c, a, b] (a VOC folder's alphabetical order, a
re-sorted COCO file) had its class predictor re-initialised (AP 0.706 -> 0.168 after one step at lr 1e-9 in a
new-user pass); its rows are now permuted, so the reordered model detects what the file's did, class for class.
"""

import pytest
import torch

import scaledet
from scaledet.models.checkpoints import reorder_class_head

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
ORDER = [2, 0, 3, 1]  # the reordered model's class i is the file's class ORDER[i]


def _named_detections(model, images):
    """Per image, ``(class name, score, box)`` sorted: what the model detects, whatever its label order."""
    with torch.no_grad():
        outputs = model(images)
    return [sorted((model.class_names[int(label)], round(float(score), 4), tuple(round(float(v), 2) for v in box))
                   for box, score, label in zip(out["boxes"], out["scores"], out["labels"])) for out in outputs]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reordered_class_predictor_detects_the_same_classes(name):
    if name == "retinanet_r50_fpn":
        pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = scaledet.create_model(name, num_classes=4, class_names=NAMES, **FAMILIES[name]).eval()
    with torch.no_grad():  # confident, varied class scores, so that detections pass the score threshold
        for key, value in source.state_dict().items():
            if key.startswith(tuple(scaledet.models.registry.family_of(name).CHECKPOINT.class_head)):
                value.copy_(torch.randn_like(value) * (2.0 if key.endswith("bias") else 0.5))
    reordered = scaledet.create_model(name, num_classes=4, class_names=[NAMES[i] for i in ORDER],
                                      **FAMILIES[name]).eval()
    reordered.load_state_dict(source.state_dict())
    heads = reorder_class_head(reordered, ORDER)
    assert heads and set(heads) <= set(scaledet.models.registry.family_of(name).CHECKPOINT.class_head)
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    expected = _named_detections(source, images)
    assert sum(len(found) for found in expected) > 0
    assert _named_detections(reordered, images) == expected


def test_per_class_training_entries_are_reordered_and_a_bad_order_refused():
    torch.manual_seed(0)
    model = scaledet.create_model("detr_r50", num_classes=4, class_names=NAMES, **FAMILIES["detr_r50"])
    before = {key: value.clone() for key, value in model.state_dict().items()}
    reorder_class_head(model, ORDER)
    after = model.state_dict()
    assert torch.equal(after["denoising.label_embed.weight"], before["denoising.label_embed.weight"][ORDER])
    assert torch.equal(after["class_head.bias"][:4], before["class_head.bias"][ORDER])
    assert after["class_head.bias"][4] == before["class_head.bias"][4]  # "no object" stays last
    assert all(torch.equal(after[key], value) for key, value in before.items()
               if not key.startswith(("class_head.", "denoising.label_embed.")))
    with pytest.raises(ValueError, match=r"order must be a permutation of range\(4\)"):
        reorder_class_head(model, [0, 1, 1, 2])
