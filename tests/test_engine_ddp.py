"""DDP: two CPU processes (gloo) train in lock-step with identical parameters and a falling loss."""

import json
import os

import torch
import torch.multiprocessing as mp

from scaledet.engine import Trainer, TrainConfig
from scaledet.engine.distributed import free_port
from tests.fixtures import RectangleDataset, TinyDetector


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    history = []

    def check(trainer, record):
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        torch.distributed.all_gather(gathered, flat)
        history.append({"step": record["step"], "loss": record["loss"],
                        "max_diff": max(float((g - flat).abs().max()) for g in gathered)})

    config = TrainConfig.for_model("tiny", epochs=6, batch_size=4, lr=0.05, optimizer="sgd", ema_decay=0.0,
                                   out=out, progress=False, sync_bn=True, seed=0)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(24), callbacks=[check])
    metrics = trainer.fit()
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump({"history": history, "metrics": metrics, "samples": len(trainer.sampler)}, handle)
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_stay_identical_and_learn(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["metrics"]["world_size"] == 2
        assert result["samples"] == 12  # DistributedSampler: each rank sees half of the 24 samples
        history = result["history"]
        assert len(history) == 18  # 6 epochs x (12 samples / batch 4)
        assert all(entry["max_diff"] == 0.0 for entry in history)
        first, last = sum(h["loss"] for h in history[:3]), sum(h["loss"] for h in history[-3:])
        assert last < 0.7 * first, (first, last)
    # losses are averaged over ranks, so both ranks log the same numbers
    assert [h["loss"] for h in results[0]["history"]] == [h["loss"] for h in results[1]["history"]]


def _ctrl_c_worker(rank: int, world: int, port: int, out: str) -> None:
    import signal

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def ctrl_c_on_rank_1(trainer, record):
        if rank == 1 and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    config = TrainConfig.for_model("tiny", epochs=6, batch_size=4, lr=0.05, optimizer="sgd", ema_decay=0.0,
                                   out=out, progress=False, seed=0)
    trainer = Trainer(config, TinyDetector(), RectangleDataset(24), callbacks=[ctrl_c_on_rank_1])
    try:
        trainer.fit()
        stopped = "finished"
    except KeyboardInterrupt:
        stopped = "interrupted"
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump({"stopped": stopped, "step": trainer.step, "asked": trainer.interrupted}, handle)
    torch.distributed.destroy_process_group()


def test_ctrl_c_on_one_rank_ends_every_rank_after_the_same_step(tmp_path):
    """Ctrl-C seen by one process: all stop after that step (no rank left waiting in a collective) and
    rank 0 saves it, mid-epoch."""
    from scaledet.engine.checkpoint import load_training_checkpoint

    mp.spawn(_ctrl_c_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["stopped"] for r in results] == ["interrupted", "interrupted"] and [r["step"] for r in results] == [2, 2]
    state = load_training_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 2 and state["epoch"] == 0 and state["batch_in_epoch"] == 2  # 3 steps per epoch


def test_processes_flag_passes_every_option_to_its_processes():
    from scaledet.cli import build_parser
    from scaledet.commands.train import command_line

    parser = build_parser()
    args = parser.parse_args(["train", "--train", "a.json", "--val", "b.json", "--lr", "0.012", "--image-size", "256",
                              "--no-amp", "--channels-last", "--resume", "--processes", "2", "--threads", "1"])
    again = parser.parse_args(["train", *command_line(args)])
    assert {**vars(again), "processes": 2} == vars(args)


def test_train_command_with_two_processes(tmp_path, capsys):
    """``scaledet train --processes 2`` trains with two DDP ranks (one thread each) and evaluates once;
    a user's mistake fails both processes with the one-line message and a non-zero status, no hang."""
    from scaledet.cli import main
    from tests.test_train_cli import TINY_EFFICIENTDET, write_tiny_run

    config, train_json, val_json = write_tiny_run(tmp_path, {"model": "efficientdet_d0", "image_size": 64,
                                                             "model_overrides": TINY_EFFICIENTDET})
    common = ["train", "--config", str(config), "--batch-size", "2", "--epochs", "2", "--no-progress",
              "--processes", "2", "--threads", "1"]
    out = tmp_path / "run"
    assert main([*common, "--train", str(train_json), "--val", str(val_json), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4  # 8 images / (2 ranks x batch 2) x 2 epochs
    assert (out / "weights.safetensors").is_file()
    # the metrics are those of the weights written: each rank scored its shard with rank 0's EMA statistics
    assert main(["eval", "--weights", str(out / "weights.safetensors"), "--data", str(val_json),
                 "--json", str(tmp_path / "stats.json")]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [stats[key] for key in ("AP", "AP50", "AR1", "AR10", "AR100")] == [
        metrics[key] for key in ("AP", "AP50", "AR1", "AR10", "AR100")]

    assert main([*common, "--train", str(tmp_path / "missing.json"), "--out", str(tmp_path / "bad")]) != 0


def _locked_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = TrainConfig.for_model("tiny", epochs=1, batch_size=4, ema_decay=0.0, out=out, progress=False)
    try:
        Trainer(config, TinyDetector(), RectangleDataset(8))
        outcome = "trained"
    except SystemExit as stop:
        outcome = f"SystemExit {stop.code}"
    except Exception as error:  # noqa: BLE001 - the test reads which one
        outcome = f"{type(error).__name__}: {error}"
    with open(f"{out}/../rank{rank}.txt", "w") as handle:
        handle.write(outcome)
    torch.distributed.destroy_process_group()


def test_an_output_folder_in_use_stops_every_rank_with_rank_0_s_error(tmp_path):
    """Only rank 0 locks the folder; the others must end quietly with it, not on a broken collective."""
    from scaledet.engine.lock import RunLock

    out = tmp_path / "run"
    lock = RunLock(out)
    lock.acquire()  # another live run (this process) holds the folder
    try:
        mp.spawn(_locked_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    finally:
        lock.release()
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert rank0.startswith("UserError") and "in use" in rank0, rank0
    assert rank1 == "SystemExit 2"


_LAUNCHER = """
import sys
from scaledet.engine.distributed import run_processes
child = ("import os, sys, time; open(sys.argv[1] + '/' + str(os.getpid()), 'w').close()\\n"
         "try:\\n    time.sleep(60)\\nexcept KeyboardInterrupt:\\n    sys.exit(130)")
try:
    sys.exit(run_processes([sys.executable, "-c", child, sys.argv[1]], [{}, {}]))
except KeyboardInterrupt as stop:
    print(type(stop).__name__)
    sys.exit(130)
"""


def test_sigterm_to_the_launcher_stops_its_processes(tmp_path):
    """``scaledet train --processes K`` killed with SIGTERM (a scheduler, ``kill``) must not leave its K
    processes training on their own: they get Ctrl-C and end (as after Ctrl-C, naming the checkpoint)."""
    import signal
    import subprocess
    import sys
    import time

    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    children = [int(path.name) for path in tmp_path.iterdir()]
    assert len(children) == 2
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130 and output.strip() == "LauncherStopped"
    for pid in children:  # reaped by the launcher: gone, not re-parented and still running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"process {pid} outlived its launcher")


def test_after_a_terminal_s_ctrl_c_the_launcher_waits_for_a_slow_step(monkeypatch):
    """A step (and its checkpoint) may take longer than the grace a signal gets; after a terminal's Ctrl-C the
    launcher waits until its processes end (the person can press Ctrl-C again); otherwise the grace holds."""
    import subprocess
    import sys
    import time

    from scaledet.engine import distributed

    monkeypatch.setattr(distributed, "INTERRUPT_GRACE_S", 0.3)
    slow = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    children = [subprocess.Popen(slow) for _ in range(2)]
    distributed._interrupt(children, reached=True, grace_s=None)  # a terminal's Ctrl-C reached them already
    assert all(child.poll() == 0 for child in children)  # ended by themselves: the step was saved
    children = [subprocess.Popen(slow) for _ in range(2)]
    try:
        start = time.monotonic()
        distributed._interrupt(children, reached=True, grace_s=distributed.INTERRUPT_GRACE_S)
        assert time.monotonic() - start < 1.2 and any(child.poll() is None for child in children)
    finally:
        for child in children:
            child.kill()
            child.wait()
