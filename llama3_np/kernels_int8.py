"""Prefill GEMMs by Q8 / Q4 weights with int8 activations (AMX, AVX512-VNNI, AVX2); needs
numba.

With kernels.set_int8_activations(True), kernels_numba multiplies each weight row by
each row of x quantised to int8 (kernels_simd's row dot products): right for the few
rows of a decode step, but for a prompt every row of x is read again for each weight
row, and each row pays for its own reduction. Here micro-kernels multiply blocks of
weight rows by blocks of rows of x, as the bf16 GEMMs of kernels_bf16.py do, on one of
three routes:

- "vnni": 6 weight rows by 32 rows of x (16 for the last rows of x). The 16 lanes of a
  zmm register are 16 rows of x, each lane holding four consecutive int8 values of its
  row (a quad), so x is laid out quad by quad (pack_activations); each quad of a weight
  row (four bytes, read as stored) is broadcast to all lanes, and `vpdpbusd` (unsigned
  x signed bytes) adds the four products of each lane into int32. vpdpbusd's first
  operand is unsigned: the weights go there. A Q8 weight is made unsigned by flipping
  its top bit (w + 128), and the block's sums start at -128 * sum(xq_b); Q4's nibbles
  are unsigned already, and Q4_0's offset (w = d * (q - 8)) starts them at -8 * sum(xq_b).
- "amx": Intel AMX `tdpbssd` (signed x signed bytes), 32 weight rows by 32 rows of x
  in four 16 x 16 int32 tiles a block (_amx_block). Q8's rows are tiles as stored; Q4's
  are unpacked to int8 once per 32 rows (Q4_0's as q - 8). Up to 16 rows of x go to
  "vnni" (_matmul).
- "avx2": "vnni"'s blocks in ymm registers of 8 lanes (8 rows of x, from the same
  layout), with AVX2's byte products (kernels_simd.dot_u8_s8): `vpmaddubsw` (unsigned
  x signed bytes, adjacent pairs summed in int16), then `vpmaddwd` by ones into int32.
  Q4's nibbles are small enough to sum a whole block's pairs in int16 first (8 x 2 x
  15 x 127 = 30480), one vpmaddwd a block; a Q8 weight goes as |w| against xq with w's
  sign, one vpmaddwd a quad (2 x 128 x 127 = 32512 is all int16 holds).

On all three, after each 32-value block the int32 sums are converted to float32 once and
scaled by weight scale x activation scale into float32 accumulators (plus min x the
block's sum of x, for Q4 with mins): per block the same float32 operations as the row
dot products, added up in another order; the routes' results are the same bits. The
activations are quantised by kernels_numba.quantize_block, as the row dot products
quantise them: a token's numbers do not depend on the prompt's length.

"vnni" needs AVX512-VNNI (Cascade Lake and later Xeons, Zen 4 and 5), "amx" AMX-INT8
too (Sapphire Rapids and later Xeons) and Linux's permission for the tile state, "avx2"
AVX2 (every x86-64 CPU since Haswell and Zen 1); LLAMA3_NP_INT8_GEMM=off, amx, vnni or
avx2 overrides the choice (a route's name: it or a route after it). Without a route
kernels.py keeps the row loops up to 32 rows of x and decodes float32 tiles for BLAS
(float32 x) beyond.

Measured on an Intel Xeon with AMX (2 cores, shared; 128 rows of x, best of 5-12):
- an 8192 x 2048 matrix, Q8 / Q4_0 / Q4_K: "vnni" 8.3-8.9 / 8.8-9.2 / 10.4-11.3 ms (~220 G
  int8 multiply-adds a second, against OpenBLAS sgemm's ~120 G float32 ones on the same
  shape decoded), "amx" 4.7-5.6 / 5.5-7.3 / 6.5-7.9 ms; kernels_numba's row loops 22-37
  ms; the results agree with float64 to 4-5e-7 of their largest (summation order).
  Other vnni micro-kernel shapes: 32 x 8 and 64 x 4 as fast, 64 x 3 and 16 x 12 10-25%
  slower.
- AMX runs far below its peak: of ~4.5 ms on Q8, tdpbssd itself took ~0.2. A block's
  int32 sums go through memory to be scaled (AMX converts nothing), and those tile loads
  and stores and the float32 scaling take the rest (the Q4 mins another ~20%).
- the whole 128-token prefill of the Llama 3.2 1B shape with int8 activations
  (bench.py, benchmarks/RESULTS.md): float32 tiles for BLAS 60-80 tok/s; "vnni" Q8_0
  147-166, Q4_0 150-168, Q4_K 146-148; "amx" Q8_0 208-218, Q4_0 208-250, Q4_K 188-195
  (llama.cpp on AMX: 190-217).

Measured on an AMD EPYC with AVX2 only (Zen 3, 2 cores; 128 rows of x, best of 5):
- the 8192 x 2048 matrix, Q8 / Q4_0: "avx2" 28-35 / 16-24 ms (60-130 G int8
  multiply-adds a second; Q4_0 101 G before its pairs were summed a block at a time in
  int16, 122-134 after), against 27-40 ms for OpenBLAS sgemm on the same shape already
  decoded to float32.
- the whole 1B prefill with int8 activations: float32 tiles for BLAS Q8_0 43-44 tok/s,
  Q4_0 37-39, Q4_K 51-53; "avx2" 68-77, 76-90, 83-94 (llama.cpp: 70, 66, 53).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from . import kernels_numba
from .formats.q4 import SUPER_BLOCKS
from .kernels_simd import (F32X16, I8X16, I8X32, I32, I64, Routes, WeightScales, amx_config,
                           amx_configure, amx_release, array_parts, both_forms, clamped_rows,
                           counted_loop, cpu_features, declare, dot_u8_s8, load_vector,
                           nibbles, q8_block, splat, store_vectors, tile_op)

_LANES = 16  # int32 / float32 lanes of a zmm register: rows of x (a ymm register: 8)
_X_VECTORS = 2  # the micro-kernel: 2 zmm of rows of x (32 rows; "avx2": 4 ymm) ...
_W_ROWS = 6  # ... by 6 weight rows: 12 float32 accumulators and 12 int32 sums
_ROWS_PER_TASK = 48  # weight rows a thread claims at once (a multiple of _W_ROWS)
_QUADS = 8  # quads of a 32-value block


# LLAMA3_NP_INT8_GEMM=off (or a route's name) overrides what the CPU offers.
_VNNI = {"avx512vnni", "avx512bw"}  # the zmm vpdpbusd (every AMX-INT8 CPU has it)
_routes = Routes("int8 GEMM", "LLAMA3_NP_INT8_GEMM",
                 {"amx": _VNNI | {"amx-int8", "amx-tile"}, "vnni": _VNNI, "avx2": {"avx2"}})
route, available_routes, set_route = (_routes.route, _routes.available_routes,
                                      _routes.set_route)


# --- x, quantised and laid out in quads ------------------------------------------------

@njit(cache=True, nogil=True, parallel=True)
def pack_activations(x, align):
    """x (M, K) float32 -> (x_quads (M'/16, K/4, 16), x_scales (K/32, M'), x_sums (K/32,
    M')), M' = M rounded up to align (a multiple of 16): x quantised per 32-value block by
    quantize_block, quad p of row 16 g + l (its int8 values 4p .. 4p + 3) in x_quads[g, p,
    l] (int32: a block's quads of 16 rows are 512 contiguous bytes, an AMX tile), the
    block's scale and the sum of its int8 values in x_scales and x_sums. Padding rows are
    0. In parallel by groups of rows (quantising a 128 x 8192 x took 2.5 ms serially,
    against 10 for the GEMM after it, w2)."""
    n_x, n_cols = x.shape
    n_padded = -(-n_x // align) * align
    x_quads = np.zeros((n_padded // _LANES, n_cols // 4, _LANES), dtype=np.int32)
    x_scales = np.zeros((n_cols // 32, n_padded), dtype=np.float32)
    x_sums = np.zeros((n_cols // 32, n_padded), dtype=np.int32)
    for group in prange(n_padded // _LANES):
        q = np.empty((1, 32), dtype=np.int8)
        quads = q[0].view(np.int32)
        for m in range(group * _LANES, min(n_x, (group + 1) * _LANES)):
            for b in range(n_cols // 32):
                x_scales[b, m], x_sums[b, m] = kernels_numba.quantize_block(
                    x, m, 32 * b, q, 0, 0, 16)  # into q's row, in plain order
                x_quads[group, _QUADS * b:_QUADS * (b + 1), m % _LANES] = quads
    return x_quads, x_scales, x_sums


# --- the micro-kernel ------------------------------------------------------------------

def _vector_at(builder, pointer, index, lanes=_LANES):
    """`lanes` int32 / float32 at pointer + index (elements), unaligned."""
    element = ir.FloatType() if pointer.type.pointee == ir.FloatType() else I32
    return builder.load(builder.bitcast(builder.gep(pointer, [index]),
                                        ir.VectorType(element, lanes).as_pointer()), align=4)


def _weight_quads(builder, q4, row, block, form):
    """The 8 quads of a row's block, each broadcast to every lane: Q4's nibbles, and for
    "vnni" Q8's values made unsigned (top bits flipped), for "avx2" as stored."""
    lanes = _lanes(form)
    row32 = builder.bitcast(row, I32.as_pointer())
    if not q4:  # 32 int8 values: 8 dwords, top bits flipped before the broadcast (the
        # flip of the broadcast vector sent LLVM 22's code generator into an endless loop)
        flip = ir.Constant(I32, -0x7F7F7F80 if form == "vnni" else 0)  # 0x80808080
        first = builder.mul(block, ir.Constant(I64, _QUADS))
        return [splat(builder, builder.xor(builder.load(builder.gep(
            row32, [builder.add(first, ir.Constant(I64, q))]), align=1), flip), lanes)
            for q in range(_QUADS)]
    # 16 bytes of nibbles: value i low in byte i, value 16 + i high in byte i (formats.q4)
    first = builder.mul(block, ir.Constant(I64, _QUADS // 2))
    low_nibbles = splat(builder, ir.Constant(I32, 0x0F0F0F0F), lanes)
    dwords = [splat(builder, builder.load(builder.gep(row32, [builder.add(
        first, ir.Constant(I64, q))]), align=1), lanes) for q in range(_QUADS // 2)]
    lows = [builder.and_(d, low_nibbles) for d in dwords]
    highs = [builder.and_(builder.lshr(d, splat(builder, ir.Constant(I32, 4), lanes)),
                          low_nibbles) for d in dwords]
    return lows + highs


def _lanes(form):
    """Rows of x in one vector: a zmm register's 16 int32 lanes, or a ymm register's 8."""
    return _LANES if form == "vnni" else _LANES // 2


def _block_dot(builder, form, q4, start, operands):
    """start + the products of one 32-value block: operands are its 8 (weight quad, x
    quads) pairs, each lane's four products summed by kernels_simd.dot_u8_s8: "vnni"'s
    weights are unsigned already (_weight_quads); "avx2" sums Q4's unsigned nibbles over
    the whole block in int16, and Q8's signed weights one quad at a time, through their
    magnitude (kernels_simd.q8_block)."""
    if form == "vnni" or q4:
        return dot_u8_s8(builder, form, operands, start)
    for weights, xq in operands:
        start = q8_block(builder, form, *(builder.bitcast(v, I8X32) for v in (weights, xq)),
                         start)
    return start


def _make_block(x_rows: int):
    """An intrinsic block(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins,
    acc, m0, n0): acc[x_rows * i + m] = row m0 + m of x . weight row min(n0 + i, N - 1),
    i < 6, m < x_rows, over all of K. weights: Q8 values (N, K) int8, or Q4 nibbles (N,
    K/2) uint8; w_scales / w_mins (N, K/32) float32 or float16 bits (uint16), or Q4_K's
    two levels (kernels_simd.WeightScales); w_mins None: Q8 when weights are int8, else
    Q4_0. use_vnni: by zmm vpdpbusd, else by AVX2
    (kernels_simd.both_forms); the same int32 sums either way."""

    @intrinsic
    def block(typingctx, use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc,
              m0, n0):
        q4 = weights.dtype == types.uint8
        has_mins = not isinstance(w_mins, types.NoneType)
        if weights.dtype not in (types.int8, types.uint8) or (has_mins and not q4):
            raise TypingError(f"int8 GEMM: Q8 (int8, no mins) or Q4 (uint8) weights, got "
                              f"{weights.dtype} with mins {w_mins}")

        def codegen(context, builder, sig, args):
            inner = sig.return_type(*sig.args[1:])
            both_forms(builder, args[0], _VNNI <= cpu_features(), lambda form: _block_sums(
                context, builder, inner, args[1:], form, x_rows))
            return context.get_dummy_value()

        return types.void(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc,
                          types.intp, types.intp), codegen

    return block


def _block_sums(context, builder, sig, args, form, x_rows):
    """_make_block's code in one instruction form."""
    lanes = _lanes(form)
    f32s = ir.VectorType(ir.FloatType(), lanes)
    q4 = sig.args[3].dtype == types.uint8
    has_mins = not isinstance(sig.args[5], types.NoneType)
    parts = array_parts(context, builder, sig, args)
    (xq_data, (_, n_quads, _)), (xs_data, (_, stride)), (xsum_data, _) = parts[:3]
    w_data, (n_rows, row_bytes) = parts[3]
    acc_data = parts[-1][0]
    w_scales, w_mins = (WeightScales(context, builder, sig.args[k], args[k])
                        if present else None for k, present in ((4, True), (5, has_mins)))
    n_blocks = w_scales.n_blocks
    m0, n0 = args[7], args[8]
    fma = declare(builder, f"llvm.fma.v{lanes}f32", f32s, f32s, f32s, f32s)
    x_quads_at = builder.gep(xq_data, [builder.mul(m0, n_quads)])  # x_quads[m0 / 16]
    rows = clamped_rows(builder, n0, _W_ROWS, n_rows)
    w_rows = [builder.gep(w_data, [builder.mul(r, row_bytes)]) for r in rows]
    scale_rows = [w_scales.row(r) for r in rows]
    min_rows = [w_mins.row(r) for r in rows] if has_mins else None
    # The sums' start: Q4_0's offset (w = d (q - 8)), and "vnni"'s flip of Q8's top bits
    start_factor = -8 if q4 and not has_mins else -128 if not q4 and form == "vnni" else 0
    # Each vector's rows of x (m0 + first ..) at lane first % 16 of group first // 16
    x_offsets = [builder.add(builder.mul(n_quads, ir.Constant(I64, first // _LANES * _LANES)),
                             ir.Constant(I64, first % _LANES))
                 for first in range(0, x_rows, lanes)]

    def one_block(b, accs):
        x_at = [builder.add(builder.mul(b, stride), ir.Constant(I64, lanes * v))
                for v in range(len(x_offsets))]
        x_scale = [_vector_at(builder, builder.gep(xs_data, [m0]), at, lanes) for at in x_at]
        x_sum = [_vector_at(builder, builder.gep(xsum_data, [m0]), at, lanes) for at in x_at]
        x_sum_scaled = [builder.fmul(builder.sitofp(s, f32s), d)
                        for s, d in zip(x_sum, x_scale)] if has_mins else None
        starts = [builder.mul(s, splat(builder, ir.Constant(I32, start_factor), lanes))
                  for s in x_sum]
        quad_rows = [builder.mul(builder.add(builder.mul(b, ir.Constant(I64, _QUADS)),
                                             ir.Constant(I64, q)), ir.Constant(I64, _LANES))
                     for q in range(_QUADS)]  # x_quads[., 8 b + q] (16 int32 each)
        updated = []
        for i in range(_W_ROWS):
            quads = _weight_quads(builder, q4, w_rows[i], b, form)
            sums = [_block_dot(builder, form, q4, start, [
                (w, _vector_at(builder, x_quads_at, builder.add(at, offset), lanes))
                for w, at in zip(quads, quad_rows)]) for start, offset in zip(starts, x_offsets)]
            w_scale = splat(builder, scale_rows[i].at(b), lanes)
            if has_mins:
                w_min = splat(builder, min_rows[i].at(b), lanes)
            for v in range(len(x_offsets)):
                acc = builder.call(fma, [builder.sitofp(sums[v], f32s),
                                         builder.fmul(w_scale, x_scale[v]),
                                         accs[i * len(x_offsets) + v]])
                if has_mins:
                    acc = builder.call(fma, [w_min, x_sum_scaled[v], acc])
                updated.append(acc)
        return updated

    store_vectors(builder, acc_data, counted_loop(
        builder, n_blocks, 1, [f32s] * (_W_ROWS * len(x_offsets)), one_block))


_block_32 = _make_block(_LANES * _X_VECTORS)
_block_16 = _make_block(_LANES)  # the last 16 rows of x, when that is all that is left


# --- AMX: the same sums, block by block, in tiles ----------------------------------------

_AMX_BLOCK = 2 * _LANES  # weight rows, and rows of x, of one AMX micro-kernel
_AMX_GROUPS_PER_TASK = 4  # blocks of 32 weight rows handed to a thread
_AMX_BATCH = 4  # 32-value blocks multiplied before their sums are scaled
# tiles 0-3: int32 sums, 16 weight rows x 16 rows of x; 4-5: 16 weight rows x one block
# (32 int8); 6-7: one block of 16 rows of x (8 quads x 16 rows)
_AMX_CONFIG = amx_config([(_LANES, 4 * _LANES)] * 4 + [(_LANES, 32)] * 2
                         + [(_QUADS, 4 * _LANES)] * 2)


@intrinsic
def _amx_block(typingctx, x_quads, x_scales, x_sums, weights, w_scales, w_mins, sums, acc, m0,
               w_row, n0):
    """acc[32 i + m] = row m0 + m of x . weight row min(n0 + i, N - 1), i, m < 32, over all
    of K, as _make_block's sums. Per 32-value block, tdpbssd (signed x signed bytes) adds
    the products of 32 weight rows and of x's quads into four int32 tiles, stored to
    `sums` (int32 scratch of _AMX_BATCH blocks, a tile's 16 rows of 64 bytes one after
    another: at the 128-byte stride of a 32 x 32 layout the GEMM took 1.4x as long); then
    per block the same float32 operations as _make_block's scale the sums into acc, each
    accumulator loaded and stored once for _AMX_BATCH blocks. The weights: rows w_row..
    w_row + 31 of an (N, K) int8 matrix (Q8 as stored), or an (K/32, 32, 32) block-major
    copy (_stage_row; w_row unused)."""
    has_mins = not isinstance(w_mins, types.NoneType)
    blocked = weights.ndim == 3
    if weights.dtype != types.int8:
        raise TypingError(f"AMX int8 GEMM: int8 weight rows (Q8's, or staged), got "
                          f"{weights.dtype}")

    def codegen(context, builder, sig, args):
        parts = array_parts(context, builder, sig, args)
        (xq_data, (_, n_quads, _)), (xs_data, (_, stride)), (xsum_data, _) = parts[:3]
        w_data, w_shape = parts[3]
        n_cols = w_shape[-1]
        w_scales, w_mins = (WeightScales(context, builder, sig.args[k], args[k])
                            if present else None for k, present in ((4, True), (5, has_mins)))
        n_rows, n_blocks = w_scales.n_rows, w_scales.n_blocks
        (sums_data, _), (acc_data, _) = parts[-2:]
        m0, w_row, n0 = args[8:]
        fma = declare(builder, "llvm.fma.v16f32", F32X16, F32X16, F32X16, F32X16)

        def const(value):
            return ir.Constant(I64, value)

        def add(*terms):
            total = terms[0]
            for term in terms[1:]:
                total = builder.add(total, term)
            return total

        def vector(data, index):
            return _vector_at(builder, data, index)

        def address(data, index):  # index in the array's elements
            return builder.gep(data, [index])

        store_vectors(builder, acc_data, [ir.Constant(F32X16, None)] * (2 * _AMX_BLOCK))
        if blocked:  # staged (blocks, 32, 32): rows 16 a.. of block b at (32 b + 16 a) 32
            w_tops = [address(w_data, const(32 * _LANES * a)) for a in range(2)]
            w_step, w_stride = const(32 * _AMX_BLOCK), const(32)
        else:  # weight rows w_row + 16 a.. at their stride
            w_tops = [address(w_data, builder.mul(add(w_row, const(_LANES * a)), n_cols))
                      for a in range(2)]
            w_step, w_stride = const(32), n_cols
        weight_rows = clamped_rows(builder, n0, _AMX_BLOCK, n_rows)
        scale_rows = [w_scales.row(r) for r in weight_rows]
        min_rows = [w_mins.row(r) for r in weight_rows] if has_mins else None

        def sums_at(slot, i, c):  # block slot's int32 sums of weight row i, rows 16 c.. of x
            tile, row = 2 * (i // _LANES) + c, i % _LANES
            return const(_AMX_BLOCK * _AMX_BLOCK * slot + _LANES * (_LANES * tile + row))

        def multiply(b, slot):
            """Block b's products into the scratch's slot."""
            for tile in range(4):
                tile_op(builder, "tilezero", tile)
            for a in range(2):
                tile_op(builder, "tileloadd64", 4 + a,
                        address(w_tops[a], builder.mul(b, w_step)), w_stride)
            for c in range(2):  # x_quads[m0 / 16 + c, 8 b]: the block's 8 quads of 16 rows
                quads = add(builder.mul(add(m0, const(_LANES * c)), n_quads),
                            builder.mul(b, const(_QUADS * _LANES)))
                tile_op(builder, "tileloadd64", 6 + c, address(xq_data, quads),
                        const(4 * _LANES))
            for a in range(2):
                for c in range(2):
                    tile_op(builder, "tdpbssd", 2 * a + c, 4 + a, 6 + c)
                    tile_op(builder, "tilestored64", 2 * a + c,
                            address(sums_data, sums_at(slot, _LANES * a, c)), const(4 * _LANES))

        def scale(first, count):
            """Blocks first .. first + count - 1, in the scratch, into acc."""
            blocks = [add(first, const(slot)) for slot in range(count)]
            x_at = [add(builder.mul(b, stride), m0) for b in blocks]  # x_scales[b, m0]
            x_scale = [[vector(xs_data, add(at, const(_LANES * c))) for c in range(2)]
                       for at in x_at]
            if has_mins:
                x_sum_scaled = [[builder.fmul(builder.sitofp(vector(
                    xsum_data, add(at, const(_LANES * c))), F32X16), d[c]) for c in range(2)]
                    for at, d in zip(x_at, x_scale)]
            for i in range(_AMX_BLOCK):
                w_scale = [splat(builder, scale_rows[i].at(b), _LANES) for b in blocks]
                if has_mins:
                    w_min = [splat(builder, min_rows[i].at(b), _LANES) for b in blocks]
                for c in range(2):
                    at = const(_AMX_BLOCK * i + _LANES * c)
                    total = vector(acc_data, at)
                    for slot in range(count):
                        total = builder.call(fma, [
                            builder.sitofp(vector(sums_data, sums_at(slot, i, c)), F32X16),
                            builder.fmul(w_scale[slot], x_scale[slot][c]), total])
                        if has_mins:
                            total = builder.call(fma, [w_min[slot], x_sum_scaled[slot][c],
                                                       total])
                    store_vectors(builder, address(acc_data, at), [total])

        def batch(first, _):
            for slot in range(_AMX_BATCH):
                multiply(add(first, const(slot)), slot)
            scale(first, _AMX_BATCH)
            return []

        def single(i, _):
            block = add(n_batched, i)
            multiply(block, 0)
            scale(block, 1)
            return []

        batches = builder.udiv(n_blocks, const(_AMX_BATCH))
        n_batched = builder.mul(batches, const(_AMX_BATCH))
        with builder.if_then(builder.icmp_signed(">", n_batched, const(0))):
            counted_loop(builder, n_batched, _AMX_BATCH, [], batch)
        with builder.if_then(builder.icmp_signed("<", n_batched, n_blocks)):
            counted_loop(builder, builder.sub(n_blocks, n_batched), 1, [], single)
        return context.get_dummy_value()

    return types.void(x_quads, x_scales, x_sums, weights, w_scales, w_mins, sums, acc,
                      types.intp, types.intp, types.intp), codegen


@intrinsic
def _stage_row(typingctx, row, staged, i, nibble_offset):
    """staged[b, i] = block b of one weight row as 32 int8 values in their order, for
    every block b: Q8's (row int8) copied; Q4's (row uint8 nibbles: value k low in byte k
    of its block, 16 + k high) unpacked minus nibble_offset (8 for Q4_0, whose weights
    are d (q - 8): then they are Q8's kind). In vectors: from a numba loop, LLVM stored
    each byte on its own (3.3 ms for a 8192 x 2048 matrix on one core; this 1.4)."""
    q4 = row.dtype == types.uint8

    def codegen(context, builder, sig, args):
        (row_data, (row_length,)), (staged_data, _) = array_parts(context, builder, sig, args)
        i, offset = args[2], builder.trunc(args[3], ir.IntType(8))
        n_blocks = builder.udiv(row_length, ir.Constant(I64, 16 if q4 else 32))
        first = builder.gep(staged_data, [builder.mul(i, ir.Constant(I64, 32))])

        def one_block(b, _):
            target = builder.gep(first, [builder.mul(b, ir.Constant(I64, 32 * _AMX_BLOCK))])
            if not q4:
                builder.store(load_vector(builder, row_data, b, I8X32, 1),
                              builder.bitcast(target, I8X32.as_pointer()), align=1)
                return []
            packed = load_vector(builder, row_data, b, I8X16, 1)
            for half, unsigned in enumerate(nibbles(builder, packed)):
                values = builder.sub(unsigned, splat(builder, offset, 16))
                builder.store(values, builder.bitcast(builder.gep(
                    target, [ir.Constant(I64, 16 * half)]), I8X16.as_pointer()), align=1)
            return []

        counted_loop(builder, n_blocks, 1, [], one_block)
        return context.get_dummy_value()

    return types.void(row, staged, types.intp, types.intp), codegen


# --- the loops around them -------------------------------------------------------------

@njit(cache=True, nogil=True)
def _gemm_rows(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, out, acc, start,
               stop):
    """out[:, start:stop] by micro-kernel blocks; acc: scratch of 6 x 32 float32."""
    n_x, n_padded = out.shape[0], x_scales.shape[1]
    for n0 in range(start, stop, _W_ROWS):
        n_valid = min(_W_ROWS, stop - n0)
        m0 = 0
        while m0 < n_x:
            if m0 + _LANES * _X_VECTORS <= n_padded:
                _block_32(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc,
                          m0, n0)
                width = _LANES * _X_VECTORS
            else:
                _block_16(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, acc,
                          m0, n0)
                width = _LANES
            kernels_numba.store_block(acc, out, m0, n0, n_valid, width, False)
            m0 += width


@njit(cache=True, nogil=True, parallel=True)
def _gemm(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, out):
    claimed = kernels_numba.no_claims()
    for _ in prange(kernels_numba.thread_count()):  # blocks of rows claimed in turn
        acc = np.empty(_W_ROWS * _LANES * _X_VECTORS, dtype=np.float32)
        start, stop = kernels_numba.claim_rows(claimed, weights.shape[0], _ROWS_PER_TASK)
        while start < stop:
            _gemm_rows(use_vnni, x_quads, x_scales, x_sums, weights, w_scales, w_mins, out, acc,
                       start, stop)
            start, stop = kernels_numba.claim_rows(claimed, weights.shape[0], _ROWS_PER_TASK)


@njit(cache=True, nogil=True)
def _stage_rows(weights, nibble_offset, n0, staged):
    """staged[b, i] = block b of weight row min(n0 + i, N - 1), i < 32 (_stage_row):
    block by block, so that a tile's 16 rows are 512 contiguous bytes."""
    last = weights.shape[0] - 1
    for i in range(_AMX_BLOCK):
        _stage_row(weights[min(n0 + i, last)], staged, i, nibble_offset)


def _stored_rows(weights, staged):
    """The rows _amx_block may read as stored: Q8's int8 weights; for Q4's nibbles, which
    it cannot, the staging buffer (3-D). Compiled code only."""
    raise NotImplementedError("_stored_rows runs inside numba-compiled code only")


@overload(_stored_rows)
def _stored_rows_overload(weights, staged):
    if weights.dtype == types.int8:
        return lambda weights, staged: weights
    return lambda weights, staged: staged


@njit(cache=True, nogil=True, parallel=True)
def _gemm_amx(x_quads, x_scales, x_sums, weights, w_scales, w_mins, out, nibble_offset):
    """out = x @ W.T by _amx_block, a task being _AMX_GROUPS_PER_TASK blocks of 32
    weight rows; Q8's full blocks are read as stored, the rest staged (_stage_rows)."""
    n_rows, n_cols = weights.shape[0], 32 * x_scales.shape[0]
    n_groups = -(-n_rows // _AMX_BLOCK)
    for task in prange(-(-n_groups // _AMX_GROUPS_PER_TASK)):
        amx_configure(_AMX_CONFIG)
        sums = np.empty(_AMX_BATCH * _AMX_BLOCK * _AMX_BLOCK, dtype=np.int32)
        acc = np.empty(_AMX_BLOCK * _AMX_BLOCK, dtype=np.float32)
        staged = np.empty((n_cols // 32, _AMX_BLOCK, 32), dtype=np.int8)
        stored = _stored_rows(weights, staged)
        first = task * _AMX_GROUPS_PER_TASK
        for group in range(first, min(n_groups, first + _AMX_GROUPS_PER_TASK)):
            n0 = group * _AMX_BLOCK
            as_stored = stored.ndim == 2 and n0 + _AMX_BLOCK <= n_rows
            if not as_stored:
                _stage_rows(weights, nibble_offset, n0, staged)
            for m0 in range(0, x_scales.shape[1], _AMX_BLOCK):
                if as_stored:
                    _amx_block(x_quads, x_scales, x_sums, stored, w_scales, w_mins, sums, acc,
                               m0, n0, n0)
                else:
                    _amx_block(x_quads, x_scales, x_sums, staged, w_scales, w_mins, sums, acc,
                               m0, 0, n0)
                kernels_numba.store_block(acc, out, m0, n0, min(_AMX_BLOCK, n_rows - n0),
                                          _AMX_BLOCK, False)
        amx_release()


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the GEMMs the route uses (up to 16
    rows of x and more) for the weights the loader produces (kernels_numba.warmup_weights):
    Q8 (float32 and float16 scales), Q4_K, Q4_1 and Q4_0."""
    if _routes.current is None:
        return
    for n_x in (2, _LANES + 1):
        x = np.zeros((n_x, kernels_numba.WARMUP_COLUMNS), dtype=np.float32)
        out = np.empty((n_x, 2), dtype=np.float32)
        for w in kernels_numba.warmup_weights(2, kernels_numba.WARMUP_COLUMNS):
            for q8_scales in w.q8_forms:
                matmul_q8(x, w.values, q8_scales, out)
            for q4_scales, q4_mins in w.q4_forms:
                matmul_q4(x, w.packed, q4_scales, q4_mins, out)


def supports(*weight_arrays) -> bool:
    """Whether the micro-kernel reads these weight arrays (None: no array; a tuple: Q4_K's
    two levels of scales): it reads their rows at the row length, so they must be
    contiguous."""
    return all(supports(*a) if isinstance(a, tuple) else a is None or a.flags.c_contiguous
               for a in weight_arrays)


def matmul_q8(x, values, scales, out):
    """out = x (M, K) @ Q8 matrix (values (N, K) int8, scales (N, K/32) float32 or float16
    bits (uint16)).T, x quantised to int8 per block (as kernels_numba.matmul_q8 with int8
    activations)."""
    _matmul(x, values, scales, None, out)


def matmul_q4(x, packed, scales, mins, out):
    """out = x (M, K) @ Q4 matrix.T (arguments as kernels_numba.matmul_q4's), x quantised
    to int8 per block."""
    _matmul(x, packed, scales, mins, out)


def _shapes(scales) -> list:
    """The shape of each array of a matrix's scales (one, or Q4_K's two levels)."""
    return [a.shape for a in (scales if isinstance(scales, tuple) else (scales,))]


def _matmul(x, weights, scales, mins, out):
    """By the route's micro-kernel, after checking the shapes it reads unchecked. AMX
    multiplies 32 rows of x at a time: up to 16 rows, vpdpbusd's 16-row kernel is as
    fast on Q8 and 1.3-1.5x faster on Q4 (which AMX must unpack first)."""
    n_x, n_in = x.shape
    scale_shapes = _shapes(scales)
    n_out, n_blocks = scale_shapes[0]
    row_bytes = n_in // 2 if weights.dtype == np.uint8 else n_in
    two_levels = [(n_out, n_blocks), (n_out, n_blocks // SUPER_BLOCKS)] \
        if n_blocks % SUPER_BLOCKS == 0 else None
    if n_in != 32 * n_blocks or out.shape != (n_x, n_out) or \
            weights.shape != (n_out, row_bytes) or \
            scale_shapes not in ([(n_out, n_blocks)], two_levels) or \
            (mins is not None and _shapes(mins) != scale_shapes) or \
            not supports(weights, scales, mins):
        raise ValueError(f"int8 GEMM: x {x.shape}, out {out.shape} and contiguous weights of "
                         f"{n_out} rows of {32 * n_blocks} values expected (got "
                         f"{weights.shape}, scales {scale_shapes}, mins "
                         f"{None if mins is None else _shapes(mins)})")
    if _routes.current is None:
        raise ValueError("int8 GEMM: this CPU has no route for it (see route())")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if _routes.current == "amx" and n_x > _LANES:
        nibble_offset = 8 if weights.dtype == np.uint8 and mins is None else 0  # Q4_0: q - 8
        _gemm_amx(*pack_activations(x, _AMX_BLOCK), weights, scales, mins, out, nibble_offset)
    else:
        _gemm(_routes.current != "avx2", *pack_activations(x, _LANES), weights, scales, mins,
              out)
