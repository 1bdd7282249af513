"""Prefill GEMMs by bf16 weights with a real bfloat16 dot product; importing needs numba.

kernels.linear's portable route for a many-row GEMM by bf16 weights decodes tiles of
weights to float32 for OpenBLAS sgemm, so the CPU multiplies float32 (16 lanes a
zmm FMA). PyTorch's bf16 model instead rounds the activations to bf16 too and lets
oneDNN multiply bf16 by bf16 with float32 sums. This module does the same, with the
instructions built here as LLVM IR (numba @intrinsic), on either of two routes:

- "amx": Intel AMX tdpbf16ps, one instruction a 16x16 float32 tile += 16x32 bf16 @ 32x16
  bf16 (Sapphire Rapids and later). The weight matrix is the tile multiplicand as it is
  stored, 16 rows of 32 values at the row stride, so no weight is copied or packed; x is
  the other operand, rounded and laid out in pairs (pack_activations), and the result
  comes out transposed (a tile row is a weight row): each block of 32 weight rows is
  turned round into out right after its last pass, still cached (one parallel loop fewer
  than a separate transposition; no speed-up could be measured through the neighbours'
  noise). Each micro-kernel holds 2x2 result tiles (32 weight rows x 32 rows of x)
  through a chunk of K; K goes in chunks whose x stays in the L2 cache while every
  weight row passes (w2, K = 8192: 14.5 ms in one chunk, ~10 in four; noisy). Needs
  K % 32 == 0 (every Llama matrix) and Linux's permission for the tile state (arch_prctl, asked
  once per process).
- "avx512bf16": AVX512-BF16 vdpbf16ps, 16 float32 lanes += 16 pairs of bf16 products
  (Cooper Lake, Sapphire Rapids, Zen 4/5). Lanes are 16 rows of x (the same pairs
  layout); each weight pair (2 adjacent bf16 = 4 bytes) is broadcast straight from the
  stored row. A micro-kernel keeps 4 x 6 = 24 zmm accumulators (64 rows of x by 6 weight
  rows) through a chunk of K; a thread takes its block of weight rows through K chunk by
  chunk, so that x comes from the L2 cache. Needs K even.

Measured on an Intel Xeon with AMX (2 cores, shared with 2-6 other busy processes:
ratios within one process, interleaved, best of 5-9; 128 rows of x, one Llama 3.2 1B
layer's four GEMM shapes, benchmarks/prefill_gemm.py):
- instruction peaks, one core, data in L1/L2: f32 FMA (torch f32) ~150 GFLOP/s;
  vdpbf16ps (the micro-kernel here) 94-103, i.e. no faster than f32 FMA on this Xeon:
  its 32 products an instruction issue at half the FMA rate. So the avx512bf16 route
  only matches sgemm here (95 against 99-114 GFLOP/s, 1 thread); it is the route for
  Zen 4/5, whose vdpbf16ps is where PyTorch's 256-272 tok/s bf16 prefill comes from.
  AMX: PyTorch (oneDNN brg_matmul:avx10_1_512_amx, ONEDNN_VERBOSE) 1024 GFLOP/s on one
  core at its quietest, 400-740 while neighbours ran; this AMX kernel 720-800 with
  its data in L1/L2, 430-520 streaming the weights.
- a layer (GFLOP/s over its 7 GEMMs; a calm moment, load ~1.5): 2 threads: x
  rounded (AMX) 854, PyTorch bf16 1124 (ours 0.76x; by shape 0.71-0.81x), x float32
  (tiles + sgemm, the path before) 168, f32 sgemm 221, x rounded on vdpbf16ps 189;
  1 thread: 349, 598 (0.58x), 99, 114, 95. At load 3-6 the ratio to PyTorch fell
  to 0.25-0.6x.
- the whole 128-token prefill (Llama 3.2 1B shape, bf16 weights, bench_case.py, runs
  alternating): x rounded 0.655-0.69 s, x float32 1.87-1.94 s (2.85x slower),
  PyTorch bf16 0.34-0.36 s (ours 0.50-0.52x): of our 0.66 s the GEMMs take 0.46.
So on this machine PyTorch's AMX GEMMs stay ahead of this module's (1.3x on 2 cores
at best, 1.7x on one), and the target "prefill >= PyTorch bf16" is not met here. The
remaining gap: oneDNN packs the weights into AMX's layout and prefetches them; here
they are read as stored, two 16-row tiles at a 4 KB (w2: 16 KB) row stride, from the
L2 cache for every 32 rows of x, and x is rounded and packed on every call.

With x kept in float32 (the default), the AMX route multiplies too: x is the exact sum
of three bf16 parts (_part_bits), each goes through the same GEMM, and the three products
are added (matmul_exact). Products of bf16 values are exact in float32 and the sums are
float32, so this is float32 arithmetic (sgemm's bound holds), and three AMX passes cost
less than decoding tiles for sgemm: the 1B 128-token prefill ran at 84-91 tok/s against
66-70 (runs alternating). vdpbf16ps, no faster than float32 FMAs on a Xeon, would lose
three times over, so on that route float32 x keeps the tiles.

Rounding x to bf16 is a new arithmetic path, asked for with kernels.set_bf16_activations
(--bf16-activations), as PyTorch's bf16 models round x; off by default, so that results
keep the float32 arithmetic. Its error is measured and bounded in tests/test_kernels_bf16.py:
on the Llama 3.2 1B shape (random weights, 128 tokens) the logits move by at most 0.031
of their standard deviation (median 0.0039), where PyTorch's bf16 model moves them 0.086
(median 0.010) from its float32 run on the same weights.
"""

