"""Prefill GEMMs of one Llama 3.2 1B layer by bf16 and q8 weights: GFLOP/s of each route.

    python benchmarks/prefill_gemm.py [--rows 128] [--threads 2] [--rounds 7] [--no-torch]

For x (rows, K) @ w (N, K).T on the layer's four matrix shapes, in one process and
interleaved (A, B, C, A, B, C, ...; the best of --rounds kept, so neighbours on a
shared machine cost less):

- "x rounded": kernels_bf16.matmul, x rounded to bf16 and multiplied by the bf16 bits on
  the CPU's best route (AMX or AVX512-BF16; each route this CPU has is listed);
- "x float32, exact parts": kernels_bf16.matmul_exact, x as the sum of three bf16 parts,
  each multiplied on AMX (kernels.linear's float32 path there);
- "x float32, tiles + sgemm": weight tiles decoded for OpenBLAS sgemm (kernels.linear's
  float32 path elsewhere);
- "f32 sgemm": NumPy's BLAS on a float32 copy of the weights (no decoding at all);
- "torch bf16": PyTorch's x @ w.T in bf16 (oneDNN), x already bf16, when installed;
- the same weights quantised to q8: "q8, x int8, amx" / "vnni" (kernels_int8's routes
  this CPU has), "q8, x int8, row loops" (kernels_numba's decode loops, every row of x),
  "q8, x float32, tiles + sgemm" (the default float32 path).

Prints GFLOP/s per shape and for the whole layer (the four shapes weighted by how often a
layer multiplies by each: wq, wo; wk, wv; w1, w3; w2).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

# (N, K) of the Llama 3.2 1B matrices, and how many of each a layer has.
LAYER = {(2048, 2048): 2, (512, 2048): 2, (8192, 2048): 2, (2048, 8192): 1}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="rows of x (prompt tokens)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    return parser.parse_args()


def main():
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    from llama3_np import kernels, kernels_bf16, kernels_int8
    from llama3_np.formats import tile_decoder
    from llama3_np.formats.bf16 import BF16, bf16_bits_to_float32, float32_to_bf16_bits
    from llama3_np.formats.convert import to_dtype

    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    kernels.set_threads(args.threads)
    kernels.set_backend("numba")
    best_route = kernels_bf16.route()
    routes = kernels_bf16.available_routes()
    best_int8_route, int8_routes = kernels_int8.route(), kernels_int8.available_routes()
    print(f"bf16 routes on this CPU: {', '.join(routes) or 'none'}; int8 routes: "
          f"{', '.join(int8_routes) or 'none'}; rows of x: {args.rows}")
    rng = np.random.default_rng(0)

    def cases_for(n_out, n_in):
        bits = float32_to_bf16_bits(rng.standard_normal((n_out, n_in), dtype=np.float32)
                                    / np.float32(np.sqrt(n_in)))
        x = rng.standard_normal((args.rows, n_in), dtype=np.float32)
        weight, w_float32 = BF16(bits), bf16_bits_to_float32(bits)

        def rounded(route):
            def run():
                kernels_bf16.set_route(route)
                kernels_bf16.matmul(x, bits)
            return run

        def exact_parts():
            kernels_bf16.set_route("amx")
            kernels_bf16.matmul_exact(x, bits)

        cases = {f"x rounded, {route}": rounded(route) for route in routes}
        if "amx" in routes:
            cases["x float32, exact parts, amx"] = exact_parts
        decode = tile_decoder(weight, kernels._numba_kernels())
        cases["x float32, tiles + sgemm"] = lambda: kernels._tiled_matmul(x, bits.shape, decode)
        cases["f32 sgemm"] = lambda: x @ w_float32.T
        if torch is not None:
            x_bf16 = torch.from_numpy(x).bfloat16()
            w_bf16 = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
            cases["torch bf16"] = lambda: x_bf16 @ w_bf16.T
        q8 = to_dtype(w_float32, "q8")
        out = np.empty((args.rows, n_out), dtype=np.float32)
        row_loops = kernels._numba_kernels().matmul_q8
        for route in int8_routes:
            cases[f"q8, x int8, {route}"] = int8_gemm(route, x, q8, out)
        cases["q8, x int8, row loops"] = lambda: int8(row_loops, x, q8.values, q8.scales, out)
        cases["q8, x float32, tiles + sgemm"] = lambda: kernels.linear(x, q8)
        return cases

    def int8_gemm(route, x, q8, out):
        def run():
            kernels_int8.set_route(route)
            kernels_int8.matmul_q8(x, q8.values, q8.scales, out)
        return run

    def int8(kernel, *args):
        kernels.set_int8_activations(True)
        kernel(*args)
        kernels.set_int8_activations(False)

    shapes = {shape: cases_for(*shape) for shape in LAYER}
    best = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up (compiles, pages in)
        for shape, cases in shapes.items():
            for name, run in cases.items():
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
                if round_:
                    best[(shape, name)] = min(best.get((shape, name), seconds), seconds)
    kernels_bf16.set_route(best_route)
    kernels_int8.set_route(best_int8_route)

    names = list(next(iter(shapes.values())))
    print(f"{'GFLOP/s':28s}" + "".join(f"{f'{n}x{k}':>12s}" for n, k in LAYER) + f"{'layer':>10s}")
    for name in names:
        flops = {shape: 2 * args.rows * shape[0] * shape[1] for shape in LAYER}
        layer_seconds = sum(count * best[(shape, name)] for shape, count in LAYER.items())
        layer_flops = sum(count * flops[shape] for shape, count in LAYER.items())
        print(f"{name:28s}" + "".join(f"{flops[s] / best[(s, name)] / 1e9:12.0f}" for s in LAYER)
              + f"{layer_flops / layer_seconds / 1e9:10.0f}")


if __name__ == "__main__":
    main()
