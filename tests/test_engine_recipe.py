"""Recipe defaults per family, config merging, schedules, parameter groups, bad batches, time limit."""

import math

import pytest
import torch
from torch import nn

import scaledet
from scaledet.engine import Trainer, TrainConfig, build_param_groups
from scaledet.engine.schedule import LRSchedule
from tests.fixtures import RectangleDataset, TinyDetector


def test_lr_follows_the_global_batch_under_torchrun(monkeypatch):
    """``batch_size`` is per process: under torchrun (WORLD_SIZE, read before the process group
    exists) the row's lr is scaled to ``batch_size * grad_accum * processes``; an explicit lr stays."""
    single = TrainConfig.for_model("efficientdet_d0", epochs=1)  # AdamW row: 1.2e-2 at batch 8
    paper = TrainConfig.for_model("efficientdet_d0", epochs=1, recipe="paper")  # SGD: 0.16 at batch 128
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert TrainConfig.for_model("efficientdet_d0", epochs=1).lr == pytest.approx(1.2e-2)  # 4 x 2 = 8
    assert TrainConfig.for_model("efficientdet_d0", epochs=1).lr == pytest.approx(single.lr * 2**0.5)
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, recipe="paper").lr == pytest.approx(2 * paper.lr)
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, lr=3e-3).lr == 3e-3


