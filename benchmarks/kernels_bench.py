"""Micro benchmark of kernels.linear: GEMV GB/s per weight dtype and backend, next to
the machine's memory bandwidth, plus prefill GEMM GFLOP/s. Takes well under a minute.

    python benchmarks/kernels_bench.py [--threads 2] [--shape 2048 8192] [--prefill 128]

GEMV (decoding one token) is bound by memory bandwidth, so its GB/s (stored weight
bytes read per second) should approach the "memory: BLAS f32 GEMV" line. The default
weight is Llama 3.2 1B's w2; at 16-64 MB it partly fits the L3 cache, so GEMV can beat
that line. On a shared machine neighbours come and go, so every measurement is
repeated over several interleaved rounds and the best time is kept.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 8192),
                        metavar=("OUT", "IN"), help="weight shape (default: Llama 3.2 1B w2)")
    parser.add_argument("--prefill", type=int, default=128, help="rows of x for GEMM")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def main():
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    from llama3_np import kernels
    from llama3_np.formats.convert import DTYPES, to_dtype
    from llama3_np.formats.q4 import Q4, Q4_BLOCK
    from machine import best_seconds, memory_bandwidth

    if args.threads:
        kernels.set_threads(args.threads)
    kernels.warmup()
    backends = ["numpy", "numba"] if kernels.active_backend() == "numba" else ["numpy"]
    n_out, n_in = args.shape
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))
    x_one = rng.standard_normal((1, n_in), dtype=np.float32)
    x_many = rng.standard_normal((args.prefill, n_in), dtype=np.float32)
    bandwidth = memory_bandwidth()
    print(f"{'memory: np.sum (1 thread, read)':44s} {bandwidth['sum']:7.1f} GB/s")
    print(f"{'memory: BLAS f32 GEMV (all threads, read)':44s} {bandwidth['gemv']:7.1f} GB/s")

    # (label, bytes or flops per call, unit, backend, fn, repeats per round)
    cases = []
    n_blocks = n_in // Q4_BLOCK  # GGUF Q4_0 / Q4_1 / Q4_K matrices are kept as a Q4:
    scales, mins = rng.uniform(-0.01, 0.01, (2, n_out, n_blocks)).astype(np.float32)
    q4 = Q4(rng.integers(0, 256, (n_out, n_in // 2), dtype=np.uint8), scales, mins)
    forms = {dtype: to_dtype(weight, dtype) for dtype in DTYPES} | {"Q4 (GGUF 4-bit)": q4}
    for dtype, w in forms.items():
        for backend in (["numpy"] if dtype == "f32" else backends):  # f32 is always BLAS
            name = f"{dtype} {'BLAS' if dtype == 'f32' else backend}"
            cases.append((f"{name} GEMV {n_out}x{n_in}", w.nbytes, "GB/s", backend,
                          lambda w=w: kernels.linear(x_one, w), 10))
            cases.append((f"{name} GEMM {n_out}x{n_in}, {args.prefill} rows",
                          2 * n_out * n_in * args.prefill, "GFLOP/s", backend,
                          lambda w=w: kernels.linear(x_many, w), 2))

    for *_, backend, fn, _ in cases:  # page in, fill caches
        kernels.set_backend(backend)
        fn()
    best = {}
    for _ in range(args.rounds):
        for label, _, _, backend, fn, repeats in cases:
            kernels.set_backend(backend)
            best[label] = min(best.get(label, float("inf")), best_seconds(fn, repeats))
    for label, amount, unit, *_ in cases:
        print(f"{label:44s} {amount / best[label] / 1e9:7.1f} {unit:8s} "
              f"({best[label] * 1e3:7.2f} ms)")
    kernels.set_backend("auto")


if __name__ == "__main__":
    main()
