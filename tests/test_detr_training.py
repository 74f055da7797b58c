"""DETR's matcher and set loss (properties from the official test-suite) and a tiny overfit run."""

import itertools

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou

import scaledet
from scaledet.evaluation import evaluate_detections
from scaledet.models.detr.criterion import SetCriterion
from scaledet.models.detr.matcher import HungarianMatcher


def _random_boxes(n, generator):
    centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centres, sizes], dim=1)


def _random_problem(num_targets=(3, 0, 5), queries=8, classes=4):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(len(num_targets), queries, classes + 1, generator=generator)
    boxes = torch.stack([_random_boxes(queries, generator) for _ in num_targets])
    targets = [{"boxes": _random_boxes(n, generator), "labels": torch.randint(0, classes, (n,), generator=generator)}
               for n in num_targets]
    return logits, boxes, targets


def _cost(matcher, logits, boxes, target, rows, cols):
    probs = logits.softmax(-1)[rows, target["labels"][cols]]
    l1 = (boxes[rows] - target["boxes"][cols]).abs().sum(-1)
    giou = generalized_box_iou(box_convert(boxes[rows], "cxcywh", "xyxy"),
                               box_convert(target["boxes"][cols], "cxcywh", "xyxy")).diagonal()
    return float((-matcher.cost_class * probs + matcher.cost_bbox * l1 - matcher.cost_giou * giou).sum())


def test_matcher_batched_equals_per_image_and_is_optimal():
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    logits, boxes, targets = _random_problem()
    batched = matcher(logits, boxes, targets)
    for index, target in enumerate(targets):
        rows, cols = matcher(logits[index:index + 1], boxes[index:index + 1], [target])[0]
        assert torch.equal(rows, batched[index][0]) and torch.equal(cols, batched[index][1])
        assert len(rows) == len(target["labels"]) and len(set(rows.tolist())) == len(rows)
    assert batched[1][0].numel() == 0  # the image without targets
    # brute force over every injective assignment for image 0 (3 targets, 8 queries)
    best = min(_cost(matcher, logits[0], boxes[0], targets[0], torch.tensor(perm), torch.arange(3))
               for perm in itertools.permutations(range(8), 3))
    rows, cols = batched[0]
    assert _cost(matcher, logits[0], boxes[0], targets[0], rows, cols) == pytest.approx(best, abs=1e-5)


def test_loss_terms_on_known_values():
    criterion = SetCriterion(num_classes=2, matcher=HungarianMatcher(), eos_coef=0.1)
    target_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    boxes = torch.tensor([[[0.3, 0.3, 0.1, 0.2], [0.9, 0.9, 0.1, 0.1], [0.52, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]])
    targets = [{"boxes": target_boxes, "labels": torch.tensor([0, 1])}]
    losses = criterion(logits, boxes, [], targets)
    # matching: query 2 -> target 0, query 0 -> target 1, query 1 unmatched (no-object)
    assert losses["loss_bbox"].item() == pytest.approx(0.02 / 2, abs=1e-6)
    expected_giou = (1 - generalized_box_iou(box_convert(boxes[0, 2:], "cxcywh", "xyxy"),
                                             box_convert(target_boxes[:1], "cxcywh", "xyxy"))[0, 0]) / 2
    assert losses["loss_giou"].item() == pytest.approx(expected_giou.item(), abs=1e-6)
    expected_ce = F.cross_entropy(logits[0], torch.tensor([1, 2, 0]), weight=torch.tensor([1.0, 1.0, 0.1]))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), abs=1e-6)
    total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert losses["loss"].item() == pytest.approx(total.item(), abs=1e-6)


def test_empty_targets():
    criterion = SetCriterion(num_classes=4, matcher=HungarianMatcher())
    logits, boxes, _ = _random_problem((0, 0))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = criterion(logits, boxes, [(logits, boxes)], empty)
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_bbox_0"] == 0
    no_object = -logits.log_softmax(-1)[..., -1].mean()  # every query's target is no-object
    assert losses["loss_ce"].item() == pytest.approx(no_object.item(), abs=1e-6)

    model = scaledet.create_model("detr_r50", num_classes=4, backbone="resnet18", hidden_dim=32, num_heads=2,
                                  ffn_dim=64, enc_layers=1, dec_layers=2, num_queries=5, min_size=64, max_size=96)
    losses = model.train()([torch.rand(3, 50, 70), torch.rand(3, 64, 64)], empty)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and model.class_head.weight.grad.abs().sum() > 0


# --- tiny overfit: the matcher and losses must drive AP50 on a handful of images above 0.9 ---

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.2, 1.0]])


