"""What CPU this is: its name and whether it multiplies bf16 in hardware (training's precision, the reports' headers).

Speed reports (``bench``, ``serve --loadtest``) are machine-bound, so each names the CPU it ran on.
"""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_info() -> str:
    """``/proc/cpuinfo``'s text ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the one ``cpuinfo`` describes) multiplies bf16 in hardware (AVX512-BF16 or AMX):
    there bf16 autocast pays (results/bench/cpu.md); elsewhere bf16 is emulated and slower than fp32."""
    flags = cpu_info() if cpuinfo is None else cpuinfo
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``cpuinfo``; ``platform.processor()`` is empty or just the
    architecture on Linux), its architecture and whether it multiplies bf16 in hardware."""
    cpuinfo = cpu_info() if cpuinfo is None else cpuinfo
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    names = dict.fromkeys(n for n in (model or platform.processor(), platform.machine()) if n)  # once each, in order
    return ", ".join([*names, "bf16 in hardware" if cpu_has_bf16(cpuinfo) else "no bf16 hardware"])
