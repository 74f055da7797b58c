"""Decoded-image cache of the training set, and the CPU training defaults that make steps faster."""

import torch

from scaledet.data import open_dataset, write_shapes_coco
from scaledet.engine import Trainer, TrainConfig
from tests.fixtures import RectangleDataset, TinyDetector


def test_cache_decodes_each_image_once_and_serves_the_same_pixels(tmp_path):
    path = write_shapes_coco(tmp_path / "coco", "train", num_images=4, image_size=64)  # 8-bit PNG files
    plain = open_dataset(path)
    cached = open_dataset(path)
    cached.cache_images(10 * 2**20)
    calls = []
    original = cached.load_image
    cached.load_image = lambda index: calls.append(index) or original(index)
    for _ in range(3):
        for index in range(len(plain)):
            assert torch.equal(cached[index][0], plain[index][0])  # exact for 8-bit sources
    assert sorted(calls) == [0, 1, 2, 3]  # decoded once each


def test_cache_budget_is_respected(tmp_path):
    path = write_shapes_coco(tmp_path / "coco", "train", num_images=4, image_size=64)
    dataset = open_dataset(path)
    dataset.cache_images(2 * 3 * 64 * 64)  # room for two images
    for index in range(4):
        dataset[index]
    assert len(dataset._image_cache) == 2


def test_cpu_training_defaults_to_channels_last(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=1, batch_size=4, out=str(tmp_path), progress=False)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(8))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    off = TrainConfig.for_model("tiny", epochs=1, batch_size=4, out=str(tmp_path / "b"), channels_last=False)
    conv = next(m for m in Trainer(off, TinyDetector(), RectangleDataset(8)).model.modules()
                if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


def test_the_trainer_decodes_large_files_shrunk_but_keeps_a_rule_the_caller_set(tmp_path):
    path = write_shapes_coco(tmp_path / "coco", "train", num_images=4, image_size=64)
    config = TrainConfig.for_model("tiny", max_steps=1, batch_size=4, out=str(tmp_path / "run"), progress=False)
    default, own = open_dataset(path), open_dataset(path)

    def own_rule(height, width):
        return 0.25

    own.decode_shrunk(own_rule)
    for dataset in (default, own):
        Trainer(config, TinyDetector(num_classes=dataset.num_classes), dataset)
    assert default.decode_scale == "transforms" and own.decode_scale is own_rule
