"""The shared input checks (scaledet.models.inputs) apply to every family the same way."""

import dataclasses

import pytest
import torch

from scaledet.models.inputs import check_images, check_option_names, check_targets, typed_options


def test_batch_tensor_and_lists_are_accepted():
    images = check_images(torch.rand(2, 3, 8, 10))
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 8, 10)] * 2
    assert len(check_images((torch.rand(3, 4, 4), torch.rand(3, 6, 2)))) == 2


def test_other_float_types_become_float32():
    """float64 / float16 images passed the check and failed inside the first convolution (a mixed batch took
    the first image's type)."""
    image = torch.rand(3, 4, 4)
    checked = check_images([image.double(), image.half(), image])
    assert [i.dtype for i in checked] == [torch.float32] * 3 and checked[2] is image
    assert torch.equal(checked[0], image)


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
    # a box wholly outside its image (here 1000-1200 px on 300 x 200) raised the loss silently; all boxes in [0, 1]
    far = {"boxes": torch.tensor([[1000.0, 10, 1200, 50]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match=r"target 1 has a box \[1000.0, 10.0, 1200.0, 50.0\] wholly outside its "
                                         r"image \(300x200\)"):
        check_targets([good, far], 2, 2, [(200, 300), (200, 300)])
    normalised = {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.9]]), "labels": torch.tensor([0])}
    with pytest.warns(UserWarning, match=r"every target box lies within \[0, 1\]: boxes are xyxy pixels"):
        check_targets([normalised], 1, 2, [(200, 300)])
    with pytest.raises(ValueError, match=r"target 0 boxes and labels must be tensors \(torch.tensor\(...\)\), got list"):
        check_targets([{"boxes": [[0.0, 0, 2, 2]], "labels": torch.tensor([0])}], 1, 2)
    edge = {"boxes": torch.tensor([[0.0, 0, 300, 200], [300.0, 0, 300, 10]]), "labels": torch.tensor([0, 1])}
    check_targets([edge], 1, 2, [(200, 300)])  # touching the border is inside


@dataclasses.dataclass(frozen=True)
class _Variant:
    depth: int = 1
    sizes: tuple[int, ...] = (1, 2)
    image_size: tuple[int, int] = (8, 8)


def test_option_names_are_checked_against_the_variant_and_json_lists_become_tuples():
    assert typed_options({"sizes": [3, 4], "depth": 2}, _Variant, "Toy") == {"sizes": (3, 4), "depth": 2}
    check_option_names(["depth"], _Variant(), "Toy")  # an instance works like the class
    with pytest.raises(ValueError, match=r"unknown Toy option\(s\) \['colour', 'width'\]; valid: \['depth', 'image_size', 'sizes'\]"):
        typed_options({"width": 1, "colour": 2, "depth": 3}, _Variant, "Toy")
    with pytest.raises(ValueError, match=r"unknown Toy option\(s\) \['image_size'\]; valid: \['depth', 'sizes'\]"):
        check_option_names(["image_size"], _Variant, "Toy", exclude=("image_size",))
