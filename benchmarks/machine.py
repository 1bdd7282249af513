"""What machine a benchmark ran on, and the memory bandwidth it can actually reach.

Call threads.configure_threads before importing this module: it imports NumPy.
"""

import ctypes
import os
import platform
import time
from importlib import metadata

import numpy as np

from llama3_np.memory import meminfo_bytes

_GIB = 1 << 30
BANDWIDTH_BUFFER_BYTES = _GIB // 2  # 16x a 32 MB L3 cache: measures memory, not cache


def _cpuinfo_field(name: str) -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _l3_cache() -> str:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def l3_cache_bytes() -> int:
    """The L3 cache's size in bytes (0 when unknown), from the size _l3_cache reads."""
    size = _l3_cache()
    units = {"K": 1 << 10, "M": 1 << 20}
    try:
        return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
    except ValueError:
        return 0


def blas_library() -> str:
    """NumPy's BLAS as np.show_config reports it, e.g. "scipy-openblas 0.3.31 (... Haswell)"."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    detail = blas.get("openblas configuration", "")
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')}" + \
        (f" ({' '.join(detail.split())})" if detail else "")


def blas_kernel() -> str:
    """The kernels OpenBLAS chose for this CPU at run time (its build string names only the
    baseline), e.g. "SkylakeX", or "unknown"."""
    for library in _openblas_libraries():
        for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_",
                       "openblas_get_corename"):
            if hasattr(library, symbol):
                getattr(library, symbol).restype = ctypes.c_char_p
                return getattr(library, symbol)().decode()
    return "unknown"


def _openblas_libraries() -> list:
    """The OpenBLAS libraries this process has loaded (NumPy's)."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    return [ctypes.CDLL(path) for path in sorted(paths)]


def blas_threads():
    """The thread count OpenBLAS uses now (asked through its C API), or None if NumPy's
    BLAS is not an OpenBLAS whose symbol we know."""
    for library in _openblas_libraries():
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                       "openblas_get_num_threads"):
            if hasattr(library, symbol):
                return int(getattr(library, symbol)())
    return None


# Above this 1-minute load average before a benchmark starts, other programs compete for
# the cores (up to one core's worth is the decaying trace of what ran just before).
QUIET_LOAD = 1.0


def load_average() -> float:
    """Runnable processes, averaged over the last minute (see QUIET_LOAD)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def describe_machine() -> dict:
    """Label -> value, for the header of RESULTS.md."""
    flags = set(_cpuinfo_field("flags").split())
    vector = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni",
                          "amx_bf16", "amx_int8") if f in flags]
    return {
        "CPU": f"{_cpuinfo_field('model name')} ({', '.join(vector)}; L3 {_l3_cache()})",
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable by "
                 "this process",
        "memory": f"{(meminfo_bytes('MemTotal') or 0) / _GIB:.1f} GiB "
                  f"({(meminfo_bytes('MemAvailable') or 0) / _GIB:.1f} GiB available at start)",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "versions": ", ".join(f"{p} {_version(p)}" for p in
                              ("numpy", "numba", "torch", "transformers", "safetensors")),
        "BLAS": f"{blas_library()}; kernels chosen at run time: {blas_kernel()}"
                + _openblas_settings(),
    }


def _openblas_settings() -> str:
    """The OpenBLAS variables set for this run, which override its own choices (some
    environments set them for older OpenBLAS builds; they slow a current one)."""
    settings = [f"{name}={os.environ[name]}" for name in ("OPENBLAS_CORETYPE",
                                                         "OPENBLAS_L2_SIZE")
                if os.environ.get(name)]
    return f" ({', '.join(settings)})" if settings else " (no OPENBLAS_* overrides)"


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of fn, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(buffer_bytes: int = BANDWIDTH_BUFFER_BYTES, repeats: int = 3) -> dict:
    """GB/s over float32 buffers far bigger than the cache, best of `repeats`:

    "sum":  np.sum (one thread, reads the buffer)
    "gemv": BLAS matrix @ vector (reads the matrix, BLAS's thread count); this is what
            a float32 decode step does, so it is the fairest bound for one
    "copy": np.copyto (one thread; bytes read + bytes written)"""
    columns = 8192
    matrix = np.ones((buffer_bytes // 4 // columns, columns), dtype=np.float32)
    copy = np.empty_like(matrix)
    vector = np.ones(columns, dtype=np.float32)
    np.copyto(copy, matrix)  # fault every page in before timing
    seconds = {
        "sum": best_seconds(lambda: matrix.sum(), repeats),
        "gemv": best_seconds(lambda: matrix @ vector, repeats),
        "copy": best_seconds(lambda: np.copyto(copy, matrix), repeats),
    }
    moved = {"sum": matrix.nbytes, "gemv": matrix.nbytes, "copy": 2 * matrix.nbytes}
    return {name: moved[name] / seconds[name] / 1e9 for name in seconds}


def best_read_gbps(measurements: list) -> float:
    """The fastest read rate among memory_bandwidth() results: the bound for a decode
    step, which only reads weights."""
    return max(max(m["sum"], m["gemv"]) for m in measurements)
