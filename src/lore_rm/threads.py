"""The torch thread count of the compute commands (``--threads``)."""

from __future__ import annotations

import os

AUTO = "auto"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; else every CPU)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def idle_cpus() -> float:
    """Usable CPUs minus the one-minute load average (what other processes keep busy)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return usable_cpus() - load


def resolve_threads(spec: str | int) -> int:
    """``spec`` as a thread count: a positive integer, or ``"auto"``."""
    if isinstance(spec, str) and spec.strip().lower() == AUTO:
        import torch

        return max(1, min(torch.get_num_threads(), usable_cpus(), int(idle_cpus())))
    try:
        n = int(spec)
    except ValueError:
        raise ValueError(f"--threads must be a positive integer or 'auto', got {spec!r}") from None
    if n < 1:
        raise ValueError(f"--threads must be a positive integer or 'auto', got {spec!r}")
    return n
