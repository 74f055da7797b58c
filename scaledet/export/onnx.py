"""ONNX export with post-processing (and NMS for EfficientDet) inside the graph, and an
onnxruntime wrapper with the detector contract.

Graphs (batch dimension dynamic, opset >= 17):

* EfficientDet: inputs ``images [B, 3, H, W]`` (normalised, resized and padded to the model's
  ``image_size``) and ``valid_sizes [B, 2]`` float (h, w of the real image inside, network pixels);
  outputs ``batch_index [M]`` int64, ``boxes [M, 4]`` xyxy network pixels, ``scores [M]``,
  ``labels [M]`` int64 - per image at most ``max_detections``, by descending score. Inside: the
  network, top-k, box decoding, clipping and one ONNX ``NonMaxSuppression`` (per class via
  coordinate offsets).
* DETR: inputs ``images [B, 3, H, W]`` (normalised, padded), ``mask [B, H, W]`` bool (True on
  padding) and ``image_sizes [B, 2]`` float (h, w of each original image); outputs ``boxes
  [B, Q, 4]`` xyxy original-image pixels, ``scores [B, Q]``, ``labels [B, Q]`` sorted by score.
  DETR has no NMS (set prediction); all Q queries are returned as the eager model does.

The model's config (name, classes, sizes) is stored in the file's metadata, so
:class:`OnnxDetector` needs only the file.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from scaledet.export.nms_op import ONNX_TRANSLATIONS

MIN_OPSET = 17


class EfficientDetExport(nn.Module):
    """Network + top-k + decode + clip + NMS, export-friendly (static top-k, constant anchors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.network = model.network
        variant = model.variant
        self.num_classes = model.num_classes
        self.register_buffer("anchors", model.anchors_for(model.image_size).clone(), persistent=False)
        self.max_points = min(variant.max_detection_points, self.anchors.shape[0] * self.num_classes)
        self.max_detections = variant.max_detections
        self.iou_threshold = variant.nms_iou
        self.class_offset = float(max(model.image_size) + 1)

    def forward(self, images: Tensor, valid_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from scaledet.models.efficientdet.anchors import decode_boxes
        from scaledet.models.efficientdet.head import flatten_outputs

        cls_out, box_out = self.network(images)
        cls_logits = flatten_outputs(cls_out, self.num_classes)  # [B, A, K]
        box_codes = flatten_outputs(box_out, 4)  # [B, A, 4]
        logits, flat = cls_logits.flatten(1).topk(self.max_points, dim=1)  # [B, k]
        anchor_index, labels = flat // self.num_classes, flat % self.num_classes
        codes = torch.gather(box_codes, 1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
        boxes = decode_boxes(codes, self.anchors[anchor_index])  # [B, k, 4]
        limit = valid_sizes.flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        scores = logits.sigmoid()
        shifted = boxes + (labels.to(boxes.dtype) * self.class_offset).unsqueeze(-1)
        keep = torch.ops.scaledet.batched_nms(shifted, scores, self.max_detections, self.iou_threshold)
        image, index = keep[:, 0], keep[:, 1]
        return image, boxes[image, index], scores[image, index], labels[image, index]


class DetrExport(nn.Module):
    """DETR network + softmax scores + pixel boxes sorted by score."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from torchvision.ops import box_convert

        logits, boxes, _ = self.model.forward_features(images, mask)
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, Q]
        scale = image_sizes.flip(-1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] (w, h, w, h)
        boxes = box_convert(boxes, "cxcywh", "xyxy") * scale
        scores, order = scores.topk(scores.shape[1], dim=1)
        boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, scores, torch.gather(labels, 1, order)


def _family(model: nn.Module) -> str:
    from scaledet.models.detr.model import DETR
    from scaledet.models.efficientdet.model import EfficientDet

    if isinstance(model, EfficientDet):
        return "efficientdet"
    if isinstance(model, DETR):
        return "detr"
    raise ValueError(f"ONNX export supports scaledet EfficientDet and DETR models, got {type(model).__name__}")


def _example_inputs(model: nn.Module, family: str, size: tuple[int, int]) -> tuple[Tensor, ...]:
    images = torch.zeros(2, 3, *size)
    if family == "efficientdet":
        return images, torch.tensor([list(size)] * 2, dtype=torch.float32)
    return images, torch.zeros(2, *size, dtype=torch.bool), torch.tensor([list(size)] * 2, dtype=torch.float32)


def export_onnx(model: nn.Module, path: str | Path, opset: int = 18, input_size: tuple[int, int] | None = None,
                verbose: bool = False) -> Path:
    """Export ``model`` to ``path`` (see the module docstring for the graph's inputs and outputs).

    Args:
        model: scaledet EfficientDet or DETR.
        opset: ONNX opset, >= 17.
        input_size: DETR's padded input (h, w) (default ``(min_size, max_size)``); EfficientDet always
            uses its ``image_size``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (got {opset})")
    family = _family(model)
    model = model.eval()
    if family == "efficientdet":
        wrapper, size = EfficientDetExport(model), tuple(model.image_size)
        names = (["images", "valid_sizes"], ["batch_index", "boxes", "scores", "labels"])
    else:
        wrapper, size = DetrExport(model), tuple(input_size or model.image_size)
        names = (["images", "mask", "image_sizes"], ["boxes", "scores", "labels"])
    inputs = _example_inputs(model, family, size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if family == "efficientdet":
        dynamic = ({0: batch}, {0: batch})
    else:  # DETR pads each batch to its largest image, as the eager model does
        height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
        dynamic = ({0: batch, 2: height, 3: width}, {0: batch, 1: height, 2: width}, {0: batch})
    with torch.no_grad():
        program = torch.onnx.export(wrapper.eval(), inputs, dynamo=True, opset_version=opset, input_names=names[0],
                                    output_names=names[1], dynamic_shapes=dynamic,
                                    custom_translation_table=ONNX_TRANSLATIONS, verbose=verbose, external_data=False)
    metadata = {"family": family, "config": json.dumps(model.config), "input_size": json.dumps(list(size))}
    if family == "efficientdet":
        metadata["mean"] = json.dumps(model.mean.flatten().tolist())
        metadata["std"] = json.dumps(model.std.flatten().tolist())
    program.model.metadata_props.update(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


class OnnxDetector:
    """Runs an exported file with onnxruntime behind the detector contract:
    ``detector(list of float Tensor[3, H, W] in [0, 1]) -> list[dict(boxes xyxy px, scores, labels)]``.

    Pre-processing (resize, normalise, pad) reuses the model family's own code; ``class_names``,
    ``category_ids``, ``num_classes``, ``image_size`` and ``config`` come from the file's metadata
    (files exported before ``category_ids`` was stored get the family's default ids).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "family" not in meta:
            raise ValueError(f"{path} is not a scaledet ONNX export (no 'family' metadata)")
        self.family = meta["family"]
        self.config = json.loads(meta["config"])
        self.input_size = tuple(json.loads(meta["input_size"]))
        self.class_names, self.num_classes = self.config["class_names"], self.config["num_classes"]
        self.category_ids = self.config.get("category_ids") or self._default_category_ids()
        self.image_size = tuple(self.config["image_size"])
        if self.family == "efficientdet":
            mean, std = (torch.tensor(json.loads(meta[k])).view(3, 1, 1) for k in ("mean", "std"))
            self._eff = types.SimpleNamespace(image_size=self.input_size, mean=mean, std=std)

    def _default_category_ids(self) -> list[int]:
        from scaledet.models.detr.model import default_category_ids
        from scaledet.models.inputs import category_ids_for

        return default_category_ids(self.num_classes) if self.family == "detr" else category_ids_for(None, self.num_classes)

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self._efficientdet(images) if self.family == "efficientdet" else self._detr(images)

    def _efficientdet(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        from scaledet.models.efficientdet.model import EfficientDet
        from scaledet.models.inputs import check_images

        images = check_images(images)
        batch, scales, valid = EfficientDet.preprocess(self._eff, [image.float().cpu() for image in images])
        feeds = {"images": batch.numpy(), "valid_sizes": torch.tensor(valid, dtype=torch.float32).numpy()}
        image, boxes, scores, labels = (torch.from_numpy(x) for x in self.session.run(None, feeds))
        results = []
        for i, scale in enumerate(scales):
            keep = image == i
            results.append({"boxes": boxes[keep] / scale, "scores": scores[keep], "labels": labels[keep]})
        return results

    def _detr(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        from scaledet.models.detr.preprocess import Preprocessor
        from scaledet.models.inputs import check_images

        images = check_images(images)
        min_size, max_size = self.image_size
        batch, mask = Preprocessor(min_size, max_size)([image.float().cpu() for image in images])
        sizes = torch.tensor([list(image.shape[1:]) for image in images], dtype=torch.float32)
        feeds = {"images": batch.numpy(), "mask": mask.numpy(), "image_sizes": sizes.numpy()}
        boxes, scores, labels = (torch.from_numpy(x) for x in self.session.run(None, feeds))
        return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(boxes, scores, labels)]
