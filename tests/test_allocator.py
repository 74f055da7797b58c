"""The trainer's CPU allocator setting: glibc keeps freed memory, so a step's large buffers are
reused instead of being mapped, page-faulted and zero-filled again every step."""

import platform
import resource

import pytest
import torch

import scaledet.engine.trainer as trainer_module
from scaledet.engine import Trainer, TrainConfig
from scaledet.engine.allocator import keep_freed_memory
from tests.fixtures import RectangleDataset, TinyDetector

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the setting is glibc's")


def _page_faults_of_a_fresh_buffer(megabytes: int = 64) -> int:
    """Minor page faults taken by allocating and filling a buffer of ``megabytes``, after one of the
    same size was allocated, filled and freed (what every training step does)."""
    torch.empty(megabytes * 2**18).fill_(1.0)  # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(megabytes * 2**18).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_keep_freed_memory_makes_a_freed_buffer_reusable():
    assert keep_freed_memory()
    pages = 64 * 2**20 // resource.getpagesize()
    _page_faults_of_a_fresh_buffer(64)  # the heap grows to hold such a block once
    # by default glibc maps a 64 MB block afresh every time (one fault per page); kept, it is reused
    assert _page_faults_of_a_fresh_buffer(64) < pages // 10


@pytest.mark.parametrize("keep", [True, False])
def test_trainer_applies_the_setting_on_cpu_unless_turned_off(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    config = TrainConfig.for_model("tiny", max_steps=1, batch_size=4, out=str(tmp_path), progress=False,
                                   device="cpu", keep_freed_memory=keep)
    Trainer(config, TinyDetector(), RectangleDataset(8))
    assert calls == ([1] if keep else [])
