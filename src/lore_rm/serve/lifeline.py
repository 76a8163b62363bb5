"""Worker processes of ``lore serve --workers N`` die with their master.

uvicorn's supervisor stops its workers when it exits normally, but a master killed with
SIGKILL (or by the OOM killer) leaves them running: orphans that keep serving on the port,
so a restarted service cannot bind it. :func:`die_with_master` makes a worker leave on its
own: on Linux the kernel signals it the moment the master dies
(``prctl(PR_SET_PDEATHSIG)``); everywhere, a watchdog thread polls the parent's pid, sends
SIGTERM when it changes (uvicorn's graceful shutdown: in-flight requests finish) and exits
hard if the worker is still alive ``grace_s`` seconds later.

A worker calls it twice: first before it loads the model (``loading=True``: the kernel's
signal is SIGKILL, since nothing is in flight and uvicorn would only act on a SIGTERM once
the load is over), then once the app is built (SIGTERM, and the watchdog). A worker whose
parent is no longer the recorded master when it asks (the master died while the worker was
still importing) exits at once: the kernel's signal can only be armed while the parent
lives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

MASTER_PID_ENV = "LORE_SERVE_MASTER_PID"
_PR_SET_PDEATHSIG = 1

_log = logging.getLogger("lore_rm.serve")


def _kernel_pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` when the parent dies; whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(master: int, poll_s: float, grace_s: float) -> None:
    while os.getppid() == master:
        time.sleep(poll_s)
    _log.warning("lore serve: the master process %d is gone; this worker stops", master)
    os.kill(os.getpid(), signal.SIGTERM)  # a no-op if the kernel has sent it already
    time.sleep(grace_s)
    os._exit(1)  # still here: a request hung the graceful shutdown


def die_with_master(
    master: int | None = None, *, loading: bool = False, poll_s: float = 1.0, grace_s: float = 10.0
) -> bool:
    """Make this worker process stop when ``master`` (default: ``$LORE_SERVE_MASTER_PID``)
    dies; exit now if it is already gone (no longer this process's parent). Returns False
    (doing nothing) when no master is named."""
    global _watching
    if master is None:
        raw = os.environ.get(MASTER_PID_ENV, "")
        master = int(raw) if raw.isdigit() else None
    if master is None:
        return False
    _kernel_pdeathsig(signal.SIGKILL if loading else signal.SIGTERM)
    if os.getppid() != master:  # it died before the kernel was asked: nobody will signal
        _log.warning("lore serve: the master process %d is gone; this worker stops", master)
        logging.shutdown()
        os._exit(1)
    if not loading and not _watching:
        _watching = True
        threading.Thread(
            target=_watch, args=(master, poll_s, grace_s), name="lore-lifeline", daemon=True
        ).start()
    return True


_watching = False