import threading
from typing import Callable, NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import kernels_numba  # (imported first: it sets numba up before any parallel loop)
from .kernels_numba import bits_to_float32, float32_bits
from .kernels_simd import (BYTE_POINTER, F32X16, I32, I32X16, I64, Routes, amx_config,
                           amx_configure, amx_release, array_parts, clamped_rows, counted_loop,
                           declare, load_vector, prefetch, store_vectors, tile_op)


_LANES = 16  # float32 lanes of a zmm register, rows and columns of an AMX tile
_X_ALIGN = 32  # rows of x are padded to a multiple of this (2 tiles / 2 zmm)
_VDP_X_VECTORS = 4  # vdpbf16ps micro-kernel: 4 zmm of x rows (64 rows) ...
_VDP_W_ROWS = 6  # ... by 6 weight rows: 24 accumulators of the 32 zmm registers
_VDP_ROWS_PER_TASK = 48  # weight rows a thread claims at once (a multiple of _VDP_W_ROWS)
_AMX_K_STEP = 32  # bf16 values of K one tile holds
_AMX_BLOCK = 2 * _LANES  # weight rows, and rows of x, of one AMX micro-kernel
_X_CHUNK_BYTES = 1 << 19  # x_pairs in a chunk of K: half a Zen 5's L2 cache, a Xeon's quarter
ROUNDED_X = -1  # pack_activations: x rounded to bf16, not one of its exact parts


_scratch = threading.local()  # this thread's reused buffers (fresh ones cost page faults)


