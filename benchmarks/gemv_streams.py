"""Why the int8 row loops multiply four weight rows at once: one token (M = 1) against
Q8_0 and Q4_0 matrices read from memory, one row at a time against four. About a minute.

    python benchmarks/gemv_streams.py [--threads 2] [--rounds 5] [--shape 8192 2048]

Each round multiplies by enough copies of the matrix (about 300 MB of weights) that
every byte comes from DRAM, not a cache, in three ways, interleaved:
- "one row": each weight row alone, one memory stream per thread (the loop before);
- "four rows": kernels_numba's loops, four rows a quarter of a 64-row task apart, so four
  streams per thread;
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


def one_row_loop():
    """The row loops with every weight row on its own (the integer dot products of a
    one-row tuple), in the same 16-row tasks: the baseline. q4: x laid out for Q4."""
    from numba import njit, prange

    from llama3_np import kernels_numba

    @njit(parallel=True)
    def multiply(x, weights, scales, out, q4):
        quantized = kernels_numba.quantize_rows(x, q4)
        for task in prange(weights.shape[0] // 16):
            for r in range(16 * task, 16 * task + 16):
                out[0, r] = kernels_numba._row_dots(True, weights, scales, None, quantized, 0,
                                                    (r,))[0]
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
    one_row = one_row_loop()
    four_rows = {"Q8_0": kernels_numba.matmul_q8,
                 "Q4_0": lambda x, packed, s, out: kernels_numba.matmul_q4(x, packed, s, None, out)}
    out, check = (np.empty((1, n_out), dtype=np.float32) for _ in range(2))
    matrices = {}
    for kind, make in kinds.items():
        copies = max(2, WEIGHT_BYTES // make().nbytes)
        matrices[kind] = [(make(), scales.copy()) for _ in range(copies)]
        one_row(x, *matrices[kind][0], check, kind == "Q4_0")
        four_rows[kind](x, *matrices[kind][0], out)
        if not np.array_equal(out, check):
            sys.exit(f"gemv_streams.py: {kind}: four rows at once changed the results")
    floats = [(rng.standard_normal((n_out // 4, n_in), dtype=np.float32),)
              for _ in range(WEIGHT_BYTES // (n_out * n_in))]
    print(f"{n_out}x{n_in}, {args.threads} thread(s); GB/s of weights read from memory")
    for _ in range(args.rounds):
        line = []
        for kind in kinds:
            one = gbps(lambda w, s: one_row(x, w, s, check, kind == "Q4_0"), matrices[kind])
            four = gbps(lambda w, s: four_rows[kind](x, w, s, out), matrices[kind])
            line.append(f"{kind}: one row {one:5.1f}, four rows {four:5.1f}")
        blas = gbps(lambda f: f @ x[0], floats)
        print(" | ".join(line) + f" | BLAS f32 GEMV {blas:5.1f}")


if __name__ == "__main__":
    main()
