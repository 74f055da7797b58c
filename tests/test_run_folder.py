"""One run per output folder (OUT/run.lock), and logs without replayed steps after --resume."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from scaledet.engine import Trainer, TrainConfig
from scaledet.engine.lock import LOCK_NAME, RunLock, pid_alive
from scaledet.engine.logging import RunLogger, read_log
from scaledet.errors import UserError
from tests.fixtures import RectangleDataset, TinyDetector


class _Killed(Exception):
    """Stands for the process dying in the middle of an epoch."""


def _trainer(out, callbacks=None, **overrides):
    # 20 samples / (batch 2 x accum 2) = 5 steps per epoch
    values = dict(epochs=3, batch_size=2, grad_accum=2, lr=0.05, optimizer="sgd", ema_decay=0.9, out=str(out),
                  progress=False, log_every=1)
    values.update(overrides)
    return Trainer(TrainConfig.for_model("tiny", **values), TinyDetector(), RectangleDataset(20), callbacks=callbacks)


def _die_at(step):
    def callback(trainer, record):
        if trainer.step == step:
            raise _Killed(f"died at step {step}")

    return callback


def _csv_column(path, name):
    with open(path, newline="") as handle:
        return [int(float(row[name])) for row in csv.DictReader(handle)]


def _write_lock(out, pid):
    out.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(owner))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


def test_resume_drops_the_replayed_steps_from_the_logs(tmp_path):
    # last.pt is written at the end of epoch 0 (step 5); the run dies after logging step 8
    with pytest.raises(_Killed):
        _trainer(tmp_path, callbacks=[_die_at(8)]).fit()
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "step"] == list(range(1, 9))

    resumed = _trainer(tmp_path, resume="auto")
    assert resumed.step == 5
    resumed.fit()
    records = read_log(tmp_path)
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 16))  # 6, 7, 8 once each
    assert _csv_column(tmp_path / "steps.csv", "step") == list(range(1, 16))
    assert _csv_column(tmp_path / "epochs.csv", "epoch") == [0, 1, 2, 2]  # the final record: the last epoch, 2
    assert (tmp_path / "steps.csv").read_text().count("step,") == 1  # one header
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_truncate_after_drops_a_line_cut_by_a_kill(tmp_path):
    logger = RunLogger(tmp_path)
    for step in (1, 2, 3):
        logger.log("step", {"step": step, "loss": 1.0})
    logger.close()
    with open(tmp_path / "log.jsonl", "a") as handle:
        handle.write('{"kind": "step", "st')  # the process died mid-line
    with open(tmp_path / "steps.csv", "a") as handle:
        handle.write("4")
    logger = RunLogger(tmp_path, append=True)
    logger.truncate_after(2)
    logger.log("step", {"step": 3, "loss": 0.5})
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_log(tmp_path)] == [(1, 1.0), (2, 1.0), (3, 0.5)]
    assert _csv_column(tmp_path / "steps.csv", "step") == [1, 2, 3]


def test_second_run_into_a_busy_folder_is_refused_at_once(tmp_path):
    _write_lock(tmp_path, os.getppid())  # a live process (our parent) holds the folder
    (tmp_path / "log.jsonl").write_text('{"kind": "step", "step": 1}\n')
    with pytest.raises(UserError, match=rf"is in use by another training run \(pid {os.getppid()} ") as info:
        _trainer(tmp_path)
    assert len(str(info.value).splitlines()) == 2 and str(tmp_path / LOCK_NAME) in str(info.value)
    assert len(read_log(tmp_path)) == 1  # the running run's log is untouched


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    _write_lock(tmp_path, _dead_pid())
    metrics = _trainer(tmp_path, max_steps=2).fit()
    assert metrics["steps"] == 2 and not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_another_process_then_killed(tmp_path):
    code = ("import sys, time; from scaledet.engine.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_column_that_appears_later_widens_the_csv_instead_of_being_dropped(tmp_path):
    """The demo evaluates only at the end: epochs.csv's first rows have no AP, the last one has."""
    logger = RunLogger(tmp_path)
    logger.log("epoch", {"epoch": 0, "step": 4, "time": 1.0})
    logger.log("epoch", {"epoch": 1, "step": 8, "time": 2.0, "AP": 0.25, "AP50": 0.5})
    logger.log("epoch", {"epoch": 2, "step": 12, "time": 3.0})
    logger.close()
    assert _csv_column(tmp_path / "epochs.csv", "step") == [4, 8, 12]
    assert (tmp_path / "epochs.csv").read_text().splitlines() == [
        "epoch,step,time,AP,AP50", "0,4,1.0,,", "1,8,2.0,0.25,0.5", "2,12,3.0,,"]
