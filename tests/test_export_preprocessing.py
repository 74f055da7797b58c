"""The preprocessing an exported file describes (metadata "preprocessing") is the preprocessing the model
runs: an interpreter of the description alone gives every family's graph inputs for odd image sizes."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scaledet.models import preprocessing
from scaledet.models.registry import build_for_processing

#: the functions the format allows in its expressions (scaledet.models.preprocessing)
FUNCTIONS = {"min": min, "max": max, "round": round, "int": int, "floor": math.floor, "ceil": math.ceil}


def evaluate(expression, names):
    return eval(expression, {"__builtins__": {}}, {**FUNCTIONS, **names})  # noqa: S307 (test of our own strings)


def feeds_from_description(spec, images):
    """What a deployer writes from the description alone: per image, the ``let`` names and the steps;
    then padding, the mask and the feeds."""
    assert spec["format"] == preprocessing.FORMAT
    processed, pads = [], []
    for image in images:
        names = {**spec["constants"], "h": image.shape[1], "w": image.shape[2]}
        for name, expression in spec["let"]:
            names[name] = evaluate(expression, names)
        x = image
        for step in spec["steps"]:
            if step["op"] == "resize":
                size = tuple(evaluate(step["size"], names))
                antialias = step["antialias"] if isinstance(step["antialias"], bool) else evaluate(step["antialias"], names)
                if size != tuple(x.shape[1:]):
                    x = F.interpolate(x[None], size=size, mode=step["interpolation"], align_corners=step["align_corners"],
                                      antialias=antialias)[0]
            elif step["op"] == "normalize":
                x = (x - torch.tensor(step["mean"])[:, None, None]) / torch.tensor(step["std"])[:, None, None]
            elif step["op"] == "pad":
                pads.append((step, names))
            else:
                raise AssertionError(f"unknown step {step['op']}")
        processed.append((x, names))
    if pads:
        step = pads[0][0]
        largest = (max(x.shape[1] for x, _ in processed), max(x.shape[2] for x, _ in processed))
        height, width = largest if step["to"] == preprocessing.LARGEST_IN_BATCH else evaluate(step["to"], pads[0][1])
        batch = torch.full((len(images), 3, height, width), float(step["value"]))
        mask = torch.ones(len(images), height, width, dtype=torch.bool)
        for index, (x, _) in enumerate(processed):
            batch[index, :, : x.shape[1], : x.shape[2]] = x
            mask[index, : x.shape[1], : x.shape[2]] = False
    else:
        batch, mask = torch.stack([x for x, _ in processed]), None
    feeds = {}
    for name, source in spec["feeds"].items():
        if source == preprocessing.BATCH:
            feeds[name] = batch
        elif source == preprocessing.PADDING_MASK:
            feeds[name] = mask
        else:
            feeds[name] = torch.tensor([evaluate(source, names) for _, names in processed], dtype=torch.float32)
    return feeds


CONFIGS = [
    {"model": "efficientdet_lite0", "image_size": [96, 128]},
    {"model": "efficientdet_d0", "image_size": [128, 128]},
    {"model": "detr_r50", "image_size": [64, 100]},
    {"model": "deformable_detr_r50", "image_size": [64, 100]},
    {"model": "rtdetr_r18vd", "image_size": [160, 160]},
    {"model": "retinanet_r50_fpn", "image_size": [128, 128]},
]


@pytest.mark.parametrize("config", CONFIGS, ids=[c["model"] for c in CONFIGS])
def test_the_described_preprocessing_gives_the_graph_inputs(config):
    model = build_for_processing(config)
    spec = json.loads(json.dumps(model.preprocessing_spec()))  # as stored: JSON
    generator = torch.Generator().manual_seed(0)
    # shrunk and enlarged, portrait and landscape, odd sizes (rounding), one the input size itself
    sizes = [(37, 201), (300, 61), (128, 128), (95, 96), (1, 1), (64, 100)]
    for height, width in sizes:
        if config["model"].startswith("retinanet") and min(height, width) < math.ceil(max(height, width) / 128) + 1:
            continue  # the strip torchvision's resize would floor to 0 pixels: stretched first (the description's note)
        images = [torch.rand(3, height, width, generator=generator), torch.rand(3, 50, 70, generator=generator)]
        expected = model.export_feeds(model.preprocess(images))
        described = feeds_from_description(spec, images)
        assert described.keys() == expected.keys()
        for name, value in expected.items():
            assert described[name].shape == value.shape, (name, height, width)
            if value.dtype == torch.bool:
                assert torch.equal(described[name], value.cpu()), name
            else:
                torch.testing.assert_close(described[name], value.cpu().float(), atol=1e-5, rtol=0, msg=name)


def test_an_exported_file_carries_the_description(tmp_path):
    onnx = pytest.importorskip("onnx")
    import scaledet
    from scaledet.export import export_onnx

    model = scaledet.create_model("efficientdet_lite0", num_classes=2, image_size=64)
    path = export_onnx(model.eval(), tmp_path / "m.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["preprocessing"]) == json.loads(json.dumps(model.preprocessing_spec()))
