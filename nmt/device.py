"""Where and in what precision torch computes: the device and training's precision."""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.errors import NMTError

CPUINFO = Path("/proc/cpuinfo")  # Linux: the CPU's flags


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda`, `cuda:N`; NMTError for anything
    else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NMTError(f"device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NMTError(f"device {name!r}: asked for, but torch sees no CUDA device")
    return device


def cpu_has_amx(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has AMX, the tile unit that multiplies bf16 matrices (Linux's cpuinfo flags)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, cpuinfo: Path = CPUINFO) -> str:
    """Training's precision: `auto` is bf16 on CPUs with AMX and fp32 elsewhere. Training the default config
    on 2 cores, bf16 autocast measured 1.4x fp32's speed on a Xeon with AMX, and 0.55x on one with AVX512-BF16
    but no AMX; on a GPU it measured slower for models this small."""
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_amx(cpuinfo) else "fp32"
    return precision
