"""The default (auto) recipe: plan-relative values, time budgets, input size from the data, seeds."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from scaledet.data import ImageRecord
from scaledet.engine import Trainer, TrainConfig
from scaledet.engine.recipe import augmentation_for, box_statistics, eval_interval, fitted_input_size, plan_values
from tests.fixtures import RectangleDataset, TinyDetector


def test_plan_values_follow_the_run_length():
    short, medium, long = plan_values(90), plan_values(1000), plan_values(200_000)
    assert short.ema_decay == pytest.approx(0.9) and medium.ema_decay == pytest.approx(0.99)
    assert long.ema_decay == pytest.approx(0.9998)  # the paper's value for long runs
    assert short.bn_momentum == 0.1 and medium.bn_momentum == pytest.approx(0.1) and long.bn_momentum == 0.01
    assert eval_interval(100) == 25 and eval_interval(2) == 1


def test_augmentation_grows_with_the_budget_and_spares_small_objects():
    assert augmentation_for(10) == augmentation_for(40) == {"scale_range": (0.9, 1.1), "photometric": False}
    assert augmentation_for(41) == augmentation_for(100) == {"scale_range": (0.75, 1.33), "photometric": False}
    assert augmentation_for(200) == {"scale_range": (0.5, 1.5), "photometric": True}
    assert augmentation_for(301) == {"scale_range": (0.1, 2.0), "photometric": True}
    assert augmentation_for(301, median_box_fraction=0.03)["scale_range"] == (0.9, 2.0)


def _record(height, width, boxes):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return ImageRecord(None, 1, width, height, boxes, np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool))


def test_input_size_fitted_to_the_data():
    same = [_record(224, 384, [[0, 0, 20, 20]]), _record(224, 384, [[10, 10, 50, 30]])]
    stats = box_statistics(same)
    assert stats["same_size"] and stats["median_box_fraction"] == pytest.approx(np.median([20, np.sqrt(800)]) / 384)
    assert fitted_input_size(stats, (512, 512)) == (256, 384)  # aspect kept, multiples of the largest stride
    mixed = [_record(300, 200, []), _record(200, 300, []), _record(250, 250, [])]
    assert fitted_input_size(box_statistics(mixed), (512, 512)) == (384, 384)
    big = [_record(2000, 3000, [])]
    assert fitted_input_size(box_statistics(big), (512, 512)) == (384, 512)  # never above native
    # scaled to fit before rounding: VGA fills (384, 512) as 800x600 does, not a (512, 512) a third padding
    for height, width in ((480, 640), (600, 800)):
        assert fitted_input_size(box_statistics([_record(height, width, [])]), (512, 512)) == (384, 512)
    assert fitted_input_size(box_statistics([_record(640, 480, [])]), (512, 512)) == (512, 384)
    assert fitted_input_size(box_statistics([_record(120, 160, [])]), (512, 512)) == (128, 256)  # never downscaled
    # photos of several sizes, one orientation: their shape, not a square a quarter padding; a few portraits
    # among them (under 5%) are scaled down to fit, a third of them make it square
    phones = [_record(3024, 4032, []), _record(3000, 4000, []), _record(2448, 3264, []), _record(1080, 1920, [])] * 10
    assert fitted_input_size(box_statistics(phones), (512, 512)) == (384, 512)
    assert fitted_input_size(box_statistics(phones + [_record(4032, 3024, [])]), (512, 512)) == (384, 512)
    assert fitted_input_size(box_statistics(phones + [_record(4032, 3024, [])] * 20), (512, 512)) == (512, 512)


def test_time_budget_plans_finishes_warmup_and_anneals(tmp_path):
    """A --max-minutes run of any length: the plan is estimated, warm-up ends, the lr anneals to ~0."""
    lrs = []
    config = TrainConfig.for_model("tiny", max_minutes=0.05, batch_size=4, lr=0.05, optimizer="sgd",
                                   warmup_fraction=0.1, out=str(tmp_path), progress=False)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(16), callbacks=[lambda t, r: lrs.append(r["lr"])])
    assert trainer.plan is None  # unknown until the step time is measured
    metrics = trainer.fit()
    assert trainer.plan is not None and trainer.plan.steps > 10
    assert metrics["steps"] == len(lrs) > 10
    assert max(lrs) > 0.95 * 0.05  # warm-up completed
    assert lrs[-1] < 0.05 * 0.05  # annealed by the end of the budget
    assert trainer.eval_every >= 1


def test_epoch_budget_plan_is_exact(tmp_path):
    config = TrainConfig.for_model("tiny", epochs=5, batch_size=4, lr=0.05, optimizer="sgd", out=str(tmp_path),
                                   progress=False)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(16))
    assert trainer.plan.steps == 20 and trainer.planned_epochs() == 5
    assert trainer.plan.ema_decay == pytest.approx(0.9) and trainer.eval_every == 2


def test_default_train_fits_the_input_size_to_the_data(tmp_path):
    from scaledet.data import shapes_split
    from scaledet.engine.run import prepare_model

    train = shapes_split("train", num_images=4, image_size=96)
    model = prepare_model(TrainConfig.for_model("efficientdet_d0", max_steps=1, out=str(tmp_path)), train)
    assert tuple(model.image_size) == (128, 128)
    paper = TrainConfig.for_model("efficientdet_d0", max_steps=1, recipe="paper", out=str(tmp_path))
    assert tuple(prepare_model(paper, train).image_size) == (512, 512)  # the paper recipe keeps the native size


_TRAIN = """
import sys
from scaledet.cli import main
sys.exit(main(["train", "--train", "shapes:train", "--val", "shapes:val", "--model", "efficientdet_d0",
               "--image-size", "64", "--max-steps", "2", "--batch-size", "2", "--seed", "7", "--threads", "1",
               "--config", sys.argv[2], "--out", sys.argv[1], "--no-progress"]))
