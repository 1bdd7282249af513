"""Thread settings that must reach the BLAS library before NumPy loads it.

OpenBLAS reads its environment once, when `import numpy` loads it, and offers no
portable way to change it afterwards. So the command line (cli.entry) calls
`configure_threads` first, before anything imports NumPy; this module therefore
imports nothing heavy.
kernels.set_threads changes numba's share at run time.
"""

import functools
import os
import sys

from .errors import InputError

# OpenBLAS worker threads busy-wait ~2^28 cycles (~0.1 s) after each call by default,
# stealing the cores from numba's kernels that run in between; 2^4 cycles makes them
# sleep almost at once (the value is a power of two, 4 is the minimum).
_BLAS_SPIN_EXPONENT = "4"


def configure_threads(n: int = None) -> bool:
    """Ask BLAS (OpenBLAS, MKL, OpenMP) and numba to use n threads (None: all cores),
    at most the cores available (usable_threads says so to the user).

    Settings the user exported are kept. Returns False when NumPy was already
    imported, in which case BLAS keeps the thread count it started with."""
    if n is not None:
        if n < 1:
            raise InputError(f"the thread count must be at least 1, got {n}")
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "NUMBA_NUM_THREADS"):
            os.environ.setdefault(variable, str(min(n, available_cores())))
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


def usable_threads(n: int) -> int:
    """n, or the cores available when n asks for more, with a one-line note on stderr:
    threads beyond the cores only take turns (--threads 1000 on 2 cores ran 400x slower)."""
    cores = available_cores()
    if n > cores:
        print(f"note: --threads {n} capped to {cores}, the cores available to this process",
              file=sys.stderr)
        return cores
    return n


CPU_MAX = "/sys/fs/cgroup{}/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


@functools.lru_cache(maxsize=None)
def compute_threads() -> int:
    """The threads NumPy-side work may use: what configure_threads gave BLAS, or else the
    cores available. Read once: tiled attention asks on every tile, and the cgroup files
    behind available_cores are I/O."""
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return min(int(asked), available_cores()) if asked.isdigit() and int(asked) > 0 \
        else available_cores()


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, or fewer where its cgroup's CPU quota
    (a container's --cpus) allows fewer, as the memory check reads its memory limit."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        if path is None:
            return cores
        with open(CPU_MAX.format(path.rstrip("/"))) as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # rounded up
    except (OSError, ValueError):
        pass
    return cores