def test_family_recipes():
    effdet = TrainConfig.for_model("efficientdet_d0", epochs=1, recipe="paper")
    assert (effdet.optimizer, effdet.schedule, effdet.momentum, effdet.weight_decay) == ("sgd", "cosine", 0.9, 4e-5)
    assert effdet.ema_decay == 0.9998 and effdet.warmup_epochs == 1.0
    assert (effdet.batch_size, effdet.lr) == (16, pytest.approx(0.02))  # 0.16 at batch 128, scaled linearly
    auto = TrainConfig.for_model("efficientdet_d0", epochs=1)
    assert auto.recipe == "auto" and (auto.batch_size, auto.optimizer, auto.warmup_fraction) == (4, "adamw", 0.1)
    assert auto.lr == pytest.approx(1.2e-2 / 2**0.5)  # given at batch 8, square-root scaled to 4
    assert auto.ema_decay is None and auto.bn_momentum is None and auto.warmup_epochs is None  # from the plan
    assert auto.model_overrides == {"backbone_drop_path_rate": 0.0}
    # the batch scales the learning rate (SGD linearly, AdamW by the square root) unless the lr is given
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, batch_size=32, grad_accum=2).lr == pytest.approx(1.2e-2 * 8**0.5)
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, batch_size=32, recipe="paper").lr == pytest.approx(0.04)
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, batch_size=32, lr=0.01).lr == 0.01
    assert TrainConfig.for_model("efficientdet_d0", epochs=1, model_overrides={"backbone_drop_path_rate": 0.1}
                                 ).model_overrides == {"backbone_drop_path_rate": 0.1}
    detr = TrainConfig.for_model("detr_r50", epochs=1, pretrained="coco")  # fine-tuning: the paper's backbone lr
    assert (detr.optimizer, detr.lr, detr.backbone_lr, detr.weight_decay) == ("adamw", 1e-4, 1e-5, 1e-4)
    assert (detr.clip_grad, detr.schedule, detr.lr_drop_at) == (0.1, "step", pytest.approx(2 / 3))
    assert TrainConfig.for_model("detr_r50", epochs=1, lr=5e-5).lr == 5e-5  # explicit values win
    paper = TrainConfig.for_model("detr_r50", epochs=1, recipe="paper")  # lr given at the paper's batch 4
    assert (paper.lr, paper.batch_size, paper.eval_every, paper.warmup_epochs) == (1e-4, 4, 1, 0.0)
    # a family without a row for the recipe (RetinaNet: no paper row) and unregistered names: the generic row
    assert TrainConfig.for_model("retinanet_r50_fpn", epochs=1, recipe="paper").optimizer == "adamw"
    assert TrainConfig.for_model("retinanet_r50_fpn", epochs=1).optimizer == "sgd"
    assert TrainConfig.for_model("tiny", epochs=1).lr == pytest.approx(1e-3)


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: detr_r50\nepochs: 3\nbatch-size: 2\nlr: 0.001\nmodel_overrides: {num_queries: 10}\n")
    config = TrainConfig.from_sources(path, lr=0.002, epochs=None)
    assert (config.model, config.epochs, config.batch_size, config.lr) == ("detr_r50", 3, 2, 0.002)
    assert config.model_overrides == {"backbone_norm": "batch", "backbone_trainable_layers": 5,  # from scratch
                                      "query_groups": 4, "denoising_groups": 5,
                                      "num_queries": 10} and config.optimizer == "adamw"


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(epochs=1, optimizer="rmsprop"), "optimizer must be one of"),
        (dict(epochs=1, lr=-1.0), "lr must be > 0"),
        (dict(epochs=0), "epochs must be > 0"),
        (dict(), "the run needs an end"),
        (dict(epochs=1, ema_decay=1.5), "ema_decay must be in"),
        (dict(epochs=1, freeze_bn_fraction=1.0), "freeze_bn_fraction must be in"),
        (dict(epochs=1, learning_rate=0.1), r"unknown training option\(s\): learning_rate \(did you mean lr\?\)"),
        (dict(epochs=1, imgsz=640, batch_sise=8, colour=1), r"option\(s\): batch_sise \(did you mean batch_size\?\), "
                                                          r"colour, imgsz \(did you mean image_size\?\)$"),
        (dict(epochs=1, recipe="fast"), "recipe must be one of"),
        (dict(epochs=1, warmup_fraction=1.5), "warmup_fraction must be in"),
    ],
)
def test_bad_options_name_the_problem(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.for_model("efficientdet_d0", **values)


def test_warmup_cosine_and_step_schedules():
    cosine = LRSchedule("cosine", warmup_steps=10, warmup_factor=0.1, min_ratio=0.0)
    assert cosine.factor(0, 0.0) == pytest.approx(0.1)
    assert cosine.factor(5, 0.05) == pytest.approx((0.1 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert cosine.factor(10, 0.5) == pytest.approx(0.5)
    assert cosine.factor(99, 1.0) == pytest.approx(0.0)
    by_progress = LRSchedule("cosine", warmup_fraction=0.1, warmup_factor=0.0)
    assert by_progress.factor(7, 0.05) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert by_progress.factor(8, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    step = LRSchedule("step", drop_at=2 / 3)
    assert [step.factor(0, p) for p in (0.0, 0.66, 0.67, 1.0)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]


class _WithGroups(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)

    def param_groups(self, lr, weight_decay, backbone_lr=None):  # the Detector contract's signature
        return [{"params": self.backbone.parameters(), "lr": lr / 10}, {"params": self.head.parameters()}]


def test_param_groups_from_model_or_default():
    config = TrainConfig.for_model("detr_r50", epochs=1)
    groups = build_param_groups(_WithGroups(), config)
    assert groups[0]["lr"] == pytest.approx(1e-5) and "lr" not in groups[1]
    plain = nn.Sequential()
    plain.backbone, plain.head = nn.Linear(2, 3), nn.Linear(3, 1)
    groups = build_param_groups(plain, TrainConfig.for_model("generic", epochs=1, backbone_lr=1e-5))
    shapes = {(g["lr"], g["weight_decay"]): [tuple(p.shape) for p in g["params"]] for g in groups}
    assert shapes == {(1e-3, 1e-4): [(1, 3)], (1e-3, 0.0): [(1,)], (1e-5, 1e-4): [(3, 2)], (1e-5, 0.0): [(3,)]}


class _PoisonedRectangles(RectangleDataset):
    """Sample 5 has NaN box coordinates: its batch's loss is NaN."""

    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        if index == 5:
            target["boxes"] = torch.full_like(target["boxes"], float("nan"))
        return image, target


def test_nan_batch_is_skipped_and_counted(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=2, batch_size=4, lr=0.05, optimizer="sgd", out=str(tmp_path),
                                   progress=False, ema_decay=0.5)
    trainer = Trainer(config, TinyDetector(), _PoisonedRectangles(16))
    with pytest.warns(UserWarning, match="skipped a bad batch"):
        metrics = trainer.fit()
    assert metrics["bad_batches"] == 2  # sample 5 is seen once per epoch
    assert metrics["steps"] == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.parameters())


def test_fp16_loss_scaler_overflow_backs_off_and_trains(tmp_path):
    """fp16 AMP (CUDA) starts with a loss scale that overflows; those steps are the scaler's to skip
    (scale halved), not bad batches, and training goes on. A scaler on the CPU plays the GPU's here:
    its first scale (2**127) overflows the gradients, the next ones do not."""
    config = TrainConfig.for_model("tiny", epochs=2, batch_size=4, lr=0.05, optimizer="sgd", out=str(tmp_path),
                                   progress=False, ema_decay=0.5)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(16))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.fit()
    assert metrics["steps"] == 8 and metrics["bad_batches"] == 0
    assert trainer.scaler.get_scale() < 2.0**127  # backed off
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # and stepped
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_max_minutes_stops_and_still_saves(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=10_000, max_minutes=0.01, batch_size=4, lr=0.05, optimizer="sgd",
                                   out=str(tmp_path), progress=False)
    metrics = Trainer(config, TinyDetector(), RectangleDataset(16)).fit()
    assert 0.6 <= metrics["wall_time_s"] < 30 and 0 < metrics["steps"] < 40_000
    assert (tmp_path / "last.pt").exists() and (tmp_path / "weights.safetensors").exists()
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "curves.png").exists()


def test_freeze_bn_fraction_fixes_batchnorm_statistics_at_the_end(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=4, batch_size=4, lr=0.05, optimizer="sgd", out=str(tmp_path),
                                   progress=False, ema_decay=0.0, freeze_bn_fraction=0.25)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(16))
    norms = [m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []

    def record(trainer, _record):  # after each of the 16 optimizer steps
        seen.append((trainer.step, [m.training for m in norms], [m.running_mean.clone() for m in norms]))
        trainer.model.train()  # as an evaluation between steps does

    trainer.callbacks.append(record)
    trainer.fit()
    frozen_steps = [step for step, modes, _ in seen if not any(modes)]
    assert frozen_steps == [13, 14, 15, 16]  # the last quarter, though train() was called after every step
    assert all(all(modes) for step, modes, _ in seen if step <= 12)
    statistics_at = {step: means for step, _, means in seen}
    for before, after in zip(statistics_at[12], statistics_at[16]):
        assert torch.equal(before, after)  # running statistics no longer updated
    for before, after in zip(statistics_at[11], statistics_at[12]):
        assert not torch.equal(before, after)


def test_too_small_training_set_is_a_clear_error(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=1, batch_size=8, out=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        Trainer(config, TinyDetector(), RectangleDataset(4))


def test_detr_plugs_in_with_its_recipe(tmp_path):
    import scaledet

    model = scaledet.create_model("detr_r50", num_classes=3, backbone="resnet18", hidden_dim=32, ffn_dim=64,
                                  enc_layers=1, dec_layers=1, num_queries=10, min_size=64, max_size=64,
                                  train_min_sizes=(64,))
    config = TrainConfig.for_model("detr_r50", epochs=1, batch_size=4, out=str(tmp_path), progress=False,
                                   pretrained="coco")  # fine-tuning: the paper's backbone lr / 10
    trainer = Trainer(config, model, RectangleDataset(8, image_size=64))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    lrs = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert lrs == [pytest.approx(1e-5), pytest.approx(1e-4)]
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in trainer.optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert in_backbone == ({True} if group["lr"] < 5e-5 else {False})
    assert trainer.schedule.kind == "step" and config.clip_grad == 0.1


@pytest.mark.parametrize("model, overrides", [
    ("detr_r50", {"backbone_norm": "batch", "backbone_trainable_layers": 5, "query_groups": 4, "denoising_groups": 5}),
    ("deformable_detr_r50", {"backbone_norm": "batch", "backbone_trainable_layers": 5}),
    ("rtdetr_r50vd", {"backbone_norm": "batch", "freeze_stem": False}),
    ("rtdetr_r18vd", {}), ("efficientdet_d0", {}),
])
def test_a_backbone_published_for_fine_tuning_trains_fully_from_scratch(model, overrides):
    """A fresh FrozenBatchNorm2d holds identity statistics: from scratch (no --pretrained) the auto recipe
    trains the backbone's BatchNorm, every stage, at the full lr; with weights, under --recipe paper, or
    where the user says otherwise, the published setting stays."""
    from scaledet.engine.recipe import family_recipe

    row = family_recipe(model)
    config = TrainConfig.for_model(model, max_steps=1)
    assert config.model_overrides == {**row.get("model_overrides", {}), **overrides}
    assert (config.backbone_lr == config.lr) if overrides else (config.backbone_lr == row.get("backbone_lr"))
    tuned = TrainConfig.for_model(model, max_steps=1, pretrained="weights.safetensors")
    assert tuned.model_overrides == row.get("model_overrides", {}) and tuned.backbone_lr == row.get("backbone_lr")
    paper = TrainConfig.for_model(model, max_steps=1, recipe="paper")
    assert paper.model_overrides == family_recipe(model, "paper").get("model_overrides", {})
    mine = TrainConfig.for_model(model, max_steps=1, backbone_lr=1e-6, model_overrides={"backbone_norm": "frozen"})
    assert mine.backbone_lr == 1e-6 and mine.model_overrides.get("backbone_norm", "frozen") == "frozen"
    if overrides:  # the model the engine builds from it has a BatchNorm backbone with every stage trainable
        built = scaledet.create_model(model, num_classes=2, **config.model_overrides)
        norms = [m for m in built.backbone.modules() if "BatchNorm" in type(m).__name__]
        assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
        assert all(p.requires_grad for p in built.backbone.parameters())


def test_the_python_trainer_refuses_what_it_cannot_apply(tmp_path):
    """Trainer(config, model, ...) trains the model it is given: a config made for another model (a lite0 trained
    with DETR's recipe, metrics.json saying detr_r50) or another input size is an error; a training set without
    a pipeline is a warning; placeholder class names take the data's (the weights said class_0 ...)."""
    from scaledet.data import shapes_split

    train = shapes_split("train", num_images=8, image_size=128)
    model = scaledet.create_model("efficientdet_lite0", num_classes=len(train.class_names), image_size=128)
    with pytest.raises(ValueError, match=r"the config is for detr_r50 and the model is efficientdet_lite0: .*"
                                         r"TrainConfig.for_model\('efficientdet_lite0'"):
        Trainer(TrainConfig.for_model("detr_r50", max_steps=1, out=str(tmp_path)), model, train)
    with pytest.raises(ValueError, match=r"config.image_size 96 but the model was built for \(128, 128\)"):
        Trainer(TrainConfig.for_model("efficientdet_lite0", image_size=96, max_steps=1, out=str(tmp_path)), model, train)
    config = TrainConfig.for_model("efficientdet_lite0", image_size=128, max_steps=1, out=str(tmp_path), progress=False)
    with pytest.warns(UserWarning, match="the training set has no transforms"):
        Trainer(config, model, train)
    assert model.class_names == train.class_names
