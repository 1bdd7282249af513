"""Micro benchmark of kernels.linear: GEMV GB/s per weight dtype and backend, next to
the machine's memory bandwidth, plus prefill GFLOP/s. Takes well under a minute.

    python benchmarks/kernels_bench.py [--threads 2] [--shape 2048 8192] [--prefill 128]

GEMV (decoding one token) is bound by memory bandwidth, so its GB/s (stored weight
bytes read per second) should approach the bandwidth line. Times are the best of
several runs: on a shared machine the median mostly measures the neighbours.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 8192),
                        metavar=("OUT", "IN"), help="weight shape (default: Llama 3.2 1B w2)")
    parser.add_argument("--prefill", type=int, default=128, help="rows of x for GEMM")
    parser.add_argument("--repeats", type=int, default=10)
    return parser.parse_args()


def best_seconds(fn, repeats: int) -> float:
    fn()  # compile / page in / fill caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(np, repeats: int) -> None:
    """A 256 MB copy (one thread, read + write) and a 256 MB float32 GEMV (reads, BLAS
    threads): the second is the ceiling a decode kernel can reach."""
    src = np.ones(1 << 26, dtype=np.float32)
    dst = np.empty_like(src)
    seconds = best_seconds(lambda: np.copyto(dst, src), max(3, repeats // 4))
    print(f"{'memory copy 256 MB':34s} {2 * src.nbytes / seconds / 1e9:7.1f} GB/s")
    matrix, ones = src.reshape(8192, -1), np.ones(src.size // 8192, dtype=np.float32)
    seconds = best_seconds(lambda: matrix @ ones, max(3, repeats // 4))
    print(f"{'BLAS f32 GEMV 256 MB (read)':34s} {src.nbytes / seconds / 1e9:7.1f} GB/s")


def main():
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    from llama3_np import kernels
    from llama3_np.quantize import DTYPES, to_dtype
    from llama3_np.storage import BF16

    if args.threads:
        kernels.set_threads(args.threads)
    backends = ["numpy", "numba"] if kernels.active_backend() == "numba" else ["numpy"]
    kernels.warmup()
    n_out, n_in = args.shape
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in))
    x_one = rng.standard_normal((1, n_in), dtype=np.float32)
    x_many = rng.standard_normal((args.prefill, n_in), dtype=np.float32)

    memory_bandwidth(np, args.repeats)
    print(f"weight {n_out} x {n_in}; GEMV = 1 row of x, GEMM = {args.prefill} rows")
    for dtype in DTYPES:
        w = to_dtype(weight, dtype)
        stored_bytes = w.bits.nbytes if isinstance(w, BF16) else w.nbytes  # ndarray, Q8
        for backend in backends:
            if dtype == "f32" and backend == "numba":
                continue  # float32 always goes to BLAS
            kernels.set_backend(backend)
            gemv = best_seconds(lambda: kernels.linear(x_one, w), args.repeats)
            gemm = best_seconds(lambda: kernels.linear(x_many, w), max(2, args.repeats // 5))
            label = f"{dtype} {backend if dtype != 'f32' else 'BLAS'}"
            print(f"{label:12s} GEMV {stored_bytes / gemv / 1e9:6.1f} GB/s "
                  f"({gemv * 1e3:6.2f} ms)   GEMM "
                  f"{2 * n_out * n_in * args.prefill / gemm / 1e9:6.1f} GFLOP/s "
                  f"({gemm * 1e3:6.1f} ms)")
    kernels.set_backend("auto")


if __name__ == "__main__":
    main()
