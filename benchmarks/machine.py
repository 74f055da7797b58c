"""The processor a benchmark ran on, for the results files: the model name, the ISA flags that decide
CPU speed, the kernel family ATen uses and the environment variables that cap the kernels (used to
emulate an AVX2-only machine on an AVX-512 one: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``).
The detection itself is :mod:`scaledet.inference.processor` (``scaledet bench`` reports it too)."""

from __future__ import annotations

from scaledet.inference.processor import current_processor


def processor_info() -> dict:
    """``{"processor", "generation", "kind", "flags": {flag: bool}, "kernel_caps": {var: value},
    "torch_cpu_capability"}``."""
    return current_processor().as_dict()


def describe(info: dict) -> str:
    """One line from a :func:`processor_info` dict (also one read back from an older results file):
    model, present flags, kernel caps."""
    flags = ", ".join(flag for flag, present in info["flags"].items() if present) or "no AVX2"
    caps = "; ".join(f"{k}={v}" for k, v in info.get("kernel_caps", {}).items())
    kind = f" [{info['kind']}]" if "kind" in info else ""
    generation = f" ({info['generation']})" if info.get("generation") else ""
    return f"{info['processor']}{generation}{kind} ({flags})" + (f", kernels capped: {caps}" if caps else "")
