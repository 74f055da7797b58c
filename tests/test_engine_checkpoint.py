"""Checkpoints: exact resume, atomic writes, safe loading, RNG round trip."""

import os
import random
import signal

import numpy as np
import pytest
import torch

from scaledet.engine import Trainer, TrainConfig
from scaledet.engine import checkpoint as ckpt
from scaledet.evaluation import STAT_KEYS
from tests.fixtures import RectangleDataset, TinyDetector


def _train(out, max_steps=None, resume=None, **overrides):
    torch.manual_seed(0)
    values = dict(epochs=3, batch_size=2, grad_accum=2, lr=0.05, optimizer="sgd", ema_decay=0.9, out=str(out),
                  max_steps=max_steps, resume=resume, progress=False, log_every=1)
    values.update(overrides)
    trainer = Trainer(TrainConfig.for_model("tiny", **values), TinyDetector(), RectangleDataset(20))
    return trainer, trainer.fit()


@pytest.mark.parametrize("optimizer, workers", [("sgd", 0), ("adamw", 1)])
def test_resume_mid_epoch_gives_identical_weights(tmp_path, optimizer, workers):
    # 20 samples / (batch 2 x accum 2) = 5 steps per epoch; stop at step 7 = inside epoch 1.
    # The straight run loads in the main process, the interrupted one in a worker process
    # (or vice versa): augmentation is seeded per sample, so the order and flips must agree.
    straight, metrics = _train(tmp_path / "straight", optimizer=optimizer, workers=0)
    assert metrics["steps"] == 15
    first, _ = _train(tmp_path / "resumed", max_steps=7, optimizer=optimizer, workers=workers)
    assert first.step == 7 and first.epoch == 1
    resumed, _ = _train(tmp_path / "resumed", resume="auto", optimizer=optimizer, workers=workers)
    assert resumed.step == 15
    for name, expected in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], expected), name
    for name, expected in straight.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], expected), name
    # the run without the stop really trained: weights moved away from the initial ones
    torch.manual_seed(0)
    initial = TinyDetector().state_dict()["head.weight"]
    assert not torch.allclose(initial, straight.model.state_dict()["head.weight"])


class CtrlCDataset(RectangleDataset):
    """Loading its first sample after ``armed`` appears, it sends SIGINT to the training process and to
    the process loading it, as a terminal's Ctrl-C reaches the whole process group (data workers too)."""

    def __init__(self, armed, **kwargs):
        super().__init__(**kwargs)
        self.armed = armed

    def __getitem__(self, index):
        if self.armed.exists():
            self.armed.unlink()
            trainer_pid = os.getppid() if torch.utils.data.get_worker_info() is not None else os.getpid()
            os.kill(trainer_pid, signal.SIGINT)
            if trainer_pid != os.getpid():
                os.kill(os.getpid(), signal.SIGINT)
        return super().__getitem__(index)


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_ends_the_step_saves_there_and_resume_is_exact(tmp_path, workers):
    """Ctrl-C inside an epoch: the step in progress ends, last.pt is written there (not the epoch end's: up
    to an epoch lost) and resuming it gives the weights of the run without the interruption. A data worker
    that got the Ctrl-C too keeps loading the batches that step needs."""
    straight, _ = _train(tmp_path / "straight")
    armed = tmp_path / "armed"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        torch.manual_seed(0)
        config = TrainConfig.for_model("tiny", epochs=3, batch_size=2, grad_accum=2, lr=0.05, optimizer="sgd",
                                       ema_decay=0.9, out=str(tmp_path / "run"), progress=False, log_every=1,
                                       workers=workers)
        # armed after step 6: the Ctrl-C comes while step 7 (inside epoch 1) loads its batches
        arm = lambda trainer, record: armed.touch() if record["step"] == 6 else None  # noqa: E731
        trainer = Trainer(config, TinyDetector(), CtrlCDataset(armed, length=20), callbacks=[arm])
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
    state = ckpt.load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert trainer.interrupted and 7 <= state["step"] <= 10 and state["epoch"] == 1 and state["batch_in_epoch"] > 0
    resumed, _ = _train(tmp_path / "run", resume="auto", workers=workers)
    assert resumed.step == 15
    for name, expected in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], expected), name