def _reused(name: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array of this shape from a buffer this thread keeps."""
    size = int(np.prod(shape))
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_scratch, name, buffer)
    return buffer[:size].reshape(shape)


# --- which route this CPU offers -------------------------------------------------------

# LLAMA3_NP_BF16_GEMM=off (or a route's name) overrides what the CPU offers.
_routes = Routes("bf16 GEMM", "LLAMA3_NP_BF16_GEMM",
                 {"amx": {"avx512bf16", "amx-bf16", "amx-tile"}, "avx512bf16": {"avx512bf16"}})
route, available_routes, set_route = (_routes.route, _routes.available_routes,
                                      _routes.set_route)


def supports(bits: np.ndarray) -> bool:
    """Whether the current route multiplies by this bf16 matrix: its rows must be
    contiguous (they are read at the row stride), and as long as the route needs."""
    n_in = bits.shape[1]
    if not bits.flags.c_contiguous or n_in == 0:
        return False
    if _routes.current == "amx":
        return n_in % _AMX_K_STEP == 0
    return _routes.current == "avx512bf16" and n_in % 2 == 0


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the current route's loops for the
    weights the loader produces: writable and read-only (memory-mapped) arrays, with
    and without a last partial block of rows."""
    if _routes.current is None:
        return
    x = np.zeros((2, 2 * _AMX_K_STEP), dtype=np.float32)
    for writable in (True, False):
        bits = np.zeros((_AMX_BLOCK + 1, 2 * _AMX_K_STEP), dtype=np.uint16)
        bits.flags.writeable = writable
        matmul(x, bits)


# --- x rounded to bf16, in pairs -------------------------------------------------------

def pack_activations(rows: np.ndarray, part: int = ROUNDED_X) -> np.ndarray:
    """x (M, K) float32 -> (K/2, M padded to 32) uint32: x_pairs[p, m] holds x[m, 2p] and
    x[m, 2p + 1] as bf16, the first in the low half: 16 rows' pairs side by side, as both
    instructions read them. As bf16: rounded (to nearest, ties to even, as formats.bf16
    rounds), or one of x's three exact parts (part 0, 1, 2: _part_bits). Padding rows are
    0. A buffer this thread reuses: valid until its next call."""
    n_x, n_in = rows.shape
    pairs = _reused("pairs", (n_in // 2, -(-n_x // _X_ALIGN) * _X_ALIGN), np.uint32)
    _pack_pairs(np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32), pairs, part)
    return pairs


def matmul(rows: np.ndarray, bits: np.ndarray, part: int = ROUNDED_X) -> np.ndarray:
    """rows (M, K) float32 @ bf16 matrix bits (N, K).T, rows rounded to bf16 (or their
    part `part`, as pack_activations): (M, N)."""
    if not supports(bits):  # the micro-kernels read rows at the row stride, unchecked
        raise ValueError(f"the {_routes.current} route cannot multiply by bf16 bits {bits.shape} "
                         f"(contiguous: {bits.flags.c_contiguous})")
    x_pairs = pack_activations(rows, part)
    out = np.empty((len(rows), len(bits)), dtype=np.float32)
    if _routes.current == "amx":
        _matmul_amx(x_pairs, bits, out)
    else:
        _matmul_vdp(x_pairs, bits, out, _chunk_pairs(x_pairs))
    return out


def _chunk_pairs(x_pairs: np.ndarray) -> int:
    """Pairs of K in a chunk of x_pairs that fills _X_CHUNK_BYTES: a whole number of AMX
    steps, at least one."""
    step_pairs = _AMX_K_STEP // 2
    return max(step_pairs, _X_CHUNK_BYTES // (4 * x_pairs.shape[1]) // step_pairs * step_pairs)


def matmul_exact(rows: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """rows (M, K) float32 @ bf16 matrix bits (N, K).T with rows as they are: x is the sum
    of three bf16 parts (_part_bits), matmul multiplies each and the products are added.
    A bf16 times a bf16 is exact in float32, and both instructions sum the products in
    float32 as sgemm's FMAs do: float32 arithmetic, bounded as sgemm's in
    tests/test_kernels_bf16.py. (An inf weight gives NaN, not inf, where a part of x is 0:
    a model's weights are finite.) Three AMX passes take less than decoding tiles for sgemm
    (128 rows, 2 threads: 2048x2048 4.8 against 6.5 ms, 8192x2048 18.8 against 26,
    2048x8192 20.8 against 30); vdpbf16ps, no faster than float32 FMAs on a Xeon, is not
    used so."""
    out = matmul(rows, bits, part=0)
    for part in (1, 2):
        out += matmul(rows, bits, part=part)
    return out


class Multiply(NamedTuple):
    """A bf16 GEMM as kernels.linear hands it to formats.BF16.bf16_matmul."""
    supports: Callable
    matmul: Callable
    warmup: Callable


ROUNDED = Multiply(supports, matmul, warmup)  # x rounded to bf16 (set_bf16_activations)
EXACT = Multiply(supports, matmul_exact, warmup)  # x as it is


# --- LLVM IR ---------------------------------------------------------------------------

class _BFloat(ir.Type):
    """LLVM's bfloat, which llvmlite.ir lacks."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash(_BFloat)


_BF16X32 = ir.VectorType(_BFloat(), 2 * _LANES)
_PAIR_RANGE = types.UniTuple(types.intp, 2)  # (start, stop): the pairs of K a block sums


# vdpbf16ps: a 64 x 6 block of x @ W.T (or 16 x 6 for the last rows of x).

def _make_vdp_block(x_vectors: int):
    """An intrinsic block(x_pairs, bits, acc, m0, n0, pairs): acc[16 (i * x_vectors + v) + l]
    = x[m0 + 16 v + l] . bf16(bits[min(n0 + i, N - 1)]) for i < 6, v < x_vectors, over the
    pairs of K in pairs = (start, stop) (past the last weight row the last one is repeated,
    and ignored)."""

    @intrinsic
    def vdp_block(typingctx, x_pairs, bits, acc, m0, n0, pairs):
        def codegen(context, builder, sig, args):
            (x_data, (_, x_stride)), (w_data, (n_rows, n_cols)), (acc_data, _) = \
                array_parts(context, builder, sig, args)
            m0, n0 = args[3], args[4]
            start, stop = cgutils.unpack_tuple(builder, args[5])
            dot = declare(builder, "llvm.x86.avx512bf16.dpbf16ps.512", F32X16,
                          F32X16, _BF16X32, _BF16X32)
            x_base = builder.gep(builder.bitcast(x_data, I32.as_pointer()),
                                 [builder.add(m0, builder.mul(start, x_stride))])
            w_pairs = builder.gep(builder.bitcast(w_data, I32.as_pointer()), [start])
            pairs_per_row = builder.ashr(n_cols, ir.Constant(I64, 1))
            row_starts = [builder.gep(w_pairs, [builder.mul(row, pairs_per_row)])
                          for row in clamped_rows(builder, n0, _VDP_W_ROWS, n_rows)]

            def one_pair(p, accs):
                x_row = builder.gep(x_base, [builder.mul(p, x_stride)])
                xs = [builder.bitcast(builder.load(builder.bitcast(
                    builder.gep(x_row, [ir.Constant(I64, _LANES * v)]), I32X16.as_pointer()),
                    align=4), _BF16X32) for v in range(x_vectors)]
                updated = []
                for i in range(_VDP_W_ROWS):
                    pair = builder.load(builder.gep(row_starts[i], [p]), align=4)
                    lane0 = builder.insert_element(ir.Constant(I32X16, None), pair,
                                                   ir.Constant(I32, 0))
                    splat = builder.shuffle_vector(lane0, ir.Constant(I32X16, None),
                                                   ir.Constant(I32X16, None))
                    w = builder.bitcast(splat, _BF16X32)
                    updated += [builder.call(dot, [accs[i * x_vectors + v], xs[v], w])
                                for v in range(x_vectors)]
                return updated

            store_vectors(builder, acc_data, counted_loop(builder, builder.sub(stop, start), 1,
                                                          [F32X16] * (_VDP_W_ROWS * x_vectors),
                                                          one_pair))
            return context.get_dummy_value()

        return types.void(x_pairs, bits, acc, types.intp, types.intp, _PAIR_RANGE), codegen

    return vdp_block


_vdp_block_64 = _make_vdp_block(_VDP_X_VECTORS)
_vdp_block_16 = _make_vdp_block(1)


# x rounded and packed: 16 rows of x by 16 pairs of K at once.

def _rounded_bits(builder, u):
    """float32 bits -> bf16 bits in the low half, lane by lane, as _bf16_bits rounds."""
    def const(value):
        return ir.Constant(I32X16, [value] * _LANES)

    upper = builder.lshr(u, const(16))
    nan = builder.icmp_unsigned(">", builder.and_(u, const(0x7FFFFFFF)), const(0x7F800000))
    even = builder.add(builder.add(u, const(0x7FFF)), builder.and_(upper, const(1)))
    return builder.select(nan, builder.or_(upper, const(0x40)), builder.lshr(even, const(16)))


def _transposed(builder, rows):
    """16 vectors of 16 lanes turned round: lane r of vector c is lane c of rows[r]. Each
    of four steps swaps one bit of the vector's index with the same bit of the lane's."""
    for bit in (1, 2, 4, 8):
        low = ir.Constant(I32X16, [lane if lane & bit == 0 else _LANES + lane - bit
                                   for lane in range(_LANES)])
        high = ir.Constant(I32X16, [lane + bit if lane & bit == 0 else _LANES + lane
                                    for lane in range(_LANES)])
        rows = list(rows)
        for v in range(_LANES):
            if v & bit == 0:
                a, b = rows[v], rows[v + bit]
                rows[v] = builder.shuffle_vector(a, b, low)
                rows[v + bit] = builder.shuffle_vector(a, b, high)
    return rows


@intrinsic
def _pack_tile(typingctx, x_bits, pairs, m0, p0):
    """pairs[p0 + j, m0 + r] = the bf16 bits of x[m0 + r, 2 (p0 + j)], rounded, in the low
    half and of x[m0 + r, 2 (p0 + j) + 1] in the high one, for r, j < 16: 16 rows of x, 32
    values each, rounded as _bf16_bits rounds and turned round in registers."""

    def codegen(context, builder, sig, args):
        (x_data, (_, n_in)), (p_data, (_, n_padded)) = array_parts(context, builder, sig, args)
        m0, p0 = args[2], args[3]
        x_first = builder.gep(builder.bitcast(x_data, I32.as_pointer()), [
            builder.add(builder.mul(m0, n_in), builder.shl(p0, ir.Constant(I64, 1)))])
        evens = ir.Constant(I32X16, list(range(0, 2 * _LANES, 2)))
        odds = ir.Constant(I32X16, list(range(1, 2 * _LANES, 2)))
        rows = []
        for r in range(_LANES):
            start = builder.gep(x_first, [builder.mul(ir.Constant(I64, r), n_in)])
            halves = [_rounded_bits(builder, load_vector(builder, start, ir.Constant(I64, h),
                                                         I32X16, 4)) for h in range(2)]
            low = builder.shuffle_vector(halves[0], halves[1], evens)
            high = builder.shuffle_vector(halves[0], halves[1], odds)
            rows.append(builder.or_(low, builder.shl(high, ir.Constant(I32X16, [16] * _LANES))))
        p_first = builder.gep(builder.bitcast(p_data, I32.as_pointer()),
                              [builder.add(builder.mul(p0, n_padded), m0)])
        for j, column in enumerate(_transposed(builder, rows)):
            address = builder.gep(p_first, [builder.mul(ir.Constant(I64, j), n_padded)])
            builder.store(column, builder.bitcast(address, I32X16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(x_bits, pairs, types.intp, types.intp), codegen


# AMX: tiles 0-3 hold the 2 x 2 results, 4-5 the weight rows, 6-7 the rows of x.

# tiles 0-7: 16 rows x 64 bytes
_AMX_CONFIG = amx_config([(_LANES, 4 * _LANES)] * 8)


@intrinsic
def _amx_block(typingctx, x_pairs, bits, results, m0, w_row, result_row, pairs, prefetch_row):
    """results[result_row + r, m0 + c] (+)= bf16(bits[w_row + r]) . x[m0 + c] over the pairs
    of K in pairs = (start, stop), for r, c < 32: results is out transposed, (N, M padded)
    float32, and is added to unless start == 0. Rows w_row .. w_row + 31 must exist. With
    prefetch_row >= 0, the same pairs of rows prefetch_row .. + 31 are fetched into the
    cache on the way (the next block's weights, while this one computes)."""

    def codegen(context, builder, sig, args):
        (x_data, (_, x_stride)), (w_data, (_, n_cols)), (r_data, (_, r_stride)) = \
            array_parts(context, builder, sig, args)
        m0, w_row, result_row, pairs, prefetch_row = args[3:]
        start, stop = cgutils.unpack_tuple(builder, pairs)

        def const(value, kind=I64):
            return ir.Constant(kind, value)

        def at(base, offset):
            return builder.gep(base, [offset])

        def mul(a, b):
            return builder.mul(a, b)

        w_bytes = builder.bitcast(w_data, BYTE_POINTER)
        w_stride = mul(n_cols, const(2))
        x_stride_bytes = mul(x_stride, const(4))
        r_stride_bytes = mul(r_stride, const(4))
        w_tops = [at(w_bytes, mul(builder.add(w_row, const(_LANES * a)), w_stride))
                  for a in range(2)]
        prefetch_top = at(w_bytes, mul(prefetch_row, w_stride))
        x_left = at(builder.bitcast(x_data, BYTE_POINTER), mul(m0, const(4)))
        r_corner = at(builder.bitcast(r_data, BYTE_POINTER),
                      builder.add(mul(result_row, r_stride_bytes), mul(m0, const(4))))
        r_tiles = [at(r_corner, builder.add(mul(const(_LANES * a), r_stride_bytes),
                                            const(4 * _LANES * b)))
                   for a in range(2) for b in range(2)]  # tile 2 a + b

        with builder.if_else(builder.icmp_signed(">", start, const(0))) as (adding, fresh):
            with adding:
                for tile, address in enumerate(r_tiles):
                    tile_op(builder, "tileloadd64", tile, address, r_stride_bytes)
            with fresh:
                for tile in range(4):
                    tile_op(builder, "tilezero", tile)

        prefetching = builder.icmp_signed(">=", prefetch_row, const(0))

        def one_k_step(i, _):
            p = builder.add(start, i)  # the step's first pair of K
            w_offset = mul(p, const(4))
            for a in range(2):  # tiles 4, 5: 16 weight rows x 32 values of K each
                tile_op(builder, "tileloadd64", 4 + a, at(w_tops[a], w_offset), w_stride)
            x_step = at(x_left, mul(p, x_stride_bytes))
            for b in range(2):  # tiles 6, 7: 16 pairs of K x 16 rows of x each
                tile_op(builder, "tileloadd64", 6 + b, at(x_step, const(4 * _LANES * b)),
                        x_stride_bytes)
            with builder.if_then(prefetching):
                for row in range(_AMX_BLOCK):
                    prefetch(builder, at(prefetch_top, builder.add(mul(const(row), w_stride),
                                                                   w_offset)))
            for a in range(2):
                for b in range(2):
                    tile_op(builder, "tdpbf16ps", 2 * a + b, 4 + a,
                            6 + b)
            return []

        counted_loop(builder, builder.sub(stop, start), _AMX_K_STEP // 2, [], one_k_step)
        for tile, address in enumerate(r_tiles):
            tile_op(builder, "tilestored64", tile, address, r_stride_bytes)
        return context.get_dummy_value()

    return types.void(x_pairs, bits, results, types.intp, types.intp, types.intp, _PAIR_RANGE,
                      types.intp), codegen


# --- the loops around the micro-kernels ------------------------------------------------

_SERIAL = dict(cache=True, nogil=True)
_PARALLEL = dict(_SERIAL, parallel=True)


@njit(**_SERIAL)
def _bf16_bits(u):
    """float32 bits -> bf16 bits, rounded as formats.bf16.float32_to_bf16_bits rounds."""
    if u & 0x7FFFFFFF > 0x7F800000:  # NaN: keep it NaN (quiet)
        return (u >> 16) | 0x40
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


@njit(**_SERIAL)
def _part_bits(u, part):
    """The bf16 bits of part `part` of the float32 whose bits are u: x = hi + mid + lo
    exactly for |x| >= 2^-103, hi being x cut to its top 16 bits (8 significant bits),
    mid what is left (exact in float32) cut likewise, lo the rest: at most 8 significant
    bits, a bf16 as it is. Cut, not rounded, so nothing overflows; NaN and inf go whole
    into hi. Below 2^-103 a part can be subnormal, and cutting it loses bits; the bf16
    instructions take subnormal values as 0 anyway (as they flush subnormal products and
    sums, which sgemm keeps)."""
    if u & 0x7F800000 == 0x7F800000:  # inf or NaN
        return np.uint32(_bf16_bits(u) if part == 0 else 0)
    hi = np.uint32(u & 0xFFFF0000)
    if part == 0:
        return np.uint32(hi >> 16)
    rest = float32_bits(bits_to_float32(u) - bits_to_float32(hi))
    mid = np.uint32(rest & 0xFFFF0000)
    if part == 1:
        return np.uint32(mid >> 16)
    return np.uint32(float32_bits(bits_to_float32(rest) - bits_to_float32(mid)) >> 16)


@njit(**_SERIAL)
def _x_bits(u, part):
    """float32 bits -> bf16 bits as pack_activations asks: rounded, or an exact part."""
    return np.uint32(_bf16_bits(u)) if part == ROUNDED_X else _part_bits(u, part)


@njit(**_PARALLEL)
def _pack_pairs(x_bits, pairs, part):
    """pack_activations' loop: x_bits (M, K) uint32 (float32 bits) -> pairs. By blocks of
    16 rows of x: rounded x in tiles of 16 pairs (_pack_tile; 128 x 2048 in 21 against
    107 us a value at a time, 2 threads, Zen 5), the rest (a last block of fewer rows, the
    last K mod 32, x's exact parts) a value at a time."""
    n_x = x_bits.shape[0]
    n_pairs, n_padded = pairs.shape
    for block in prange(n_padded // _LANES):
        m0 = block * _LANES
        m1 = min(n_x, m0 + _LANES)
        tiled = n_pairs - n_pairs % _LANES if m1 - m0 == _LANES and part == ROUNDED_X else 0
        for p0 in range(0, tiled, _LANES):
            _pack_tile(x_bits, pairs, m0, p0)
        for p in range(tiled, n_pairs):
            for m in range(m0, m1):
                low, high = x_bits[m, 2 * p], x_bits[m, 2 * p + 1]
                pairs[p, m] = _x_bits(low, part) | (_x_bits(high, part) << 16)
            for m in range(m1, m0 + _LANES):
                pairs[p, m] = 0


@njit(**_SERIAL)
def _vdp_rows(x_pairs, bits, out, acc, start, stop, chunk_pairs):
    """out[:, start:stop] by vdpbf16ps blocks, K in chunks of chunk_pairs pairs, each chunk
    adding to the last; acc: scratch of 6 x 64 float32."""
    n_x, (n_pairs, n_padded) = out.shape[0], x_pairs.shape
    for k0 in range(0, n_pairs, chunk_pairs):
        pairs = (k0, min(n_pairs, k0 + chunk_pairs))
        for n0 in range(start, stop, _VDP_W_ROWS):
            n_valid = min(_VDP_W_ROWS, stop - n0)
            m0 = 0
            while m0 < n_x:
                if m0 + _LANES * _VDP_X_VECTORS <= n_padded:
                    _vdp_block_64(x_pairs, bits, acc, m0, n0, pairs)
                    width = _LANES * _VDP_X_VECTORS
                else:
                    _vdp_block_16(x_pairs, bits, acc, m0, n0, pairs)
                    width = _LANES
                kernels_numba.store_block(acc, out, m0, n0, n_valid, width, k0 > 0)
                m0 += width


@njit(**_PARALLEL)
def _matmul_vdp(x_pairs, bits, out, chunk_pairs):
    """Each thread claims blocks of weight rows in turn and takes a block through K chunk
    by chunk: a chunk of x_pairs, read once from the L3 cache, serves all the block's rows
    from the L2. w2 (K = 8192, 128 rows of x: 2 MB of x_pairs), Zen 5, 2 threads: in the
    1B's prefill 5.94 against 6.25 ms in one chunk; alone, with the caches flushed before
    each call, 706-748 GFLOP/s against 569-615."""
    claimed = kernels_numba.no_claims()
    for _ in prange(kernels_numba.thread_count()):
        acc = np.empty(_VDP_W_ROWS * _LANES * _VDP_X_VECTORS, dtype=np.float32)
        start, stop = kernels_numba.claim_rows(claimed, bits.shape[0], _VDP_ROWS_PER_TASK)
        while start < stop:
            _vdp_rows(x_pairs, bits, out, acc, start, stop, chunk_pairs)
            start, stop = kernels_numba.claim_rows(claimed, bits.shape[0], _VDP_ROWS_PER_TASK)


@njit(**_PARALLEL)
def _amx_pass(x_pairs, bits, tail, results, pairs, out, last):
    """results (N padded to 32, M padded) (+)= the pairs of K in pairs = (start, stop) of
    bits @ x.T; the last N mod 32 rows come from tail, their zero-padded copy. On the
    last pass each block's results go on into out, turned round while still cached."""
    n_full = bits.shape[0] // _AMX_BLOCK
    for block in prange(n_full + (tail.shape[0] > 0)):
        amx_configure(_AMX_CONFIG)
        n0 = block * _AMX_BLOCK
        for m0 in range(0, x_pairs.shape[1], _AMX_BLOCK):
            prefetch_row = n0 + _AMX_BLOCK if m0 == 0 and block + 1 < n_full else -1
            if block < n_full:
                _amx_block(x_pairs, bits, results, m0, n0, n0, pairs, prefetch_row)
            else:
                _amx_block(x_pairs, tail, results, m0, 0, n0, pairs, -1)
        amx_release()
        if last:
            for m in range(out.shape[0]):
                for n in range(n0, min(out.shape[1], n0 + _AMX_BLOCK)):
                    out[m, n] = results[n, m]


def _matmul_amx(x_pairs, bits, out):
    """K in chunks whose x_pairs stay in the L2 cache while every weight row passes."""
    n_rows, n_cols = bits.shape
    n_full = n_rows - n_rows % _AMX_BLOCK
    tail = np.zeros((_AMX_BLOCK if n_full < n_rows else 0, n_cols), dtype=np.uint16)
    tail[:n_rows - n_full] = bits[n_full:]
    results = _reused("results", (n_full + len(tail), x_pairs.shape[1]), np.float32)
    chunk_pairs = _chunk_pairs(x_pairs)
    for start in range(0, len(x_pairs), chunk_pairs):
        stop = min(len(x_pairs), start + chunk_pairs)
        _amx_pass(x_pairs, bits, tail, results, (start, stop), out, stop == len(x_pairs))
