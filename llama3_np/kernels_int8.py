"""Prefill GEMMs by Q8 / Q4 weights with int8 activations (AVX512-VNNI); needs numba.

With kernels.set_int8_activations(True), kernels_numba multiplies each weight row by
each row of x quantised to int8 (kernels_simd's row dot products): right for the few
rows of a decode step, but for a prompt every row of x is read again for each weight
row, and each row pays for its own reduction. Here a micro-kernel multiplies 6 weight
rows by 32 rows of x at once (16 for the last rows of x), as the bf16 GEMM of
kernels_bf16.py does:

- the 16 lanes of a zmm register are 16 rows of x, each lane holding four consecutive
  int8 values of its row (a quad), so x is laid out quad by quad (pack_activations);
- each quad of a weight row (four bytes, read as stored) is broadcast to all lanes, and
  `vpdpbusd` (unsigned x signed bytes) adds the four products of each lane into int32;
- after a 32-value block's eight quads, the int32 sums are converted to float32 once and
  scaled by weight scale x activation scale into float32 accumulators (plus min x the
  block's sum of x, for Q4 with mins): per block the same float32 operations as the
  row dot products, added up in another order.

vpdpbusd's first operand is unsigned: the weights go there. A Q8 weight is made unsigned
by flipping its top bit (w + 128), and the block's sums start at -128 * sum(xq_b); Q4's
nibbles are unsigned already, and Q4_0's offset (w = d * (q - 8)) starts them at
-8 * sum(xq_b). The activations are quantised by kernels_numba.quantize_rows, as the
row dot products quantise them: a token's numbers do not depend on the prompt's length.

Needs AVX512-VNNI (Cascade Lake and later Xeons, Zen 4 and 5); elsewhere kernels.py keeps
the row loops up to 32 rows of x and decodes float32 tiles for BLAS (float32 x) beyond.

Measured on an Intel Xeon with AVX-512 VNNI (2 cores; 128 rows of x by an 8192 x 2048
matrix, best of 3): this GEMM 9.2-10.4 ms (~220 G int8 multiply-adds a second, against
OpenBLAS sgemm's ~120 G float32 ones on the same shape decoded), kernels_numba's row
loops 22-37 ms; the results agree to 4-5e-7 of their largest (summation order). Other
micro-kernel shapes: 32 x 8 and 64 x 4 as fast, 64 x 3 and 16 x 12 10-25% slower. Over
one 1B layer's GEMMs (benchmarks/prefill_gemm.py, q8): 416 G operations a second, the
row loops 119, float32 tiles + sgemm 169. The whole 128-token prefill of the Llama 3.2
1B shape with int8 activations (bench.py, benchmarks/RESULTS.md), against float32 tiles
for BLAS before: Q8_0 68 -> 147-166 tok/s, Q4_0 66 -> 150-168, Q4_K 70 -> 146-148.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import kernels_numba
from .kernels_simd import (F32X16, I32, I32X16, I64, array_parts, clamped_rows, counted_loop,
                           cpu_features, declare, load_scale, splat, store_vectors)

_LANES = 16  # int32 / float32 lanes of a zmm register: rows of x
_X_VECTORS = 2  # the micro-kernel: 2 zmm of rows of x (32 rows) ...
_W_ROWS = 6  # ... by 6 weight rows: 12 float32 accumulators and 12 int32 sums
_ROWS_PER_TASK = 48  # weight rows handed to a thread (a multiple of _W_ROWS)
_QUADS = 8  # quads of a 32-value block


def available() -> bool:
    """Whether this CPU has the zmm vpdpbusd the micro-kernel is built from."""
    return {"avx512vnni", "avx512bw"} <= cpu_features()


# --- x, quantised and laid out in quads ------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def pack_activations(x):
    """x (M, K) float32 -> (x_quads (K/4, M'), x_scales (K/32, M'), x_sums (K/32, M')),
    M' = M rounded up to 16: x quantised per 32-value block by quantize_rows, quad p of
    row m (its int8 values 4p .. 4p + 3) in x_quads[p, m] (int32), the block's scale and
    the sum of its int8 values beside them. Padding rows are 0. In parallel by groups of
    rows: serially, quantising a 128 x 8192 x took 2.5 ms, against 10 for the GEMM after it
    (w2), and 1.6 ms like this on 2 threads."""
    n_x, n_cols = x.shape
    n_padded = -(-n_x // _LANES) * _LANES
    x_quads = np.zeros((n_cols // 4, n_padded), dtype=np.int32)
    x_scales = np.zeros((n_cols // 32, n_padded), dtype=np.float32)
    x_sums = np.zeros((n_cols // 32, n_padded), dtype=np.int32)
    for group in prange(n_padded // _LANES):
        m0, m1 = group * _LANES, min(n_x, (group + 1) * _LANES)
        xq, scales, starts, _ = kernels_numba.quantize_rows(x[m0:m1], False)
        quads = xq.view(np.int32)
        for m in range(m1 - m0):
            for p in range(n_cols // 4):
                x_quads[p, m0 + m] = quads[m, p]
            for b in range(n_cols // 32):
                x_scales[b, m0 + m] = scales[m, b]
                x_sums[b, m0 + m] = starts[m, b, 0] // -128  # quantize_rows: -128 * sum
    return x_quads, x_scales, x_sums


# --- the micro-kernel ------------------------------------------------------------------

def _vector_at(builder, pointer, index):
    """The 16 lanes of int32 / float32 at pointer + index (elements), unaligned."""
    vector_type = F32X16 if pointer.type.pointee == ir.FloatType() else I32X16
    return builder.load(builder.bitcast(builder.gep(pointer, [index]),
                                        vector_type.as_pointer()), align=4)


def _weight_quads(builder, q4, row, block):
    """The 8 quads of a row's block, each broadcast to every lane as unsigned bytes."""
    row32 = builder.bitcast(row, I32.as_pointer())
    if not q4:  # 32 int8 values: 8 dwords, top bits flipped before the broadcast (the
        # flip of the broadcast vector sent LLVM 22's code generator into an endless loop)
        flip = ir.Constant(I32, -0x7F7F7F80)  # 0x80808080
        first = builder.mul(block, ir.Constant(I64, _QUADS))
        return [splat(builder, builder.xor(builder.load(builder.gep(
            row32, [builder.add(first, ir.Constant(I64, q))]), align=1), flip), _LANES)
            for q in range(_QUADS)]
    # 16 bytes of nibbles: value i low in byte i, value 16 + i high in byte i (formats.q4)
    first = builder.mul(block, ir.Constant(I64, _QUADS // 2))
    low_nibbles = ir.Constant(I32X16, [0x0F0F0F0F] * _LANES)
    dwords = [splat(builder, builder.load(builder.gep(row32, [builder.add(
        first, ir.Constant(I64, q))]), align=1), _LANES) for q in range(_QUADS // 2)]
    lows = [builder.and_(d, low_nibbles) for d in dwords]
    highs = [builder.and_(builder.lshr(d, ir.Constant(I32X16, [4] * _LANES)), low_nibbles)
             for d in dwords]
    return lows + highs


def _make_block(x_vectors: int):
    """An intrinsic block(x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc, m0,
    n0): acc[16 (i * x_vectors + v) + l] = row m0 + 16 v + l of x . weight row
    min(n0 + i, N - 1), i < 6, v < x_vectors, over all of K. weights: Q8 values (N, K)
    int8, or Q4 nibbles (N, K/2) uint8; w_scales / w_mins (N, K/32) float32 or float16
    bits (uint16); w_mins None: Q8 when weights are int8, else Q4_0."""

    @intrinsic
    def block(typingctx, x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc, m0, n0):
        q4 = weights.dtype == types.uint8
        has_mins = not isinstance(w_mins, types.NoneType)
        if weights.dtype not in (types.int8, types.uint8) or (has_mins and not q4):
            raise TypingError(f"int8 GEMM: Q8 (int8, no mins) or Q4 (uint8) weights, got "
                              f"{weights.dtype} with mins {w_mins}")

        def codegen(context, builder, sig, args):
            parts = array_parts(context, builder, sig, args)
            (xq_data, (_, stride)), (xs_data, _), (xsum_data, _) = parts[:3]
            (w_data, (n_rows, row_bytes)), (ws_data, (_, n_blocks)) = parts[3:5]
            mins_data = parts[5][0] if has_mins else None
            acc_data = parts[-1][0]
            m0, n0 = args[7], args[8]
            dpbusd = declare(builder, "llvm.x86.avx512.vpdpbusd.512", I32X16,
                             I32X16, I32X16, I32X16)
            fma = declare(builder, "llvm.fma.v16f32", F32X16, F32X16, F32X16, F32X16)
            x_quads_at = builder.gep(builder.bitcast(xq_data, I32.as_pointer()), [m0])
            rows = clamped_rows(builder, n0, _W_ROWS, n_rows)
            w_rows = [builder.gep(w_data, [builder.mul(r, row_bytes)]) for r in rows]
            scale_rows = [builder.mul(r, n_blocks) for r in rows]
            start_factor = None if has_mins else -8 if q4 else -128

            def one_block(b, accs):
                x_at = [builder.add(builder.mul(b, stride), ir.Constant(I64, _LANES * v))
                        for v in range(x_vectors)]
                x_scale = [_vector_at(builder, builder.gep(xs_data, [m0]), at) for at in x_at]
                x_sum = [_vector_at(builder, builder.gep(xsum_data, [m0]), at) for at in x_at]
                if start_factor is None:  # Q4 with mins: the sums start at 0
                    starts = [ir.Constant(I32X16, None)] * x_vectors
                    x_sum_scaled = [builder.fmul(builder.sitofp(s, F32X16), d)
                                    for s, d in zip(x_sum, x_scale)]
                else:
                    factor = ir.Constant(I32X16, [start_factor] * _LANES)
                    starts = [builder.mul(s, factor) for s in x_sum]
                quad_rows = [builder.mul(builder.add(builder.mul(b, ir.Constant(I64, _QUADS)),
                                                     ir.Constant(I64, q)), stride)
                             for q in range(_QUADS)]
                updated = []
                for i in range(_W_ROWS):
                    sums = list(starts)
                    for q, w in enumerate(_weight_quads(builder, q4, w_rows[i], b)):
                        for v in range(x_vectors):
                            xq = _vector_at(builder, x_quads_at, builder.add(
                                quad_rows[q], ir.Constant(I64, _LANES * v)))
                            sums[v] = builder.call(dpbusd, [sums[v], w, xq])
                    scale_at = builder.add(scale_rows[i], b)
                    w_scale = splat(builder, load_scale(builder, sig.args[4], ws_data,
                                                        scale_at), _LANES)
                    if has_mins:
                        w_min = splat(builder, load_scale(builder, sig.args[5], mins_data,
                                                          scale_at), _LANES)
                    for v in range(x_vectors):
                        acc = builder.call(fma, [builder.sitofp(sums[v], F32X16),
                                                 builder.fmul(w_scale, x_scale[v]),
                                                 accs[i * x_vectors + v]])
                        if has_mins:
                            acc = builder.call(fma, [w_min, x_sum_scaled[v], acc])
                        updated.append(acc)
                return updated

            store_vectors(builder, acc_data, counted_loop(
                builder, n_blocks, 1, [F32X16] * (_W_ROWS * x_vectors), one_block))
            return context.get_dummy_value()

        return types.void(x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc,
                          types.intp, types.intp), codegen

    return block


_block_32 = _make_block(_X_VECTORS)
_block_16 = _make_block(1)  # the last 16 rows of x, when that is all that is left


# --- the loops around it ---------------------------------------------------------------

@njit(cache=True, nogil=True)
def _gemm_rows(x_quads, x_scales, x_sums, weights, w_scales, w_mins, out, acc, start, stop):
    """out[:, start:stop] by micro-kernel blocks; acc: scratch of 6 x 32 float32."""
    n_x, n_padded = out.shape[0], x_quads.shape[1]
    for n0 in range(start, stop, _W_ROWS):
        n_valid = min(_W_ROWS, stop - n0)
        m0 = 0
        while m0 < n_x:
            if m0 + _LANES * _X_VECTORS <= n_padded:
                _block_32(x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc, m0, n0)
                width = _LANES * _X_VECTORS
            else:
                _block_16(x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc, m0, n0)
                width = _LANES
            kernels_numba.store_block(acc, out, m0, n0, n_valid, width)
            m0 += width


@njit(cache=True, nogil=True, parallel=True)
def _gemm(x_quads, x_scales, x_sums, weights, w_scales, w_mins, out):
    n_rows = weights.shape[0]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        acc = np.empty(_W_ROWS * _LANES * _X_VECTORS, dtype=np.float32)
        start = task * _ROWS_PER_TASK
        _gemm_rows(x_quads, x_scales, x_sums, weights, w_scales, w_mins, out, acc, start,
                   min(n_rows, start + _ROWS_PER_TASK))


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the GEMM for the weights the loader
    produces (kernels_numba.warmup_weights): Q8, Q4_K, Q4_1 and Q4_0."""
    x = np.zeros((2, 64), dtype=np.float32)
    out = np.empty((2, 2), dtype=np.float32)
    for w in kernels_numba.warmup_weights(2, 64):
        matmul_q8(x, w.values, w.scales, out)
        for q4_scales, q4_mins in w.q4_forms:
            matmul_q4(x, w.packed, q4_scales, q4_mins, out)


def supports(*weight_arrays) -> bool:
    """Whether the micro-kernel reads these weight arrays (None: no array): it reads
    their rows at the row length, so they must be contiguous."""
    return all(a is None or a.flags.c_contiguous for a in weight_arrays)


def matmul_q8(x, values, scales, out):
    """out = x (M, K) @ Q8 matrix (values (N, K) int8, scales (N, K/32) float32).T, x
    quantised to int8 per block (as kernels_numba.matmul_q8 with int8 activations)."""
    _gemm(*_packed(x, out, values, scales), values, scales, None, out)


def matmul_q4(x, packed, scales, mins, out):
    """out = x (M, K) @ Q4 matrix.T (arguments as kernels_numba.matmul_q4's), x quantised
    to int8 per block."""
    _gemm(*_packed(x, out, packed, scales), packed, scales, mins, out)


def _packed(x, out, weights, scales):
    """pack_activations(x), after checking the shapes the micro-kernel reads unchecked."""
    n_x, n_in = x.shape
    n_out, n_blocks = scales.shape
    if n_in != 32 * n_blocks or out.shape != (n_x, n_out) or not supports(weights, scales):
        raise ValueError(f"int8 GEMM: x {x.shape}, out {out.shape} and contiguous weights of "
                         f"{n_out} rows of {32 * n_blocks} values expected (got "
                         f"{weights.shape}, scales {scales.shape})")
    return pack_activations(np.ascontiguousarray(x, dtype=np.float32))