def _rectangles(num_images=4, size=128):
    """Grey images with 1-2 solid rectangles; the class is the colour."""
    generator = torch.Generator().manual_seed(1)
    images, targets = [], []
    for index in range(num_images):
        image = torch.full((3, size, size), 0.5)
        boxes, labels = [], []
        for number in range(1 + index % 2):
            width, height = torch.randint(24, 56, (2,), generator=generator).tolist()
            x0 = int(torch.randint(0, size - width, (1,), generator=generator))
            y0 = int(torch.randint(0, size - height, (1,), generator=generator))
            label = (index + number) % 3
            image[:, y0:y0 + height, x0:x0 + width] = COLOURS[label][:, None, None]
            boxes.append([x0, y0, x0 + width, y0 + height])
            labels.append(label)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def _coco(images, targets, detections):
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": str(c)} for c in range(3)]}
    results = []
    for image_id, (image, target, found) in enumerate(zip(images, targets, detections)):
        gt["images"].append({"id": image_id, "height": image.shape[1], "width": image.shape[2]})
        for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": label,
                                      "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for (x0, y0, x1, y1), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    return gt, results


def test_tiny_detr_overfits_a_handful_of_images():
    images, targets = _rectangles()
    model = scaledet.create_model("detr_r50", num_classes=3, backbone="resnet18", hidden_dim=64, num_heads=4,
                                  ffn_dim=128, enc_layers=1, dec_layers=2, num_queries=10, dropout=0.0,
                                  min_size=0, train_min_sizes=())  # min_size=0: images used at their own size
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-3, backbone_lr=1e-4, weight_decay=1e-4))
    model.train()
    first = None
    for _ in range(150):  # ~25 s on one idle core; AP50 = 1.0 for torch seeds 0, 1 and 2
        losses = model(images, targets)
        first = first if first is not None else losses["loss"].item()
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert losses["loss"].item() < 0.2 * first
    with torch.no_grad():
        detections = model.eval()(images)
    stats = evaluate_detections(*_coco(images, targets, detections))
    assert stats["AP50"] > 0.9, stats


def test_training_engine_trains_detr_with_its_recipe(tmp_path):
    """The engine reads DETR's recipe, uses model.param_groups (backbone at lr/10) and saves a model
    that create_model rebuilds."""
    from scaledet.data import ShapesDataset
    from scaledet.engine import TrainConfig, Trainer, build_optimizer
    from scaledet.models.detr import RECIPES

    train = ShapesDataset(num_images=8, seed=0, image_size=64, max_objects=2)
    model = scaledet.create_model("detr_r50", num_classes=4, image_size=64, max_size=64, train_min_sizes=(),
                                  backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1,
                                  dec_layers=2, num_queries=5)
    model.class_names = list(train.class_names)
    config = TrainConfig.for_model("detr_r50", max_steps=3, batch_size=4, out=str(tmp_path), progress=False,
                                   eval_every=0)
    recipe = RECIPES["auto"]
    assert (config.lr, config.weight_decay, config.clip_grad) == (recipe["lr"], recipe["weight_decay"], recipe["clip_grad"])
    optimizer = build_optimizer(model, config)
    # from scratch (no pretrained weights) the backbone trains at the full lr (recipes.from_scratch)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([recipe["lr"], recipe["lr"]])
    before = model.transformer.decoder_norm.weight.detach().clone()
    metrics = Trainer(config, model, train, None).fit()
    assert metrics["steps"] == 3 and metrics["bad_batches"] == 0
    assert not torch.equal(before, model.transformer.decoder_norm.weight)
    reloaded = scaledet.create_model("detr_r50", pretrained=tmp_path / "weights.safetensors")
    assert reloaded.class_names == list(train.class_names) and reloaded.image_size == (64, 64)
    assert torch.equal(reloaded.transformer.decoder_norm.weight, model.transformer.decoder_norm.weight)


def test_committed_from_scratch_config_builds_the_documented_model():
    """benchmarks/detr_shapes.yaml (the README's DETR learning result) parses, keeps the DETR recipe
    where it says nothing, builds a ResNet-18 DETR whose whole backbone trains with BatchNorm, and
    its augmentation is DETR's own pipeline."""
    import types
    from pathlib import Path

    from scaledet.engine import TrainConfig
    from scaledet.engine.run import add_train_transforms, build_model
    from scaledet.models.detr.transforms import RandomSizeCrop

    config = TrainConfig.from_sources(Path(__file__).parents[1] / "benchmarks" / "detr_shapes.yaml", max_minutes=15)
    assert (config.optimizer, config.lr, config.backbone_lr, config.clip_grad) == ("adamw", 2e-4, 2e-4, 0.1)
    model = build_model(config, ["circle", "square", "triangle", "cross"])
    backbone = model.backbone
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert model.query_embed.num_embeddings == 20 and len(model.transformer.decoder) == 3
    assert model.image_size == (128, 128) and model.preprocessor.train_min_sizes == (104, 112, 120, 128)
    dataset = types.SimpleNamespace(transforms=None)
    add_train_transforms(dataset, config, model)
    assert any(isinstance(step, RandomSizeCrop) for step in dataset.transforms.transforms)
    model.train()
    losses = model([torch.rand(3, 128, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]),
                                                "labels": torch.tensor([2])}])
    assert torch.isfinite(losses["loss"])


