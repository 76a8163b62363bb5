"""The torch thread count of the compute commands (``--threads``) and of the library's fits
(``LowRankReward(threads="auto")``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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


#: the count the library's "auto" resolves to when set (a command's --threads sets it)
_pinned: int | None = None


def pin_threads(n: int | None) -> None:
    """Make the library's ``threads="auto"`` resolve to ``n`` in this process (None: to the
    rule again). A command's ``--threads`` pins its count, so the fits it runs keep it; a
    script may pin one count so that every fit it runs uses the same."""
    global _pinned
    _pinned = n


def library_threads(spec: str | int | None) -> int | None:
    """The count a library call runs with for ``spec`` (None: torch's setting, untouched).

    ``"auto"`` applies the CLI's rule (:func:`resolve_threads`) at each call, or returns the
    count :func:`pin_threads` fixed (a command's ``--threads``)."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == AUTO and _pinned is not None:
        return _pinned
    try:
        return resolve_threads(spec)
    except ValueError:
        from lore_rm.errors import LoreError

        raise LoreError(
            f"threads must be a positive integer, 'auto' or None, got {spec!r}"
        ) from None


@contextlib.contextmanager
def torch_threads(spec: str | int | None) -> Iterator[int]:
    """Run the block with torch's intra-op thread count set by ``spec`` (see
    :func:`library_threads`), restoring torch's previous setting afterwards; yields the count."""
    import torch

    before = torch.get_num_threads()
    n = library_threads(spec)
    if n is None or n == before:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_thread(device, active: bool = True) -> Iterator[None]:
    """One torch thread for the block on the CPU (``device`` a torch device), restoring the
    count afterwards. For a loop of small ops (on two threads of a shared machine each
    parallel region waits for a descheduled thread: bench/table_passes.py measured a bf16
    block loop 8-40x slower on 2 threads at load 5 than on 1) and for reductions whose
    rounding must not depend on the thread count (BLAS and torch split a long sum among the
    threads, and the partial sums add in another order)."""
    import torch

    threads = torch.get_num_threads()
    if not active or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
