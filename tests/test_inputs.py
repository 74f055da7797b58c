"""The shared input checks (scaledet.models.inputs) apply to every family the same way."""

import pytest
import torch

from scaledet.models.inputs import check_images, check_targets


def test_batch_tensor_and_lists_are_accepted():
    images = check_images(torch.rand(2, 3, 8, 10))
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 8, 10)] * 2
    assert len(check_images((torch.rand(3, 4, 4), torch.rand(3, 6, 2)))) == 2


@pytest.mark.parametrize("images, message", [
    ([], "non-empty list"),
    (torch.rand(3, 8, 8), "got a tensor of shape \\(3, 8, 8\\)"),
    ([torch.rand(3, 0, 8)], "is empty"),
    ([torch.rand(3, 8, 8), torch.rand(3, 8, 8) - 0.5], "image 1 values must be in \\[0, 1\\]"),
    ([torch.full((3, 4, 4), float("inf"))], "NaN or infinite"),
])
def test_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        check_images(images)


def test_targets_name_the_offending_target():
    good = {"boxes": torch.tensor([[0.0, 0, 2, 2]]), "labels": torch.tensor([1])}
    check_targets([good, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 2, 2)
    with pytest.raises(ValueError, match="target 1 labels must be in \\[0, 2\\)"):
        check_targets([good, {"boxes": torch.tensor([[0.0, 0, 2, 2]]), "labels": torch.tensor([2])}], 2, 2)
    with pytest.raises(ValueError, match="got 2 images and 1 targets"):
        check_targets([good], 2, 2)
