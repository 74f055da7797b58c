"""torch.distributed helpers: set-up from torchrun's environment, rank queries, reductions.

``torchrun --nproc_per_node=K -m scaledet train ...`` (or ``scaledet train --processes K``, whose
:func:`launch_local` starts the K processes itself) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_from_env` then starts a process group (gloo on CPU, NCCL on CUDA). Without those
variables everything runs in one process and the helpers are no-ops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from scaledet.errors import UserError


def resolve_device(name: str) -> torch.device:
    """The device ``name`` gives this process: ``"auto"`` -> the local CUDA device if any (per LOCAL_RANK
    under torchrun), else the CPU; any other name is checked (UserError for a misspelt name or a CUDA
    device this machine does not have, instead of torch's error at the first tensor moved)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device {name!r} is not a device name: use cpu, cuda, cuda:1, ... or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device {name!r}: this machine has no usable CUDA device (use cpu or auto)")
        if device.index is not None and device.index >= count:
            raise UserError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK`` (before set-up), else 0."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def world_size() -> int:
    """The number of processes: the process group's, else torchrun's ``WORLD_SIZE`` (before
    set-up), else 1."""
    if is_distributed():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main() -> bool:
    return rank() == 0


def launch_local(processes: int, scaledet_args: list[str], threads: int | None = None) -> int:
    """Run ``python -m scaledet *scaledet_args`` as ``processes`` DDP processes on this machine (what
    ``torchrun --standalone --nproc-per-node=processes`` does, without its error dumps); returns 0
    when every process succeeded, else the first failure's exit status (the others are stopped).

    Each process runs ``threads`` torch threads; by default ``OMP_NUM_THREADS`` if set, else this
    machine's idle cores divided among the processes (at least 1 each), so K processes do not
    oversubscribe the cores one process would have used.
    """
    from scaledet.engine.recipe import idle_threads

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if threads is None:
        threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() \
            else max(1, idle_threads() // processes)
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(processes),
                  "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(threads)}
    return run_processes([sys.executable, "-m", "scaledet", *scaledet_args],
                         [{**os.environ, **rendezvous, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                          for rank in range(processes)])


def run_processes(command: list[str], environments: list[dict[str, str]]) -> int:
    """Run ``command`` once per environment and wait: 0 when every process succeeded, else the first
    failure's exit status (the others are stopped). Ctrl-C, SIGTERM or SIGHUP here stop them too: they
    get Ctrl-C and time to end (finish a step, write a checkpoint), then are terminated: as long as they take
    after a terminal's Ctrl-C (a person is there to press it again), :data:`INTERRUPT_GRACE_S` seconds
    otherwise; the interruption is raised again (:class:`LauncherStopped` for the signals)."""
    children = [subprocess.Popen(command, env=environment) for environment in environments]
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python allows handlers
    previous = {signum: signal.signal(signum, _stop_launcher) for signum in STOP_SIGNALS} if in_main_thread else {}
    try:
        while True:
            codes = [child.poll() for child in children]
            failed = [code for code in codes if code not in (None, 0)]
            if failed or all(code == 0 for code in codes):
                return failed[0] if failed else 0
            time.sleep(0.2)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or LauncherStopped for the signals
        # each process stops as after Ctrl-C: it ends its step, saves, names the checkpoint to resume from
        from_terminal = not isinstance(interrupt, LauncherStopped) and _in_foreground_of_a_terminal()
        _interrupt(children, reached=from_terminal, grace_s=None if from_terminal else INTERRUPT_GRACE_S)
        raise
    finally:  # a failed rank (or an interruption here) must not leave the others waiting in a collective
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait()


#: signals that stop a ``launch_local`` run (Ctrl-C is Python's KeyboardInterrupt)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

#: seconds the launched processes get to finish after a signal or a scripted Ctrl-C (``kill -INT``; a step and a
#: checkpoint being written) before they are terminated
INTERRUPT_GRACE_S = 20.0


class LauncherStopped(KeyboardInterrupt):
    """SIGTERM / SIGHUP to the ``--processes`` launcher: handled as Ctrl-C, so its processes stop too."""


def _stop_launcher(signum: int, frame) -> None:
    raise LauncherStopped(f"stopped by signal {signal.Signals(signum).name}")


def _interrupt(children: list[subprocess.Popen], reached: bool, grace_s: float | None) -> None:
    """Give the launched processes Ctrl-C (unless it ``reached`` them already: a terminal's Ctrl-C goes to
    its whole foreground process group) and up to ``grace_s`` seconds (``None``: as long as they take) to end
    by themselves: a training process finishes its step and saves it, however long a step takes. A second
    Ctrl-C stops the wait (the caller then terminates them)."""
    if not reached:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
    start = time.monotonic()
    while ((grace_s is None or time.monotonic() - start < grace_s)
           and any(child.poll() is None for child in children)):
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            return


def _in_foreground_of_a_terminal() -> bool:
    """True when this process belongs to a terminal's foreground process group, whose Ctrl-C reaches every
    process of the group (the launched ones too); False without a terminal (a script's ``kill -INT``)."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (AttributeError, OSError, ValueError):  # not a terminal, closed, or no such call here
            continue
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's ``MASTER_PORT``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_from_env(device: torch.device) -> bool:
    """Start the process group if launched by torchrun; returns whether it is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise SystemExit(f"scaledet train: process {local_rank} has no GPU of its own ({gpus} visible): "
                             f"run at most {gpus} processes per machine on CUDA, or train on --device cpu")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each float over ranks (identity when not distributed)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= world_size()
    return dict(zip(keys, tensor.tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used for the wall-time stop)."""
    return any_rank_each([flag], device)[0]


def any_rank_each(flags: list[bool], device: torch.device) -> list[bool]:
    """:func:`any_rank` of several flags in one collective: flag ``i`` is true on every rank if it is
    true on any."""
    if not is_distributed():
        return list(flags)
    tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value > 0) for value in tensor.tolist()]


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's ``items`` (a list of picklable objects) on all ranks."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, ...) of ``module`` on every rank, in place. DDP keeps
    the parameters equal across ranks, but a module it does not wrap (the EMA copy) accumulates each rank's
    own statistics; evaluating it on every rank must use the statistics rank 0 saves."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
