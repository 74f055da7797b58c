"""Box-aware augmentation: flips, scale jitter with crop/pad, eval resize + pad, collate."""

import pytest
import torch
from torchvision import tv_tensors

from scaledet.data import ResizeCropPad, collate_fn, eval_transforms, train_transforms


def _sample(h=60, w=100):
    image = tv_tensors.Image(torch.rand(3, h, w))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 5.0, 30.0, 25.0], [70.0, 30.0, 95.0, 58.0]]), format="XYXY", canvas_size=(h, w)
    )
    return image, {"boxes": boxes, "labels": torch.tensor([3, 1]), "image_id": 9}


def test_horizontal_flip_mirrors_image_and_boxes():
    image, target = _sample()
    transform = train_transforms((60, 100), scale_range=(1.0, 1.0), hflip=1.0, photometric=False)
    out, out_target = transform(image, target)
    assert torch.equal(out, image.flip(-1))
    assert out_target["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0], [5.0, 30.0, 30.0, 58.0]]
    assert out_target["labels"].tolist() == [3, 1] and out_target["image_id"] == 9


def test_scale_jitter_shrinks_and_pads_bottom_right():
    image, target = _sample()
    out, out_target = ResizeCropPad((120, 120), scale_range=(0.5, 0.5))(image, target)
    # fit 60x100 into 60x60 (0.5 * 120): ratio 0.6 -> 36x60, padded with zeros to 120x120
    assert out.shape == (3, 120, 120)
    assert out[:, 36:].abs().sum() == 0 and out[:, :, 60:].abs().sum() == 0
    assert torch.allclose(out_target["boxes"], torch.tensor(target["boxes"].tolist()) * 0.6)


def test_scale_jitter_crop_clips_and_drops_degenerate_boxes():
    torch.manual_seed(0)
    kept_counts = set()
    for _ in range(40):
        image, target = _sample()
        out, out_target = train_transforms(64, scale_range=(1.5, 2.0), photometric=False)(image, target)
        boxes = out_target["boxes"]
        assert out.shape == (3, 64, 64)
        assert len(boxes) == len(out_target["labels"])
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()  # no degenerate box survives
        kept_counts.add(len(boxes))
    assert 0 in kept_counts or 1 in kept_counts  # the crop removed boxes at least once
    assert 2 in kept_counts or 1 in kept_counts


def test_train_transforms_photometric_changes_pixels_not_boxes():
    torch.manual_seed(1)
    image, target = _sample()
    out, out_target = train_transforms((60, 100), scale_range=(1.0, 1.0), hflip=0.0)(image, target)
    assert not torch.allclose(out, image)
    assert out_target["boxes"].tolist() == target["boxes"].tolist()


def test_eval_transforms_resize_longest_side_pad_and_scale_maps_back():
    image, target = _sample(h=60, w=100)
    out, out_target = eval_transforms(128)(image, target)
    assert out.shape == (3, 128, 128)
    assert out_target["scale"].tolist() == pytest.approx([1.28, 77 / 60, 1.28, 77 / 60])
    assert out[:, 77:].abs().sum() == 0  # 60 * 1.28 = 76.8 -> 77 rows of image, then padding
    back = torch.tensor(out_target["boxes"].tolist()) / out_target["scale"]
    assert torch.allclose(back, torch.tensor(target["boxes"].tolist()), atol=1e-4)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="image_size"):
        eval_transforms((0, 10))
    with pytest.raises(ValueError, match="scale_range"):
        ResizeCropPad(64, scale_range=(2.0, 1.0))


def test_collate_fn_keeps_lists():
    images, targets = collate_fn([_sample(), _sample(10, 20)])
    assert [tuple(i.shape) for i in images] == [(3, 60, 100), (3, 10, 20)]
    assert [t["image_id"] for t in targets] == [9, 9]


def test_dataloader_workers_batch_shapes_with_train_transforms():
    from torch.utils.data import DataLoader

    from scaledet.data import ShapesDataset

    dataset = ShapesDataset(num_images=8, image_size=64, seed=0, transforms=train_transforms(48))
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_fn))
    assert len(batches) == 2
    for images, targets in batches:
        assert all(type(image) is torch.Tensor and image.shape == (3, 48, 48) for image in images)
        assert all(type(t["boxes"]) is torch.Tensor and t["boxes"].dtype == torch.float32 for t in targets)
        assert all(len(t["boxes"]) == len(t["labels"]) and (t["boxes"] <= 48).all() for t in targets)
    assert sorted(t["image_id"] for _, targets in batches for t in targets) == list(range(8))
