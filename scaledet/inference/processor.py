"""The processor this process runs on, as far as CPU inference speed is concerned.

:func:`current_processor` reads the CPU model name and the instruction-set flags that decide which
kernels run (``/proc/cpuinfo`` on Linux; elsewhere the model name only), the kernel family ATen
actually dispatches to (``torch.backends.cpu.get_cpu_capability()``, which honours
``ATEN_CPU_CAPABILITY``) and the environment variables that cap kernels below the hardware
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``: how an AVX2-only
machine is emulated on an AVX-512 one; all three, since ATen, oneDNN and MKL (PyTorch's BLAS, behind
the generic convolution path) each pick their kernels on their own). :attr:`Processor.kind` is a
short key (``"avx512-bf16-vnni"``, ``"avx2"``) for results tables and caches; :attr:`Processor.native_bf16` says whether bfloat16 runs in hardware.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: the CPU flags (Linux ``/proc/cpuinfo`` names) that decide CPU inference speed
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
#: environment variables that cap the kernels below what the hardware has
KERNEL_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
#: ``ONEDNN_MAX_CPU_ISA`` values that still allow oneDNN's native bfloat16 kernels
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL",
                     "DEFAULT"}


@dataclass(frozen=True)
class Processor:
    """What decides CPU kernel speed on this machine.

    Attributes:
        model: the CPU model name (``"Intel(R) Xeon(R) Processor"``, ``"AMD EPYC 9R14"``).
        flags: the subset of :data:`ISA_FLAGS` the hardware reports.
        aten_capability: the kernel family ATen dispatches to (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``).
        kernel_caps: the :data:`KERNEL_CAP_VARIABLES` set in the environment, ``{name: value}``.
        generation: ``"family F model M"`` from ``/proc/cpuinfo`` (``""`` where unknown): virtual machines
            often hide the model number (``"AMD EPYC"``), and two generations with the same flags run the
            same kernels at different speeds (an AMD family 25 and a family 26 EPYC, say).
    """

    model: str
    flags: frozenset[str]
    aten_capability: str
    kernel_caps: dict[str, str] = field(default_factory=dict)
    generation: str = ""

    @property
    def avx512(self) -> bool:
        """AVX-512 in hardware and used by ATen (not capped by ``ATEN_CPU_CAPABILITY``)."""
        return "avx512f" in self.flags and self.aten_capability.upper().startswith("AVX512")

    @property
    def native_bf16(self) -> bool:
        """bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16) in hardware, and neither ATen
        (``ATEN_CPU_CAPABILITY=avx2``) nor oneDNN (``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16``)
        capped below them. Without them bfloat16 is emulated and slower than float32."""
        hardware = bool({"avx512_bf16", "amx_bf16"} & self.flags)
        onednn_cap = self.kernel_caps.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
        return hardware and self.avx512 and onednn_cap in _ONEDNN_BF16_ISAS

    @property
    def kind(self) -> str:
        """A short key for the kernels in use: ``"avx512[-bf16][-vnni][-amx]"``, ``"avx2[-vnni]"``, or
        ATen's capability in lower case (``"default"``, ``"sve256"``) on other processors. Capped
        kernels count as what they are capped to: ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 machine
        gives ``"avx2"``. (onnxruntime ignores these caps: its kernels still use what the hardware has.)"""
        if self.avx512:
            parts = ["avx512"] + [name for name, flag in (("bf16", "avx512_bf16"), ("vnni", "avx512_vnni"),
                                                          ("amx", "amx_tile")) if flag in self.flags]
            return "-".join(parts)
        if self.aten_capability.upper() in ("AVX2", "AVX512") and "avx2" in self.flags:
            # an emulated AVX2 machine (kernel caps set) is labelled as a plain AVX2 one
            return "avx2-vnni" if "avx_vnni" in self.flags and not self.kernel_caps else "avx2"
        return self.aten_capability.lower().replace(" ", "-")

    def describe(self) -> str:
        """One line: ``"<model> (family F model M) [<kind>] (avx2, avx512f, ...), ATen kernels AVX512[, capped:
        VAR=value]"``."""
        flags = ", ".join(flag for flag in ISA_FLAGS if flag in self.flags) or "no AVX2"
        caps = "; ".join(f"{name}={value}" for name, value in self.kernel_caps.items())
        generation = f" ({self.generation})" if self.generation else ""
        return (f"{self.model}{generation} [{self.kind}] ({flags}), ATen kernels {self.aten_capability}"
                + (f", capped: {caps}" if caps else ""))

    def as_dict(self) -> dict:
        """JSON-able: ``{"processor", "generation", "kind", "flags": {flag: bool}, "kernel_caps",
        "torch_cpu_capability"}``."""
        return {"processor": self.model, "generation": self.generation, "kind": self.kind,
                "flags": {flag: flag in self.flags for flag in ISA_FLAGS}, "kernel_caps": dict(self.kernel_caps),
                "torch_cpu_capability": self.aten_capability}


def _cpuinfo(text: str) -> tuple[str | None, set[str], str]:
    """``(model name, flags, "family F model M" or "")`` of the first processor in ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break  # the first processor's block ends
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    family, number = fields.get("cpu family"), fields.get("model")
    generation = f"family {family} model {number}" if family and number else ""
    return fields.get("model name"), set(fields.get("flags", "").split()), generation


@functools.lru_cache(maxsize=1)
def current_processor() -> Processor:
    """This machine's :class:`Processor` (read once per process)."""
    model, flags, generation = None, set(), ""
    try:
        model, flags, generation = _cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    caps = {name: os.environ[name] for name in KERNEL_CAP_VARIABLES if name in os.environ}
    return Processor(model or platform.processor() or platform.machine(), frozenset(flags & set(ISA_FLAGS)),
                     capability, caps, generation)