"""


def test_same_seed_same_run_across_processes(tmp_path):
    """Two processes, same seed and settings: the same initial weights and the same trained weights."""
    options = tmp_path / "options.yaml"
    options.write_text(json.dumps({"data_options": {"num_images": 8, "image_size": 64}, "eval_max_images": 2}))
    for name in ("a", "b"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", _TRAIN, str(tmp_path / name), str(options)], check=True, env=env,
                       capture_output=True, timeout=300)
    first, second = (load_file(tmp_path / name / "weights.safetensors") for name in ("a", "b"))
    assert first.keys() == second.keys()
    assert all((first[key] == second[key]).all() for key in first)
    logs = [(tmp_path / name / "log.jsonl").read_text().splitlines()[0] for name in ("a", "b")]
    assert json.loads(logs[0])["loss"] == json.loads(logs[1])["loss"]  # step 1: same init, same batch


def test_idle_threads_counts_busy_cores_now():
    from scaledet.engine.recipe import _busy_cores, idle_threads

    cores = len(os.sched_getaffinity(0))
    assert 1 <= idle_threads(0.05) <= cores
    busy = _busy_cores(0.05, os.cpu_count())
    assert busy is None or 0.0 <= busy <= os.cpu_count()


def test_max_steps_before_the_epochs_end_warns_that_the_run_ends_unannealed(tmp_path):
    """--epochs 2 --max-steps 4: max_steps is a stop (resume tests rely on it), the plan follows the epochs,
    so the run is told it will end un-annealed."""
    from scaledet.engine import Trainer, TrainConfig
    from tests.fixtures import RectangleDataset, TinyDetector

    config = TrainConfig.for_model("tiny", epochs=2, max_steps=4, batch_size=2, lr=0.05, optimizer="sgd",
                                   out=str(tmp_path), progress=False)
    with pytest.warns(UserWarning, match="--max-steps 4 stops the run before the 24 steps of --epochs 2"):
        Trainer(config, TinyDetector(), RectangleDataset(24))  # 12 steps per epoch
