"""Matrix products whose bits do not depend on the thread count, asked of MKL on import.

MKL splits a long reduction of a matrix product among its threads at some shapes (``X.T @ H``
at 60,000 x 32 and 5,000 x 1,024, not at 20,000 x 384), and the partial sums then add in
another order: a fit on 1 and 2 threads differed in its last bits, and a flat objective
carried that into another stopping point. The thread count of a fit with ``threads="auto"``
follows the machine's load, so two runs of one command could differ. MKL's strict conditional
numerical reproducibility (``MKL_CBWR=AUTO,STRICT``) gives the same bits on any thread count;
some of its products are slower, and the default search took 3 % longer (PersonalLLM size,
with ``table_times``' blocks, 10 % less; docs/measurements.md, sixth pass). MKL reads the
setting at its first call, so this module sets it (unless the environment already has a
value) when lore_rm is imported: it takes effect when that is before any torch matrix
product has run (the CLI, a script that imports lore_rm first); otherwise start Python with
``MKL_CBWR=AUTO,STRICT``. ``MKL_CBWR=AUTO`` trades the guarantee for that time. Other BLAS
libraries ignore it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

MKL_REPRODUCIBLE = "AUTO,STRICT"

os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBLE)

_STRICT_BIT = 0x10000  # MKL_CBWR_STRICT in the mode MKL reports
_warned = False


@functools.cache
def _mkl_mode_reader() -> Callable[[int], int] | None:
    """MKL's own report of its mode (``mkl_cbwr_get``), from the torch library it is linked
    into; None without MKL (another BLAS, another platform)."""
    import torch

    folder = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        try:
            reader = ctypes.CDLL(str(folder / name)).mkl_serv_cbwr_get
        except (OSError, AttributeError):
            continue
        reader.restype, reader.argtypes = ctypes.c_int, [ctypes.c_int]
        return reader
    return None


def strict_products() -> bool | None:
    """Whether MKL runs in its strict reproducible mode (None: no MKL to ask)."""
    reader = _mkl_mode_reader()
    return None if reader is None else bool(reader(-1) & _STRICT_BIT)


def check_strict_products() -> bool | None:
    """:func:`strict_products`, warning once per process when lore_rm asked for the strict
    mode and MKL did not take it (a matrix product ran before ``import lore_rm``)."""
    global _warned
    strict = strict_products()
    asked = os.environ.get("MKL_CBWR") == MKL_REPRODUCIBLE
    if strict is False and asked and not _warned:
        _warned = True
        warnings.warn(
            "MKL is not in its reproducible mode: a torch matrix product ran before lore_rm "
            "was imported, and MKL reads MKL_CBWR at its first one. Fits may then differ in "
            "their last bits with the thread count; import lore_rm first, or start Python "
            "with MKL_CBWR=AUTO,STRICT (docs/recipes.md, 'Threads').",
            stacklevel=3,
        )
    return strict