def _ctrl_c_run(tmp_path, **overrides):
    """A run as _train's with a Ctrl-C handler as in a terminal; (trainer, its last.pt state) after the stop."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        torch.manual_seed(0)
        config = TrainConfig.for_model("tiny", epochs=3, batch_size=2, grad_accum=2, lr=0.05, optimizer="sgd",
                                       ema_decay=0.9, out=str(tmp_path / "run"), progress=False, log_every=1,
                                       eval_every=1)
        trainer = Trainer(config, TinyDetector(), RectangleDataset(20), **overrides)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    return trainer, ckpt.load_training_checkpoint(tmp_path / "run" / "last.pt")


def _assert_resumes_exactly(tmp_path):
    straight, _ = _train(tmp_path / "straight", eval_every=1)
    resumed, _ = _train(tmp_path / "run", resume="auto", eval_every=1)
    assert resumed.step == 15
    for name, expected in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], expected), name


def test_ctrl_c_in_an_epoch_end_evaluation_saves_the_step_it_followed(tmp_path):
    """Stopped at once, as evaluations may be long, but not losing the epoch: last.pt is the state after the
    epoch's last step (before, it stayed the previous epoch end's)."""
    def evaluation_with_a_ctrl_c(trainer):
        if trainer.step == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return dict.fromkeys(STAT_KEYS, 0.0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "run_evaluation", evaluation_with_a_ctrl_c)
        trainer, state = _ctrl_c_run(tmp_path, val_set=RectangleDataset(8))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (10, 2, 0)
    _assert_resumes_exactly(tmp_path)


def test_ctrl_c_while_an_epoch_end_saves_stops_after_the_next_step(tmp_path):
    trainer_saves = Trainer.save

    def save_with_a_ctrl_c(trainer, name="last.pt"):
        if trainer.step == 5 and not trainer.interrupted:  # the epoch end's write
            os.kill(os.getpid(), signal.SIGINT)
        return trainer_saves(trainer, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "save", save_with_a_ctrl_c)
        patch.setattr(Trainer, "run_evaluation", lambda trainer: dict.fromkeys(STAT_KEYS, 0.0))
        trainer, state = _ctrl_c_run(tmp_path, val_set=RectangleDataset(8))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)
    _assert_resumes_exactly(tmp_path)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        def twice(trainer, record):
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the first asks the step to end ...
                os.kill(os.getpid(), signal.SIGINT)  # ... the second does not wait for it
        config = TrainConfig.for_model("tiny", epochs=3, batch_size=2, out=str(tmp_path / "run"), progress=False)
        trainer = Trainer(config, TinyDetector(), RectangleDataset(20), callbacks=[twice])
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.step == 2 and not (tmp_path / "run" / "last.pt").exists()  # nothing half-saved


def test_checkpoint_loads_with_weights_only_and_has_everything(tmp_path):
    trainer, _ = _train(tmp_path, max_steps=3)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "epoch", "step", "rng"} <= set(state)
    assert state["step"] == 3 and state["batch_in_epoch"] == 6
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_crash_mid_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_torch_save({"model": {"w": torch.ones(3)}, "step": 1}, path)

    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(handle.tell() // 2)  # half the bytes reached the disk ...
        raise KeyboardInterrupt("killed mid-write")  # ... and the process died

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_torch_save({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    state = ckpt.load_training_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_killed_writer_process_leaves_previous_checkpoint(tmp_path):
    """A real SIGKILL while a large checkpoint is being written."""
    import subprocess
    import sys
    import time

    path = tmp_path / "last.pt"
    ckpt.atomic_torch_save({"model": {"w": torch.ones(3)}, "step": 1}, path)
    code = (
        "import torch, sys; from scaledet.engine.checkpoint import atomic_torch_save\n"
        "big = {'model': {f'w{i}': torch.zeros(1_000_000) for i in range(40)}, 'step': 2}\n"
        "print('ready', flush=True)\n"
        f"while True: atomic_torch_save(big, {str(path)!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    process.kill()
    process.wait()
    state = ckpt.load_training_checkpoint(path)  # old (step 1) or a complete new one (step 2)
    assert state["step"] in (1, 2)
    if state["step"] == 2:
        assert len(state["model"]) == 40


def test_rng_state_round_trip():
    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_not_a_training_checkpoint(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a scaledet training checkpoint"):
        ckpt.load_training_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        ckpt.load_training_checkpoint(tmp_path / "missing.pt")
    assert not os.path.exists(tmp_path / "missing.pt")


def test_logs_restart_for_a_new_run_and_continue_on_resume(tmp_path):
    from scaledet.engine.logging import read_log

    _train(tmp_path, max_steps=4)
    _train(tmp_path, max_steps=4)  # a new run in the same folder replaces the log
    steps = [r["step"] for r in read_log(tmp_path) if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]
    _train(tmp_path, max_steps=6, resume="auto")
    steps = [r["step"] for r in read_log(tmp_path) if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "steps.csv").read_text().count("step,") == 1  # one header


def test_checkpoints_and_weights_get_the_permissions_of_a_plain_file(tmp_path):
    """Written through a temporary file (0o600) and moved into place: still readable as the umask allows."""
    from scaledet.weights import save_weights

    old = os.umask(0o022)
    try:
        ckpt.atomic_torch_save({"model": {"w": torch.ones(3)}, "step": 1}, tmp_path / "last.pt")
        save_weights({"w": torch.ones(3)}, tmp_path / "w.safetensors", {"model": "efficientdet_d0"})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("last.pt", "w.safetensors", "plain.txt")}
    assert modes == {"last.pt": 0o644, "w.safetensors": 0o644, "plain.txt": 0o644}


def test_resuming_a_finished_run_trains_no_step_more(tmp_path):
    """A run stopped in its final evaluation (or resumed when done) resumes at its last step: it writes its
    outputs again, with no step trained beyond --max-steps and one final record in the logs."""
    from scaledet.engine.logging import read_log

    finished, _ = _train(tmp_path, max_steps=4)
    weights = {name: tensor.clone() for name, tensor in finished.model.state_dict().items()}
    resumed, metrics = _train(tmp_path, max_steps=4, resume="auto")
    assert resumed.step == 4 and metrics["steps"] == 4
    assert all(torch.equal(resumed.model.state_dict()[name], tensor) for name, tensor in weights.items())
    records = read_log(tmp_path)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert sum(1 for r in records if r.get("final")) == 1
    assert (tmp_path / "epochs.csv").read_text().count("\n") == 1 + 1  # the header and one final row


def test_the_final_record_numbers_its_epoch_as_the_epoch_records_do(tmp_path):
    """2 epochs of 5 steps: epoch rows 0 and 1, the final row (same step as the last) epoch 1, not 2."""
    from scaledet.engine.logging import read_log

    _train(tmp_path, epochs=2)
    rows = [(r["epoch"], r["step"], bool(r.get("final"))) for r in read_log(tmp_path) if r["kind"] == "epoch"]
    assert rows == [(0, 5, False), (1, 10, False), (1, 10, True)]


def test_resume_refuses_another_process_count_or_other_class_names(tmp_path):
    """The step / epoch counts and the image order depend on the number of processes; a class head read
    under other names relabels every detection. Both are refused, not resumed silently."""
    from scaledet.errors import UserError

    model_config = {"model": "tiny", "num_classes": 2, "image_size": [64, 64], "overrides": {},
                    "class_names": ["cat", "dog"]}
    state = {"world_size": 2, "config": {}, "model_config": model_config}
    with pytest.raises(UserError, match=r"trained as 2 process\(es\) and this run has 1: .* --processes 2"):
        ckpt.check_resume("last.pt", state, {}, model_config, world_size=1)
    assert ckpt.check_resume("last.pt", state, {}, model_config, world_size=2) == []
    renamed = {**model_config, "class_names": ["dog", "cat"]}
    with pytest.raises(UserError, match=r"trained on the classes \[cat, dog\]; the data now gives \[dog, cat\]"):
        ckpt.check_resume("last.pt", state, {}, renamed, world_size=2)
    assert ckpt.check_resume("last.pt", {**state, "world_size": None}, {}, model_config) == []  # older checkpoints


def test_resume_given_a_run_folder_means_its_last_checkpoint(tmp_path):
    assert ckpt.resume_path(tmp_path / "out", "auto") == tmp_path / "out" / "last.pt"
    assert ckpt.resume_path(tmp_path / "out", str(tmp_path)) == tmp_path / "last.pt"
    assert ckpt.resume_path(tmp_path / "out", str(tmp_path / "best.pt")) == tmp_path / "best.pt"


def test_a_run_removes_what_killed_checkpoint_saves_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (out / ".notes.tmp").write_bytes(b"the user's")
    config = TrainConfig.for_model("tiny", max_steps=1, batch_size=4, ema_decay=0.0, out=str(out), progress=False)
    Trainer(config, TinyDetector(), RectangleDataset(8))
    assert not (out / ".last.pt.abc123.tmp").exists() and (out / ".notes.tmp").exists()
