"""Matrix products whose bits do not depend on the thread count, asked of MKL on import.

MKL splits a long reduction of a matrix product among its threads at some shapes (``X.T @ H``
at 60,000 x 32 and 5,000 x 1,024, not at 20,000 x 384), and the partial sums then add in
another order: a fit on 1 and 2 threads differed in its last bits, and a flat objective
carried that into another stopping point. The thread count of a fit with ``threads="auto"``
follows the machine's load, so two runs of one command could differ. MKL's strict conditional
numerical reproducibility (``MKL_CBWR=AUTO,STRICT``) gives the same bits on any thread count;
some of its products are slower, and default fits took 3-10 % longer (docs/measurements.md,
sixth pass). MKL reads the setting at its first call, so this module sets it (unless the
environment already has a value) when lore_rm is imported: it takes effect when that is
before any torch matrix product has run (the CLI, a script that imports lore_rm first);
otherwise start Python with ``MKL_CBWR=AUTO,STRICT``. ``MKL_CBWR=AUTO`` trades the
guarantee for that time. Other BLAS libraries ignore it.
"""

from __future__ import annotations

import os

MKL_REPRODUCIBLE = "AUTO,STRICT"

os.environ.setdefault("MKL_CBWR", MKL_REPRODUCIBLE)
