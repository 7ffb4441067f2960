"""What a timing ran on. The development machines' training rates differ by CPU model and vector
extensions (AVX-512 with bfloat16 against AVX2 alone), which ``platform`` does not tell on Linux
(``platform.processor()`` is empty or the architecture)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str, cpuinfo: Path) -> str | None:
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def processor_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name where Linux gives it, else what ``platform`` knows."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def vector_extensions(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU's AVX flags, sorted."""
    return sorted(flag for flag in (_cpuinfo_field("flags", cpuinfo) or "").split() if flag.startswith("avx"))


def has_bfloat16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU multiplies bfloat16 natively (AMX or AVX512_BF16): elsewhere oneDNN emulates it,
    slower than float32."""
    flags = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's count)."""
    return len(os.sched_getaffinity(0))


def describe() -> dict:
    """The machine as bench results record it."""
    return {"processor": processor_name(), "cpus": cpus(), "vector": vector_extensions(),
            "python": platform.python_version()}
