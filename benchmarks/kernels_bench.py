"""Micro benchmark of kernels.linear: GEMV GB/s per weight dtype and backend, next to
the machine's memory bandwidth, plus prefill GEMM GFLOP/s. Takes well under a minute.

    python benchmarks/kernels_bench.py [--threads 2] [--shape 2048 8192] [--prefill 128]
    python benchmarks/kernels_bench.py --decode [--threads 1] [--only wq,w1,output]

--decode: one token (M = 1) against each of Llama 3.2 1B's matrices (wq 2048x2048, wk/wv
512x2048, w1/w3 8192x2048, w2 2048x8192, output 128256x2048) in every form (bf16, q8 and
Q4 with float32 and with int8 activations), each interleaved with a BLAS float32 GEMV over
the same number of bytes: the ratio of the two read rates is what a kernel loses to
BLAS, whatever the machine's neighbours do meanwhile.

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
    parser.add_argument("--decode", action="store_true",
                        help="M = 1 on each 1B matrix, against f32 GEMV over the same bytes")
    parser.add_argument("--only", default=None, help="--decode: matrices, e.g. wq,w1")
    return parser.parse_args()


# Llama 3.2 1B's matrices (out_features, in_features); wv and w3 repeat wk and w1.
DECODE_SHAPES = {"wq": (2048, 2048), "wk": (512, 2048), "w1": (8192, 2048),
                 "w2": (2048, 8192), "output": (128256, 2048)}


def decode_forms(rng, n_out, n_in):
    """(label, weight, int8 activations or None) for each form, made straight from random
    bytes (quantising a 1 GB float32 output matrix would take longer than timing it).
    q8 with float32 scales (--dtype q8) and with float16 ones (GGUF's Q8_0, kept: 1.0625
    bytes a weight); the 4-bit form as GGUF's Q4_0 becomes it (float16 scales, no mins:
    0.5625) and as Q4_K does (float32 scales and mins: 0.75)."""
    import numpy as np

    from llama3_np.formats.bf16 import BF16, float32_to_bf16_bits
    from llama3_np.formats.q4 import Q4, SUPER_BLOCKS, SuperScales
    from llama3_np.formats.q8 import Q8

    bits = np.empty((n_out, n_in), np.uint16)
    for start in range(0, n_out, 4096):
        rows = rng.standard_normal((min(4096, n_out - start), n_in), dtype=np.float32)
        bits[start:start + len(rows)] = float32_to_bf16_bits(rows * np.float32(0.02))
    blocks = (n_out, n_in // 32)
    q8 = Q8(rng.integers(-127, 128, (n_out, n_in), dtype=np.int8),
            rng.uniform(0, 1e-3, blocks).astype(np.float32))
    q8_0 = Q8(q8.values, q8.scales.astype(np.float16))  # as GGUF's Q8_0
    nibbles = rng.integers(0, 256, (n_out, n_in // 2), dtype=np.uint8)
    q4_0 = Q4(nibbles, rng.uniform(0, 1e-3, blocks).astype(np.float16))  # as GGUF's Q4_0
    supers = (n_out, -(-n_in // (32 * SUPER_BLOCKS)))  # as GGUF's Q4_K: 6-bit codes
    q4_k = Q4(nibbles, *(SuperScales(rng.integers(0, 64, blocks, dtype=np.uint8),
                                     rng.uniform(0, 1e-4, supers).astype(np.float16) * sign)
                         for sign in (1, -1)))
    return [("bf16", BF16(bits), None), ("q8 float x", q8, False), ("q8 int8 x", q8, True),
            ("Q8_0 float x", q8_0, False), ("Q8_0 int8 x", q8_0, True),
            ("Q4_0 float x", q4_0, False), ("Q4_0 int8 x", q4_0, True),
            ("Q4_K float x", q4_k, False), ("Q4_K int8 x", q4_k, True)]


def decode_main(args):
    """Read rates of one-token GEMVs per 1B matrix and form, over BLAS f32's on as many
    bytes, interleaved (A, B, A, B ...), best of args.rounds rounds of repeats."""
    import numpy as np

    from llama3_np import kernels, kernels_simd
    from machine import best_seconds

    kernels.set_backend("numba")
    kernels.warmup()
    forms = kernels_simd.available()  # what the "int8 x" rows multiply with
    print(f"threads {args.threads or 'all'}; int8 dot product: "
          f"{forms[0] if forms else 'none (int8 x rows run the float loops)'}")
    print(f"{'matrix':8s} {'form':12s} {'GB/s':>6s} {'f32 GB/s':>8s} {'ratio':>6s}")
    rng = np.random.default_rng(0)
    for name, (n_out, n_in) in DECODE_SHAPES.items():
        if args.only and name not in args.only.split(","):
            continue
        x = rng.standard_normal((1, n_in), dtype=np.float32)
        for label, w, int8 in decode_forms(rng, n_out, n_in):
            reference = np.ones((max(1, w.nbytes // 4 // n_in), n_in), np.float32)
            repeats = max(3, int(3e8 / w.nbytes))

            def ours(w=w, int8=int8):
                if int8 is not None:
                    kernels.set_int8_activations(int8)
                kernels.linear(x, w)

            blas = best = float("inf")
            ours(), x @ reference.T  # page in, compile
            for _ in range(args.rounds):
                best = min(best, best_seconds(ours, repeats))
                blas = min(blas, best_seconds(lambda: x @ reference.T, repeats))
            rate, blas_rate = w.nbytes / best / 1e9, reference.nbytes / blas / 1e9
            print(f"{name:8s} {label:12s} {rate:6.1f} {blas_rate:8.1f} {rate / blas_rate:6.2f}",
                  flush=True)
        kernels.set_int8_activations(True)


def main():
    args = parse_args()
    configure_threads(args.threads)
    if args.decode:
        if args.threads:
            from llama3_np import kernels
            kernels.set_threads(args.threads)
        return decode_main(args)
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
