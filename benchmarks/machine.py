"""The processor a benchmark ran on: lscpu's model name, the ISA flags that decide CPU speed, and the
environment variables that cap the kernels PyTorch and oneDNN pick (used to emulate an AVX2-only
machine on an AVX-512 one: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``)."""

from __future__ import annotations

import os
import platform
import subprocess

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
KERNEL_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def processor_info() -> dict:
    """``{"processor", "flags": {flag: bool}, "kernel_caps": {var: value}, "torch_cpu_capability"}``."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except OSError:
        pass
    info = {"processor": model, "flags": {flag: flag in flags for flag in CPU_FLAGS},
            "kernel_caps": {var: os.environ[var] for var in KERNEL_CAPS if var in os.environ}}
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return info


def describe(info: dict) -> str:
    """One line: model, present flags, kernel caps."""
    flags = ", ".join(flag for flag, present in info["flags"].items() if present) or "no AVX2"
    caps = "; ".join(f"{k}={v}" for k, v in info["kernel_caps"].items())
    return f"{info['processor']} ({flags})" + (f", kernels capped: {caps}" if caps else "")
