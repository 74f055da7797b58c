"""The trainer's CPU allocator setting: glibc keeps freed memory, so a step's large buffers are
reused instead of being mapped, page-faulted and zero-filled again every step."""

import platform
import subprocess
import sys

import pytest

import scaledet.engine.trainer as trainer_module
from scaledet.engine import Trainer, TrainConfig
from tests.fixtures import RectangleDataset, TinyDetector

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the setting is glibc's")


_STEPS = """
import resource, sys, torch
from scaledet.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # a training step's pattern: large buffers allocated, used and freed, the same sizes every step
    a = torch.empty(50 * 2**18).fill_(1.0)
    b = torch.empty(20 * 2**18).fill_(1.0)
    c = a[: b.numel()] + b
    d = torch.empty(40 * 2**18).fill_(2.0)
    return float(c[0] + d[0])
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[6:]))  # the steady state: the heap needs a step or three to settle
"""


def _page_faults_of_steps(mode: str) -> int:
    """Minor page faults of steps 7-12 of :data:`_STEPS` in a fresh interpreter (the suite's own heap
    history would decide what is reused otherwise)."""
    done = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@glibc
def test_keep_freed_memory_makes_freed_buffers_reusable():
    default, kept = _page_faults_of_steps("default"), _page_faults_of_steps("keep")
    # glibc maps the 20-50 MB blocks afresh every step (~33k faults a step on Debian's 2.36); kept, they are reused
    assert kept * 10 < default


@pytest.mark.parametrize("keep", [True, False])
def test_trainer_applies_the_setting_on_cpu_unless_turned_off(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    config = TrainConfig.for_model("tiny", max_steps=1, batch_size=4, out=str(tmp_path), progress=False,
                                   device="cpu", keep_freed_memory=keep)
    Trainer(config, TinyDetector(), RectangleDataset(8))
    assert calls == ([1] if keep else [])
