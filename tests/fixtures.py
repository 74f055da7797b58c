"""A tiny detector and dataset that follow the project's contracts, for fast engine tests.

Imported by the tests (``from tests.fixtures import ...``; pytest puts the repository root on
``sys.path``) and by ``benchmarks/train_speed.py``; not part of the installed package.

``TinyDetector`` predicts one box per image (enough to exercise losses, optimizers, EMA, BatchNorm
buffers, checkpoints and DDP in milliseconds). ``RectangleDataset`` draws one coloured rectangle per
image deterministically from its index, with a random horizontal flip (torch RNG) as augmentation.
Neither is meant for real detection.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TinyDetector(nn.Module):
    """Conv-BN-ReLU x2 -> global pool -> (class logits [K], box [4] as sigmoid cx, cy, w, h).

    Inputs: list of float ``[3,S,S]`` images (all the same size). Train: ``loss_cls`` (cross-entropy
    on the first target box's label) + ``loss_box`` (L1 on its normalised cxcywh).
    """

    def __init__(self, num_classes: int = 3, image_size: int = 32, width: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = (image_size, image_size)
        self.class_names = [f"class{i}" for i in range(num_classes)]
        self.config = {"model": "tiny", "num_classes": num_classes, "class_names": self.class_names,
                       "image_size": [image_size, image_size], "overrides": {"width": width}}
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes + 4)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        batch = torch.stack(images)  # [B, 3, S, S]
        out = self.head(self.features(batch))  # [B, K + 4]
        logits, boxes = out[:, : self.num_classes], out[:, self.num_classes :].sigmoid()
        size = batch.new_tensor([self.image_size[1], self.image_size[0]] * 2)
        if targets is None:
            return self._detections(logits, boxes, size)
        labels = torch.stack([t["labels"][0] for t in targets])
        wanted = torch.stack([_xyxy_to_cxcywh(t["boxes"][0]) for t in targets]) / size
        loss_cls = F.cross_entropy(logits, labels)
        loss_box = F.l1_loss(boxes, wanted)
        return {"loss": loss_cls + 5 * loss_box, "loss_cls": loss_cls, "loss_box": loss_box}

    def _detections(self, logits: torch.Tensor, boxes: torch.Tensor, size: torch.Tensor) -> list[dict]:
        scores, labels = logits.softmax(-1).max(-1)
        cx, cy, w, h = (boxes * size).unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        return [{"boxes": xyxy[i : i + 1], "scores": scores[i : i + 1], "labels": labels[i : i + 1]}
                for i in range(len(xyxy))]


def _xyxy_to_cxcywh(box: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = box.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


class RectangleDataset(torch.utils.data.Dataset):
    """``length`` images ``[3,S,S]``, each with one rectangle of class ``index % num_classes``.

    Class k is drawn in colour channel k; position and size follow from ``seed`` and the index.
    ``augment`` flips horizontally with probability 0.5 using torch's global RNG.
    """

    def __init__(self, length: int = 32, image_size: int = 32, num_classes: int = 3, seed: int = 0,
                 augment: bool = True) -> None:
        self.length, self.size, self.num_classes, self.seed, self.augment = length, image_size, num_classes, seed, augment
        self.class_names = [f"class{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        s = self.size
        image = torch.rand(3, s, s, generator=generator) * 0.2
        w, h = (torch.randint(s // 4, s // 2, (2,), generator=generator)).tolist()
        x0, y0 = torch.randint(0, s - w, (1,), generator=generator).item(), torch.randint(0, s - h, (1,), generator=generator).item()
        label = index % self.num_classes
        image[label % 3, y0 : y0 + h, x0 : x0 + w] = 1.0
        boxes = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32)
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], -1)
        target = {"boxes": boxes, "labels": torch.tensor([label]), "image_id": index, "orig_size": (s, s)}
        return image, target




def resnet_detector(name: str, image_size: tuple[int, int]) -> nn.Module:
    """A registered ResNet-backbone detector (``detr_r50``, ``retinanet_r50_fpn``, ``rtdetr_r18vd``...) in
    eval mode, 4 classes, with non-trivial BatchNorm statistics (so that folding them is tested) and,
    for RetinaNet, class biases that let random heads score above the detection threshold."""
    import scaledet
    from torchvision.ops import FrozenBatchNorm2d

    options = {"num_queries": 20} if name.startswith("detr") else {}
    model = scaledet.create_model(name, num_classes=4, image_size=image_size, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
        if name.startswith("retinanet"):
            model.net.head.classification_head.cls_logits.bias.normal_(-2.0, 1.0)
    return model
