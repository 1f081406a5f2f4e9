"""What a figure was measured on: the CPU model, its ML instruction sets and TensorFlow's kernel path.

Benchmarks print `banner()` beside their figures, so runs on different CPUs are never compared blind
(these machines are AMD EPYC on some days and Intel Xeon with AMX on others).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that change which kernels TensorFlow can use.
ML_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# TensorFlow's default on Linux x86: oneDNN custom ops on for CPUs with any of these (seen on AMD EPYC too).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags that make bf16 matmul/conv native (oneDNN uses them)
AMX_FLAGS = ("amx_bf16", "amx_tile")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo names it, and the instruction-set flags training cares about."""

    model: str
    cores: int
    flags: frozenset[str]
    generation: str = ""  # x86 "family F model M": a name such as "AMD EPYC" covers several generations

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def amx(self) -> bool:
        return any(f in self.flags for f in AMX_FLAGS)


def parse_cpuinfo(text: str) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    model, flags, cores, numbers = "unknown CPU", set(), 0, {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and model == "unknown CPU":
            model = value.strip() or model
        elif key in ("cpu family", "model") and key not in numbers:
            numbers[key] = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "processor":
            cores += 1
    generation = f"family {numbers['cpu family']} model {numbers['model']}" if len(numbers) == 2 else ""
    return CpuInfo(model=model, cores=cores or (os.cpu_count() or 1), flags=frozenset(flags), generation=generation)


def cpu_info(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CpuInfo (unknown model and no flags where /proc/cpuinfo is absent)."""
    try:
        return parse_cpuinfo(path.read_text())
    except OSError:
        return CpuInfo(model="unknown CPU", cores=os.cpu_count() or 1, flags=frozenset())


def onednn_path(flags: set[str], env: str | None) -> str:
    """Whether TensorFlow runs its oneDNN custom ops, and why (TF_ENABLE_ONEDNN_OPTS wins)."""
    if env is not None and env.strip() in ("0", "1", "true", "false"):
        on = env.strip() in ("1", "true")
        return f"{'on' if on else 'off'} (TF_ENABLE_ONEDNN_OPTS={env.strip()})"
    on = any(f in flags for f in ONEDNN_DEFAULT_FLAGS)
    return f"{'on' if on else 'off'} (TensorFlow's default for this CPU)"


def describe() -> dict:
    """CPU model, cores, ML flags present, oneDNN path, Python version, host and load average."""
    cpu = cpu_info()
    name = cpu.model if cpu.model != "unknown CPU" else platform.processor() or platform.machine()
    return {
        "cpu": f"{name} ({cpu.generation})" if cpu.generation else name,
        "cores": os.cpu_count(),
        "ml_flags": [f for f in ML_FLAGS if f in cpu.flags],
        "onednn": onednn_path(set(cpu.flags), os.environ.get("TF_ENABLE_ONEDNN_OPTS")),
        "python": platform.python_version(),
        "host": platform.node(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def banner(info: dict | None = None) -> str:
    """One line naming the machine, for the head of a benchmark's output."""
    info = info or describe()
    flags = " ".join(info["ml_flags"]) or "none"
    return (f"machine: {info['cpu']}, {info['cores']} cores; ML flags: {flags}; oneDNN {info['onednn']}; "
            f"Python {info['python']}; load average {' '.join(f'{x:.2f}' for x in info['loadavg'])}")
