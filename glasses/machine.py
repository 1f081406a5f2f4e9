"""What a figure was measured on: the CPU model, its ML instruction sets and TensorFlow's kernel path.

Benchmarks print `banner()` beside their figures, so runs on different CPUs are never compared blind
(these machines are AMD EPYC on some days and Intel Xeon with AMX on others).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that change which kernels TensorFlow can use.
ML_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# TensorFlow's default on Linux x86: oneDNN custom ops on for CPUs with any of these (seen on AMD EPYC too).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    if not path.exists():
        return fields
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> set[str]:
    """The CPU's feature flags (lower case; empty off Linux)."""
    return set(_cpuinfo().get("flags", "").split())


def onednn_path(flags: set[str], env: str | None) -> str:
    """Whether TensorFlow runs its oneDNN custom ops, and why (TF_ENABLE_ONEDNN_OPTS wins)."""
    if env is not None and env.strip() in ("0", "1", "true", "false"):
        on = env.strip() in ("1", "true")
        return f"{'on' if on else 'off'} (TF_ENABLE_ONEDNN_OPTS={env.strip()})"
    on = any(f in flags for f in ONEDNN_DEFAULT_FLAGS)
    return f"{'on' if on else 'off'} (TensorFlow's default for this CPU)"


def describe() -> dict:
    """CPU model, cores, ML flags present, oneDNN path, Python version, host and load average."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ml_flags": [f for f in ML_FLAGS if f in flags],
        "onednn": onednn_path(flags, os.environ.get("TF_ENABLE_ONEDNN_OPTS")),
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
