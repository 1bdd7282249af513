"""One stream or four: one token (M = 1) against Q8_0 and Q4_0 matrices read from memory,
by the int8 row loops (one weight row after another, each thread's rows in a few long runs:
kernels_numba.streamed_task) and by four rows at once, far apart. About a minute.

    python benchmarks/gemv_streams.py [--threads 2] [--rounds 5] [--shape 8192 2048]

Each round multiplies by enough copies of the matrix (about 300 MB of weights) that
every byte comes from DRAM, not a cache, in three ways, interleaved:
- "one stream": kernels_numba's loops;
- "four streams": the row dot products of four rows a quarter of a 128-row block apart
  (the loops before), four memory streams per thread;
- BLAS's float32 GEMV over as many bytes: what this machine's memory gives a GEMV.
Both int8 loops give the same bits (checked first). Prints GB/s of weights read.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

WEIGHT_BYTES = 300_000_000


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=(8192, 2048),
                        metavar=("OUT", "IN"), help="weight shape (default: Llama 3.2 1B w1)")
    return parser.parse_args()


def four_streams_loop():
    """The row dot products of four weight rows at once, a quarter of a 128-row block
    apart (numba's threads each take a run of blocks). q4: x laid out for Q4."""
    from numba import njit, prange

    from llama3_np import kernels_numba

    @njit(parallel=True)
    def multiply(x, weights, scales, out, q4):
        quantized = kernels_numba.quantize_rows(x, q4)
        for block in prange(weights.shape[0] // 128):
            for r in range(128 * block, 128 * block + 32):
                dots = kernels_numba._row_dots(True, weights, scales, None, quantized, 0,
                                               (r, r + 32, r + 64, r + 96))
                for k in range(4):
                    out[0, r + 32 * k] = dots[k]
    return multiply


def gbps(call, operands) -> float:
    """call(*arrays) for each tuple of arrays in operands: GB of them read a second."""
    start = time.perf_counter()
    for arrays in operands:
        call(*arrays)
    seconds = time.perf_counter() - start
    return sum(a.nbytes for arrays in operands for a in arrays) / seconds / 1e9


def main():
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    from llama3_np import kernels_numba, kernels_simd

    if "vnni" not in kernels_simd.available():
        sys.exit("gemv_streams.py: this CPU has no VNNI integer dot product")
    kernels_numba.set_threads(args.threads)
    kernels_numba.set_int8_activations(True, "vnni")
    n_out, n_in = args.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, n_in), dtype=np.float32)
    scales = rng.uniform(0.001, 0.05, (n_out, n_in // 32)).astype(np.float16).view(np.uint16)
    kinds = {"Q8_0": lambda: rng.integers(-127, 128, (n_out, n_in), dtype=np.int8),
             "Q4_0": lambda: rng.integers(0, 256, (n_out, n_in // 2), dtype=np.uint8)}
    four_streams = four_streams_loop()
    one_stream = {"Q8_0": kernels_numba.matmul_q8,
                  "Q4_0": lambda x, packed, s, out: kernels_numba.matmul_q4(x, packed, s, None,
                                                                            out)}
    out, check = (np.empty((1, n_out), dtype=np.float32) for _ in range(2))
    matrices = {}
    for kind, make in kinds.items():
        copies = max(2, WEIGHT_BYTES // make().nbytes)
        matrices[kind] = [(make(), scales.copy()) for _ in range(copies)]
        four_streams(x, *matrices[kind][0], check, kind == "Q4_0")
        one_stream[kind](x, *matrices[kind][0], out)
        if not np.array_equal(out, check):
            sys.exit(f"gemv_streams.py: {kind}: one stream and four gave other results")
    floats = [(rng.standard_normal((n_out // 4, n_in), dtype=np.float32),)
              for _ in range(WEIGHT_BYTES // (n_out * n_in))]
    print(f"{n_out}x{n_in}, {args.threads} thread(s); GB/s of weights read from memory")
    for round_number in range(args.rounds + 1):  # round 0 (not shown) warms everything up
        line = []
        for kind in kinds:
            one = gbps(lambda w, s: one_stream[kind](x, w, s, out), matrices[kind])
            four = gbps(lambda w, s: four_streams(x, w, s, check, kind == "Q4_0"),
                        matrices[kind])
            line.append(f"{kind}: one stream {one:5.1f}, four streams {four:5.1f}")
        blas = gbps(lambda f: f @ x[0], floats)
        if round_number:
            print(" | ".join(line) + f" | BLAS f32 GEMV {blas:5.1f}")


if __name__ == "__main__":
    main()