def _boxes_target(boxes, size):
    from torchvision import tv_tensors

    return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                              canvas_size=size),
            "labels": torch.arange(len(boxes))}


def test_random_size_crop_draws_the_official_region_at_the_image_size():
    """The crop keeps 384..600 px where the shorter side is 400..600 px, at any image size, without
    resizing; boxes are clipped to it and boxes left outside are dropped with their labels."""
    from torchvision import tv_tensors

    from scaledet.models.detr.transforms import RandomSizeCrop, train_transforms

    crop = RandomSizeCrop(p=1.0)
    torch.manual_seed(0)
    for height, width in ((96, 96), (480, 640), (1000, 300)):
        for _ in range(20):
            top, left, h, w = crop.make_params([tv_tensors.Image(torch.zeros(3, height, width))])["region"]
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            short = min(height, width)  # a crop side is 384..600 px where the shorter side is 400..600 px
            for side, full in ((h, height), (w, width)):
                assert 384 / 600 * short - 1 <= side <= min(full, 600 / 400 * short + 1)
    pipeline = train_transforms(hflip=0.0, crop=1.0)
    image = tv_tensors.Image(torch.rand(3, 100, 100))
    target = _boxes_target([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 80.0, 80.0]], (100, 100))
    torch.manual_seed(3)
    for _ in range(10):
        out_image, out_target = pipeline(image, dict(target))
        assert 63 <= out_image.shape[-2] <= 100 and 63 <= out_image.shape[-1] <= 100  # no resize, no padding
        boxes = out_target["boxes"]
        assert len(boxes) == len(out_target["labels"]) >= 1 and 1 in out_target["labels"].tolist()
        assert (boxes[:, 2] <= out_image.shape[-1]).all() and (boxes[:, 3] <= out_image.shape[-2]).all()
    assert train_transforms(hflip=0.0, crop=0.0)(image, dict(target))[0].shape == (3, 100, 100)


def test_train_from_config_gives_detr_its_own_pipeline(tmp_path):
    """``scaledet train`` for DETR: the training set gets DETR's flip + random crop at each image's own
    size (no EfficientDet scale jitter, no padding to a fixed size; the auto recipe's scale /
    colour jitter are not DETR's), the input size is not fitted to the data, and a run trains."""
    from scaledet.data import shapes_split
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import add_train_transforms, train_from_config
    from scaledet.models.detr.transforms import RandomSizeCrop

    overrides = {"backbone": "resnet18", "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "enc_layers": 1,
                 "dec_layers": 1, "num_queries": 10}
    config = TrainConfig.for_model("detr_r50", max_steps=2, batch_size=2, image_size=128, out=str(tmp_path),
                                   progress=False, eval_every=0, threads=1, model_overrides=overrides)
    train = shapes_split("train", num_images=4, image_size=96)
    val = shapes_split("val", num_images=2, image_size=96)
    metrics = train_from_config(config, train, val)
    assert metrics["steps"] == 2 and metrics["bad_batches"] == 0
    steps = [type(step) for step in train.transforms.transforms]
    assert RandomSizeCrop in steps and not any("ResizeCropPad" in step.__name__ or "ColorJitter" in step.__name__
                                              for step in steps)
    model = scaledet.create_model("detr_r50", pretrained=tmp_path / "weights.safetensors")
    assert model.image_size == (128, 213)  # --image-size is DETR's shorter side, not fitted to the 96 px data
    torch.manual_seed(0)
    sizes = {tuple(train[index][0].shape[-2:]) for index in range(4) for _ in range(3)}
    assert all(61 <= h <= 96 and 61 <= w <= 96 for h, w in sizes) and (96, 96) in sizes  # 384 / 600 * 96 = 61.4

    with pytest.raises(ValueError, match="does not take \\['scale_range'\\]"):
        add_train_transforms(train, TrainConfig.for_model("detr_r50", max_steps=1, augment={"scale_range": (0.5, 2)}),
                             model)
