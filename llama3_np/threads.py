"""Thread settings that must reach the BLAS library before NumPy loads it.

OpenBLAS reads its environment once, when `import numpy` loads it, and offers no
portable way to change it afterwards. So the command line (cli.entry) calls
`configure_threads` first, before anything imports NumPy; this module therefore
imports nothing heavy.
kernels.set_threads changes numba's share at run time.
"""

import os
import sys

from .errors import InputError

# OpenBLAS worker threads busy-wait ~2^28 cycles (~0.1 s) after each call by default,
# stealing the cores from numba's kernels that run in between; 2^4 cycles makes them
# sleep almost at once (the value is a power of two, 4 is the minimum).
_BLAS_SPIN_EXPONENT = "4"


def configure_threads(n: int = None) -> bool:
    """Ask BLAS (OpenBLAS, MKL, OpenMP) and numba to use n threads (None: all cores).

    Settings the user exported are kept. Returns False when NumPy was already
    imported, in which case BLAS keeps the thread count it started with."""
    if n is not None:
        if n < 1:
            raise InputError(f"the thread count must be at least 1, got {n}")
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "NUMBA_NUM_THREADS"):
            os.environ.setdefault(variable, str(n))
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", _BLAS_SPIN_EXPONENT)
    return "numpy" not in sys.modules


def threads_requested(argv: list):
    """--threads N from a command line, read before NumPy is imported (None when absent
    or not a positive number: argparse reports a bad value later, in its own words)."""
    for i, arg in enumerate(argv):
        text = argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--threads=") else None
        if text is not None:
            return int(text) if text.isdigit() and int(text) > 0 else None
    return None
