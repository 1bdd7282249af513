"""Compiled loops for kernels.py; importing this module needs numba.

Decoding one token is bound by memory bandwidth: each weight is read once per token,
so reading 2 (bf16) or ~1.1 (q8) bytes instead of 4 is the whole speed-up, provided
the conversion to float32 happens in registers at full speed. That depends on how
the loop is written. What vectorises (measured on AVX2):

- one flat inner loop over a contiguous row, j = 0..in_features, accumulating in a
  float32 scalar with reassociation allowed (so LLVM may keep 8-wide partial sums);
- a Q8 scale looked up as scales[j >> 5] inside that flat loop (LLVM turns it into one
  broadcast per 32 values, no gather: checked in the AVX-512 assembly too);
- bf16 with several rows of x (_matmul_bf16_rows): four weight rows per pass sharing
  each load of x (6-10% faster than one row on a layer's matrices read from DRAM). The
  same for Q8 ran 10-30% slower, so Q8 keeps one row per pass.

One row of x by bf16 weights (decoding a token) takes kernels_simd.bf16_dot_float, in
the int8 rows' loops below (_streamed_rows), instead: on a Zen 5 EPYC (AVX-512),
1B's layers' matrices in model order from DRAM, 2 threads, interleaved with the loop
above: 43-45 GB/s against 35-38; one thread 33 against 24; as fast without its prefetch.

On AVX-512 CPUs LLVM still uses 256-bit vectors (ymm): it is tuned to prefer them on
Intel's server parts. Measured with benchmarks/kernels_bench.py --decode (one core of a
Xeon with AVX-512 and VNNI, shared with other jobs; 1B's w1 and w2; each kernel's read
rate over a BLAS float32 GEMV's on as many bytes, interleaved): bf16 0.99-1.03. The
float32 q8 and Q4 loops do more work per byte (widen, convert, scale; Q4 also cuts
nibbles) and are compute bound: q8 0.56-0.65 (each block's products summed before its
scale multiplies them: kernels_simd.q8_dot_float, 8% faster than a scale per value),
Q4_K 0.36-0.40, Q4_0 0.23-0.29 (as many weights a second as Q4_K, in fewer bytes).
Asked to (set_int8_activations), q8 and Q4 multiply activations quantised to int8 per
32-value block (quantize_rows) with integer block sums (kernels_simd.py: VNNI vpdpbusd,
else AVX2 vpmaddubsw; llama.cpp's arithmetic for its Q8_0 / Q4_0 dot products): q8
0.89-0.97, Q4_K 0.92-0.94, Q4_0 0.73-0.79 (40 G weights/s a core against Q4_K's 37: its
bytes are fewer, not its work; per-row costs, the reduction and loop set-up, weigh
more). From DRAM (the 128256 x 2048 output matrix, two threads, a busy machine): bf16
0.89 (the loop above), q8 0.66 / 0.73 (float / int8 x), Q4_0 0.14 / 0.63, Q4_K 0.23 /
0.72; the int8 loops then wait on memory between rows, and asking for the bytes 2 KB
ahead of the row they multiply took them to q8 0.82-0.86, Q4_0 0.71-0.79, Q4_K
0.87-0.99 (bf16's loop: 0.88 -> 0.70); asking from each step of the row's
loop, 4 KB ahead, is faster again (kernels_simd.PREFETCH_DISTANCE), and each thread's
rows in few long runs faster again (streamed_task).
Q4 steps of four blocks in 512-bit vectors (AVX512-VNNI) measured no faster than these
256-bit ones, one thread or two, from DRAM or the L2 cache: the per-row costs dominate.
The scalar Q8 loop already gets one scale broadcast per 32 values (no gather), as the
assembly shows; its cost is converting each int8 to float32.

The int8 activations are a different arithmetic: each x is rounded to its block's step
max|x_b| / 127, an error of at most half a step per value. Measured on the demo model
(SmolLM2-135M Q4_1, tests/test_demo_model.py): the next-token distribution moves by a
KL of 0.002-0.006 nats on average (0.023 at most), the logits by 2-5% of their largest
magnitude, perplexity by 0.1-0.5% (test_precision's prose; the order of the float32
sums alone moves it that much: a tiny change can flip an int8 rounding), and the demo
chat's greedy answer to "What is the capital of France?" changes (no longer "Paris");
the float32 path agrees with transformers on the same file to 2.4e-6. So the default is
float32 x, exactly as the weights are stored (the project's rule: all math in float32),
and int8 x is asked for: kernels.set_int8_activations(True), --int8-activations
(llama.cpp's own choice for these formats, and what matches its decoding speed). The
integer sums are exact, so the result is the quantised x times the weights, to float32
roundoff (tests/test_kernels.py).

A GEMV with a nested per-block loop (for block: for j in 32) ran 6-8x slower, and
one with a 32-float accumulator array 2.5x slower: LLVM no longer vectorises them.

Each GEMV is a serial loop over a block of rows, and in a parallel call each thread
claims the next block nobody has taken until none is left (claim_rows: one atomic add
a block; kernels_int8's and kernels_bf16's GEMMs too). With a fixed half each, a call
waited for a descheduled thread to do its whole half once it ran again; claimed in
turn, the other threads take it over. On this project's shared 2-vCPU VM, 1B Q8_0's
matrices with int8 x in model order (2 threads, interleaved runs) took, a token: with
2-12% of the time taken by the host, the same median either way (72 ms) and a mean of
73-75 against 79-85 ms; with 13-25% taken, a median of 83 and 156 against 109 and 200.
With OpenMP (below) starting the workers costs ~2.5 us, so even Llama 3.2 1B's smallest
matrix (wk, 1M weights) is faster split: bf16 66 us on two threads against 118 us on one.
"""

import hashlib
import os
from pathlib import Path
from types import FunctionType, SimpleNamespace

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import kernels_simd

# Threading layer. A decode step runs ~80 parallel GEMVs, so starting the workers must
# be cheap: GNU OpenMP takes ~2.5 us per parallel region here, numba's workqueue 40-65
# us (1B bf16 decode: 89 against 122 ms/token). workqueue stays the fallback where
# libgomp is missing; a user's NUMBA_THREADING_LAYER(_PRIORITY) wins.
if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
# How long OpenMP workers busy-wait for the next region before sleeping (libgomp reads it
# on loading). A sleeping worker takes 35-55 us to wake (an empty region after an idle
# gap: 1.7 us up to 100 us, 45 us from 200 us at 10000 rounds, ~15 ns a round), and
# decoding a token of a small model leaves such gaps between its matmuls; spinning
# longer holds a core that BLAS's threads may want, so nothing parallel in numba runs
# just before BLAS does (the tile decoders below). Rounds (2 threads, bench_case.py,
# alternating runs): the demo model's int8 decode 80-86 tok/s at 10000, 93-97 at 30000,
# 92-100 at 100000, its int8 128-token prefill 920-1000, 880-910, 760-980; 1B BF16
# tiles + sgemm prefill unchanged (70-79 at 10000 with parallel tile decoders, 70-78 at
# 100000 with these), Q4_0 float x prefill 67-69 -> 62-63 (its tiles decoded on one
# thread), Q8_0 and Q4_0 int8 decode unchanged.
SPIN_COUNT = "30000"
os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
# Start the threading layer now, with the settings above: it declares the C function
# that thread_count's compiled code calls, so a kernel loaded from the cache links.
numba.get_num_threads()

# "reassoc" lets LLVM split a float32 sum into vector lanes; NaN/inf stay IEEE.
_FAST = {"reassoc", "contract"}
_SERIAL = dict(fastmath=_FAST, cache=True, nogil=True)
_PARALLEL = dict(_SERIAL, parallel=True)
_Q8_SHIFT = 5  # j >> 5 is the index of j's 32-value Q8 block
_Q4_SHIFT = 4  # byte j >> 4 is the index of its 32-value Q4 block (16 bytes a block)
_SUPER_SHIFT = kernels_simd.SUPER_SHIFT  # block b >> 3 is the index of its Q4_K super-block
_ROWS_PER_TASK = 16  # the unit of rows a thread claims
# The row dot products' loops (_streamed_rows) hand each thread this many blocks of a
# matrix's rows, each one long stream (see streamed_task).
_STREAMED_TASKS_PER_THREAD = 4


@intrinsic
def bf16_to_float32(typingctx, bits):
    """uint32 holding bf16 bits in its low half -> float32 (shift up, reinterpret)."""
    signature = types.float32(types.uint32)

    def codegen(context, builder, sig, args):
        return kernels_simd.bf16_bits_to_float(builder, args[0])

    return signature, codegen


@intrinsic
def _claim(typingctx, claimed):
    """claimed[0] += 1 in one atomic step (int64 array; any thread may run it at once);
    returns the value before."""
    if not (isinstance(claimed, types.Array) and claimed.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", array.data, one, "monotonic")

    return types.int64(claimed), codegen


@intrinsic
def thread_count(typingctx):
    """numba.get_num_threads() in compiled code that may still be cached: numba's own
    version calls through a ctypes pointer, which its on-disk cache refuses; this one
    calls the threading layer's C function by its name (declared by numba when the layer
    starts, which importing this module does)."""
    def codegen(context, builder, sig, args):
        # Declared as numba's parallel loops declare it in the same module (returning
        # intp): two declarations of one name must agree.
        c_function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(cgutils.intp_t, []), "get_num_threads")
        return builder.call(c_function, [])

    return types.intp(), codegen


@njit(**_SERIAL)
def no_claims():
    """A count of the blocks of rows handed out (none yet), for claim_rows. Made here:
    numba turns np.zeros in a parallel kernel into a parallel loop of its own, and in
    _matmul_int8 numba 0.68 gave that loop -1 iterations, leaving the count unset."""
    return np.zeros(1, dtype=np.int64)


@njit(**_SERIAL)
def claim_rows(claimed, n_rows, per_task):
    """The rows (start, stop) of the next block of per_task rows that no thread has
    claimed (claimed[0]: the blocks handed out so far); start == stop when none is left."""
    start = min(n_rows, _claim(claimed) * per_task)
    return start, min(n_rows, start + per_task)


def _as_float32(value):
    """A scale as float32: float32 as it is, uint16 as float16 bits (numba has no
    float16; Q8_0, Q4_0 and Q4_1 keep the file's float16 scales). Compiled code only."""
    raise NotImplementedError("_as_float32 runs inside numba-compiled code only")


@overload(_as_float32)
def _as_float32_overload(value):
    if value == types.uint16:
        return lambda value: kernels_simd.half_to_float32(value)
    return lambda value: np.float32(value)


def _scale(scales, r, b):
    """Block b's scale (or min) in row r as float32, from a matrix of them (float32, or
    float16 bits) or from Q4_K's two levels (codes, supers): codes[r, b] times supers[r,
    b // 8], exact (formats.q4.SuperScales). Compiled code only."""
    raise NotImplementedError("_scale runs inside numba-compiled code only")


@overload(_scale, inline="always")
def _scale_overload(scales, r, b):
    if isinstance(scales, types.BaseTuple):
        return lambda scales, r, b: \
            _as_float32(scales[1][r, b >> _SUPER_SHIFT]) * np.float32(scales[0][r, b])
    return lambda scales, r, b: _as_float32(scales[r, b])


@njit(**_SERIAL)
def _widen_row(scales, r, buffer):
    """buffer[:] = row r of a matrix of scales (or mins) as float32 (_scale). Row by
    index, not a view of the row: a view costs atomic reference counts, which two
    threads then pass back and forth."""
    for b in range(buffer.shape[0]):
        buffer[b] = _scale(scales, r, b)


@njit(**_SERIAL)
def _block_min(mins, scales, r, b):
    """Block b's min in row r of a Q4 matrix: mins[r, b], or -8 * scale when mins is None
    (Q4_0: d * (q - 8); exact, 8 being a power of two). numba compiles each case alone."""
    if mins is None:
        return np.float32(-8) * _scale(scales, r, b)
    return _scale(mins, r, b)


@njit(**_SERIAL)
def store_block(acc, out, m0, n0, n_valid, width, adding):
    """A GEMM micro-kernel's results (kernels_bf16, kernels_int8: acc[i * width + m] for
    weight row n0 + i and row m0 + m of x) into out, or added to it, past the last row of
    x or the n_valid-th weight row left out (padding). Along out's rows: one element a row
    of out (a stride of N floats) at a time, it took 1.6 of 6.6 ms in a 128 x 8192 x 2048
    GEMM."""
    for m in range(min(width, out.shape[0] - m0)):
        for i in range(n_valid):
            if adding:
                out[m0 + m, n0 + i] += acc[i * width + m]
            else:
                out[m0 + m, n0 + i] = acc[i * width + m]


@njit(**_SERIAL)
def _gemv_q8_rows(x, values, scales, out, start, stop):
    """out[r] = sum_j x[j] * values[r, j] * scales[r, j // 32] for r in start..stop, each
    block's products summed before its scale multiplies them (kernels_simd.q8_dot_float,
    which widens float16 scales itself, one instruction a block)."""
    for r in range(start, stop):
        out[r] = kernels_simd.q8_dot_float(values, scales, r, x)


@njit(**_SERIAL)
def _gemv_q4_rows(x_low, x_high, x_block_sums, packed, scales, mins, out, start, stop):
    """out[r] = sum_j x[j] * (scale * q[r, j] + min) for r in start..stop, with x split
    as the nibbles are (kernels.py): byte j of a row holds the q multiplying x_low[j]
    and x_high[j]; the mins (_block_min) multiply each block's sum of x. The nibbles are
    cut as uint8 (as wider integers the loop ran 35% slower). float16 scales are widened
    a row at a time first (converted per value in the loop: 15% slower)."""
    row_scales = np.empty(packed.shape[1] >> _Q4_SHIFT, dtype=np.float32)
    row_mins = np.empty_like(row_scales)
    for r in range(start, stop):
        _widen_row(scales, r, row_scales)
        acc = np.float32(0)
        for j in range(packed.shape[1]):
            low = np.uint8(packed[r, j] & np.uint8(15))
            high = np.uint8(packed[r, j] >> np.uint8(4))
            acc += (x_low[j] * np.float32(low) + x_high[j] * np.float32(high)) * \
                row_scales[j >> _Q4_SHIFT]
        if mins is None:  # Q4_0 (_block_min)
            for b in range(row_scales.shape[0]):
                acc += np.float32(-8) * row_scales[b] * x_block_sums[b]
        else:
            _widen_row(mins, r, row_mins)
            for b in range(row_scales.shape[0]):
                acc += row_mins[b] * x_block_sums[b]
        out[r] = acc


@njit(**_SERIAL)
def _matmul_bf16_rows(x, bits, out, start, stop):
    """out[i, r] = x[i] . bf16(bits[r]) for every row i of x (M, K), r in start..stop.

    Rows of x go two at a time, so each decoded weight serves two products (four weight
    rows per pass: eight sums); an odd last row of x takes the row dot products
    (_streamed_rows). Between pairs the task's weight rows stay in the L2 cache: memory
    delivers them once."""
    n_x, n_cols = x.shape
    for i in range(0, n_x - 1, 2):
        x0, x1 = x[i], x[i + 1]
        r = start
        while r + 4 <= stop:
            row0, row1, row2, row3 = bits[r], bits[r + 1], bits[r + 2], bits[r + 3]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0)
            for j in range(n_cols):
                w0 = bf16_to_float32(np.uint32(row0[j]))
                w1 = bf16_to_float32(np.uint32(row1[j]))
                w2 = bf16_to_float32(np.uint32(row2[j]))
                w3 = bf16_to_float32(np.uint32(row3[j]))
                a0 += x0[j] * w0
                a1 += x0[j] * w1
                a2 += x0[j] * w2
                a3 += x0[j] * w3
                b0 += x1[j] * w0
                b1 += x1[j] * w1
                b2 += x1[j] * w2
                b3 += x1[j] * w3
            out[i, r], out[i, r + 1], out[i, r + 2], out[i, r + 3] = a0, a1, a2, a3
            out[i + 1, r], out[i + 1, r + 1], out[i + 1, r + 2], out[i + 1, r + 3] = \
                b0, b1, b2, b3
            r += 4
        for r in range(r, stop):  # the last stop - start mod 4 weight rows
            row = bits[r]
            a = b = np.float32(0)
            for j in range(n_cols):
                w = bf16_to_float32(np.uint32(row[j]))
                a += x0[j] * w
                b += x1[j] * w
            out[i, r], out[i + 1, r] = a, b
    if n_x % 2:
        _streamed_rows(False, bits, None, None, x[n_x - 1:], out[n_x - 1:], start, stop)


@njit(**_SERIAL)
def _matmul_q8_rows(x, values, scales, out, start, stop):
    """As _matmul_bf16_rows, for Q8 weights (one weight row per pass; float16 scales
    widened a row at a time)."""
    n_x, n_cols = x.shape
    row_scales = np.empty(scales.shape[1], dtype=np.float32)
    for i in range(0, n_x - 1, 2):
        x0, x1 = x[i], x[i + 1]
        for r in range(start, stop):
            _widen_row(scales, r, row_scales)
            a = b = np.float32(0)
            for j in range(n_cols):
                w = np.float32(values[r, j]) * row_scales[j >> _Q8_SHIFT]
                a += x0[j] * w
                b += x1[j] * w
            out[i, r], out[i + 1, r] = a, b
    if n_x % 2:
        _gemv_q8_rows(x[n_x - 1], values, scales, out[n_x - 1], start, stop)


@njit(**_PARALLEL)
def matmul_bf16(x, bits, out):
    """out = x (M, K) @ bf16 matrix `bits` (N, K).T, decoding in registers: (M, N).
    One row of x (decoding a token): the row dot products, in long runs (bound by memory);
    more: _matmul_bf16_rows' pairs, which widen each weight once for two rows of x (the
    row dot products widen it again for every row: 1.5x slower at 16 and 32 rows)."""
    task = streamed_task(bits.shape[0]) if x.shape[0] == 1 else _ROWS_PER_TASK
    claimed = no_claims()
    for _ in prange(thread_count()):  # each thread claims blocks of rows in turn
        start, stop = claim_rows(claimed, bits.shape[0], task)
        while start < stop:
            _matmul_bf16_rows(x, bits, out, start, stop)
            start, stop = claim_rows(claimed, bits.shape[0], task)


@njit(**_PARALLEL)
def _matmul_q8_float(x, values, scales, out):
    """out = x (M, K) @ Q8 matrix (values (N, K) int8, scales (N, K/32) float32 or float16
    bits (uint16)).T."""
    claimed = no_claims()
    for _ in prange(thread_count()):  # as matmul_bf16's
        start, stop = claim_rows(claimed, values.shape[0], _ROWS_PER_TASK)
        while start < stop:
            _matmul_q8_rows(x, values, scales, out, start, stop)
            start, stop = claim_rows(claimed, values.shape[0], _ROWS_PER_TASK)


@njit(**_SERIAL)
def _split_for_q4(x):
    """x (M, K) as _gemv_q4_rows reads it: each 32-value block's first and second half
    (x_low, x_high: (M, K/2), beside the nibbles that multiply them) and its sum
    (M, K/32). Here rather than in NumPy: its six NumPy calls cost ~5 us a call, more
    than multiplying a 192x576 matrix on one core."""
    n_x, n_cols = x.shape
    x_low = np.empty((n_x, n_cols // 2), dtype=np.float32)
    x_high = np.empty((n_x, n_cols // 2), dtype=np.float32)
    x_block_sums = np.empty((n_x, n_cols // 32), dtype=np.float32)
    for i in range(n_x):
        for b in range(n_cols // 32):
            total = np.float32(0)
            for k in range(16):
                low, high = x[i, 32 * b + k], x[i, 32 * b + 16 + k]
                x_low[i, 16 * b + k], x_high[i, 16 * b + k] = low, high
                total += low + high
            x_block_sums[i, b] = total
    return x_low, x_high, x_block_sums


@njit(**_PARALLEL)
def _matmul_q4_float(x, packed, scales, mins, out):
    """out = x (M, K) @ Q4 matrix (packed (N, K/2) uint8, scales and mins (N, K/32)).T."""
    x_low, x_high, x_block_sums = _split_for_q4(x)
    claimed = no_claims()
    for _ in prange(thread_count()):  # as matmul_bf16's
        start, stop = claim_rows(claimed, packed.shape[0], _ROWS_PER_TASK)
        while start < stop:
            for i in range(x_low.shape[0]):
                _gemv_q4_rows(x_low[i], x_high[i], x_block_sums[i], packed, scales, mins,
                              out[i], start, stop)
            start, stop = claim_rows(claimed, packed.shape[0], _ROWS_PER_TASK)


@njit(**_SERIAL)
def _q4_halves(b, n_blocks):
    """Where the first and the second 16 values of block b go in xq laid out for Q4
    (kernels_simd._rows_dot): per pair of blocks, the first halves of both blocks (the
    low nibbles' x), then the second halves; an odd last block in plain order."""
    if b % 2 == 0 and b + 1 == n_blocks:  # an odd last block
        return 32 * b, 32 * b + 16
    first = 64 * (b >> 1) + 16 * (b & 1)
    return first, first + 32


@intrinsic
def bits_to_float32(typingctx, bits):
    """uint32 -> the float32 with these bits."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.uint32), codegen


@intrinsic
def float32_bits(typingctx, value):
    """float32 -> its bits as uint32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return types.uint32(types.float32), codegen


@njit(**_SERIAL)
def quantize_block(x, row, start, q, q_row, first, second):
    """One 32-value block of x, x[row, start:start + 32] -> q_k = round(block_k / d), k <
    32, d = max|block| / 127, stored in row q_row of q (2-D int8): q_0 .. q_15 from column
    `first` on, q_16 .. q_31 from `second` on (where the kernels read them); returns (d,
    sum of q). A block holding NaN or inf gets d = NaN and q = 0: its products are NaN,
    as in float32; a block below 127 / float32's largest (~4e-37, where 1 / d overflows)
    gets q = 0. (The block's max and rounding are one vector each:
    kernels_simd.block_magnitude_bits and round_block, which stores the halves in place:
    copied from a scratch block instead, quantize_rows took 1.3-2x as long, e.g. 2.2-3.1
    against 1.1-1.8 us for 2048 values, interleaved.)"""
    largest_bits = kernels_simd.block_magnitude_bits(x, row, start)
    if largest_bits >= np.uint32(0x7F800000):  # inf's bits, or a NaN's
        q[q_row, first:first + 16] = 0
        q[q_row, second:second + 16] = 0
        return np.float32(np.nan), np.int32(0)
    largest = bits_to_float32(largest_bits)
    inverse = np.float32(127) / largest if largest > 0 else np.float32(0)
    if inverse == np.float32(np.inf):
        inverse = np.float32(0)
    return largest / np.float32(127), kernels_simd.round_block(x, row, start, inverse, q,
                                                               q_row, first, second)


@njit(**_SERIAL)
def quantize_rows(x, q4_order):
    """x (M, K) float32 as the integer kernels read it, per 32-value block b of each row
    (quantize_block): xq (M, K) int8 = round(x / d) with d = max|x_b| / 127 (x_scales
    (M, K/32)), laid out for Q4 (_q4_halves) or in plain order (Q8); then two (M, K/32, 8)
    arrays of per-block values in the lanes kernels_simd's sums have (Q8: lane 0 of row
    b; Q4: lane 0 or 4 of row b // 2, block b's place in its pair, or lane 0 for an odd
    last block): x_start, int32, the sums' starting values (Q8: -128 * sum(xq_b); Q4: -8 *
    sum(xq_b) for Q4_0), and x_sums, float32, the block sums that Q4's mins multiply, of
    the quantised x as the rest of the product (so Q4_0's mins, -8 * scale, cancel the
    scaled nibbles' offset exactly; the float32 sums doubled the error on Q4_0)."""
    n_x, n_cols = x.shape
    n_blocks = n_cols >> _Q8_SHIFT
    xq = np.empty((n_x, n_cols), dtype=np.int8)
    x_scales = np.empty((n_x, n_blocks), dtype=np.float32)
    x_start = np.zeros((n_x, n_blocks, 8), dtype=np.int32)
    x_sums = np.zeros((n_x, n_blocks, 8), dtype=np.float32)
    for i in range(n_x):
        for b in range(n_blocks):
            first, second = _q4_halves(b, n_blocks) if q4_order else (32 * b, 32 * b + 16)
            x_scales[i, b], q_total = quantize_block(x, i, 32 * b, xq, i, first, second)
            if not q4_order:
                row, lane = b, 0
            elif b % 2 == 0 and b + 1 == n_blocks:  # Q4's odd last block, after the pairs
                row, lane = b >> 1, 0
            else:  # block b's lanes of its pair's sums
                row, lane = b >> 1, 4 * (b & 1)
            x_start[i, row, lane] = (-128 if not q4_order else -8) * q_total
            x_sums[i, row, lane] = x_scales[i, b] * np.float32(q_total)
    return xq, x_scales, x_start, x_sums


def _row_dots(use_vnni, weights, scales, mins, x_form, x_row, rows):
    """The dot products of the weight rows `rows` (a tuple) with row x_row of x, in the
    form the weights' dots read x: bf16 bits (uint16) or float32 with x as it is, float32
    (kernels_simd.bf16_dot_float / f32_dot_float); Q8 (int8) or Q4 (uint8 nibbles) in
    integers with x quantised by quantize_rows (kernels_simd.q8_dot / q4_dot). Compiled
    code only."""
    raise NotImplementedError("_row_dots runs inside numba-compiled code only")


# Inlined into the row loops: a call passes every array's fields on the stack, ~50 words
# a call. With that call and a view of x's row per call (two atomic reference counts
# each), a 576-wide row cost ~70 ns, half of it overhead (576 x 576 Q4_0 from the L2
# cache, one thread: 41 us a product, 27 us without either).
@overload(_row_dots, inline="always")
def _row_dots_overload(use_vnni, weights, scales, mins, x_form, x_row, rows):
    if weights.dtype == types.uint16:
        def bf16(use_vnni, weights, scales, mins, x_form, x_row, rows):
            return kernels_simd.bf16_dot_float(weights, x_form, x_row, rows)
        return bf16

    if weights.dtype == types.float32:
        def f32(use_vnni, weights, scales, mins, x_form, x_row, rows):
            return kernels_simd.f32_dot_float(weights, x_form, x_row, rows)
        return f32

    if weights.dtype == types.int8:
        def q8(use_vnni, weights, scales, mins, x_form, x_row, rows):
            xq, x_scales, x_start, _ = x_form
            return kernels_simd.q8_dot(use_vnni, weights, scales, xq, x_scales, x_start, x_row,
                                       rows)
        return q8

    def q4(use_vnni, weights, scales, mins, x_form, x_row, rows):
        xq, x_scales, x_start, x_sums = x_form
        return kernels_simd.q4_dot(use_vnni, weights, scales, mins, xq, x_scales, x_start,
                                   x_sums, x_row, rows)
    return q4


def _reads_x_in_q4_order(weights):
    """Whether the row dot products of these weights read x laid out for Q4 (uint8
    nibbles: quantize_rows' q4_order) rather than in plain order (Q8's int8 values), as
    a compile-time constant. Compiled code only."""
    raise NotImplementedError("_reads_x_in_q4_order runs inside numba-compiled code only")


@overload(_reads_x_in_q4_order, inline="always")
def _reads_x_in_q4_order_overload(weights):
    q4 = weights.dtype == types.uint8
    return lambda weights: q4


@njit(**_SERIAL)
def streamed_task(n_rows):
    """Rows a thread claims at a time in the row dot products' loops: a matrix split into
    _STREAMED_TASKS_PER_THREAD blocks a thread (at least _ROWS_PER_TASK rows), each read
    as one stream (_streamed_rows). Zen 5 EPYC, 2 threads, 1B's matrices in model order
    from DRAM, interleaved, GB/s, with two blocks a thread: Q4_0 38.8-43.7 against
    33.1-39.8 for blocks of 128 rows in four streams side by side (the split before),
    34.7-42.4 for these blocks in four streams; Q8_0 34.3-35.5 against 29.8-31.4; Q4_K
    37.3 against 31.6; bf16 40.8 against 37.9; one thread, Q4_0 27.9 against 23.2. Four
    blocks a thread read as fast (Q4_0 41.8 against 38.6, Q8_0 42.6 against 42.0; eight:
    41.4, 41.8) and leave a thread the host deschedules less to hold back (claimed
    blocks against fixed halves: README, Speed and memory). The demo model's small
    matrices ran alike every way.
    benchmarks/gemv_streams.py measures one stream against four on any machine."""
    parts = _STREAMED_TASKS_PER_THREAD * thread_count()
    return max(_ROWS_PER_TASK, (n_rows + parts - 1) // parts)


@njit(**_SERIAL)
def _streamed_rows(use_vnni, weights, scales, mins, x_form, out, start, stop):
    """out[:, start:stop] by the row dot products (_row_dots; x_form: x in the form they
    read, for all rows of out), one weight row after another: one stream through memory,
    each weight row serving every row of x while in the L1 cache."""
    for r in range(start, stop):
        _store_dots(use_vnni, weights, scales, mins, x_form, out, (r,))


@njit(inline="always", **_SERIAL)
def _store_dots(use_vnni, weights, scales, mins, x_form, out, rows):
    """out[:, rows] = each row of x dotted with the weight rows `rows` (a tuple)."""
    for i in range(out.shape[0]):
        dots = _row_dots(use_vnni, weights, scales, mins, x_form, i, rows)
        for k in range(len(rows)):
            out[i, rows[k]] = dots[k]


@njit(**_PARALLEL)
def _matmul_int8(use_vnni, x, weights, scales, mins, out):
    """out = x @ matrix.T for a Q8 matrix (int8 values, mins None) or a Q4 one (packed
    nibbles), x quantised by quantize_rows in the order the matrix's row dot products
    read it (here: one call from Python fewer, which shows on small matrices). Integer
    block sums (kernels_simd.q8_dot / q4_dot); Q4's mins times the block sums of x, or
    for Q4_0 (mins None) its -8 * scale * sum(x) inside the integer sums, exactly."""
    quantized = quantize_rows(x, _reads_x_in_q4_order(weights))
    claimed = no_claims()
    task = streamed_task(weights.shape[0])
    for _ in prange(thread_count()):  # as matmul_bf16's
        _claimed_runs(claimed, task, use_vnni, weights, scales, mins, quantized, out)


@njit(**_PARALLEL)
def gemv_f32(x, w, out):
    """out = x (1, K) @ float32 matrix w (N, K).T by the row dot products
    (kernels_simd.f32_dot_float) in long runs, as the int8 rows'. Zen 5, 2 threads, 1B's
    matrices in model order from DRAM, interleaved: 59-62 GB/s against OpenBLAS sgemv's
    46-57 (its SkylakeX kernels; Haswell's read 46 GB/s there); an earlier form, four
    streams in 128-row blocks, read 29."""
    claimed = no_claims()
    task = streamed_task(w.shape[0])
    for _ in prange(thread_count()):  # as matmul_bf16's
        _claimed_runs(claimed, task, False, w, None, None, x, out)


@njit(**_SERIAL)
def _claimed_runs(claimed, task, use_vnni, weights, scales, mins, x_form, out):
    """A thread's share of a row dot products' product: blocks of `task` rows claimed in
    turn (claim_rows), each by _streamed_rows."""
    start, stop = claim_rows(claimed, weights.shape[0], task)
    while start < stop:
        _streamed_rows(use_vnni, weights, scales, mins, x_form, out, start, stop)
        start, stop = claim_rows(claimed, weights.shape[0], task)


# The integer dot products this CPU has (kernels_simd.available) and whether they are
# used: set_int8_activations.
_INT8_FORMS = kernels_simd.available()
_int8 = {"on": False, "form": _INT8_FORMS[0] if _INT8_FORMS else None}


def set_int8_activations(on: bool, form: str = None) -> None:
    """Multiply Q8 / Q4 weights by x quantised to int8 per block (on), or by float32 x
    (off). form: "vnni" or "avx2" (default: the best this CPU has); ignored, and the
    float32 loops used, where the CPU has neither."""
    if form is not None and form not in _INT8_FORMS:
        raise ValueError(f"this CPU has no {form!r} integer dot product "
                         f"(it has: {', '.join(_INT8_FORMS) or 'none'})")
    _int8["on"] = bool(on)
    _int8["form"] = form or (_INT8_FORMS[0] if _INT8_FORMS else None)


def int8_activations():
    """The integer form in use ("vnni" / "avx2"), or None: the float32 loops."""
    return _int8["form"] if _int8["on"] else None


# Tile decoders, for the products BLAS multiplies (kernels._tiled_matmul). They run on the
# calling thread: BLAS's own threads multiply each tile right after, and numba's workers,
# spinning for SPIN_COUNT rounds after a parallel decode, would hold their cores. Q8 and Q4
# take a block per vector from kernels_simd: numba left their per-value loops scalar.
@njit(**_SERIAL)
def decode_bf16(bits, start, out):
    """out[i] = bits[start + i] as float32, for a tile of rows multiplied by BLAS."""
    n_cols = bits.shape[1]
    for i in range(out.shape[0]):
        row, dst = bits[start + i], out[i]
        for j in range(n_cols):
            dst[j] = bf16_to_float32(np.uint32(row[j]))


@njit(**_SERIAL)
def decode_q8(values, scales, start, out):
    """out[i] = rows start + i of a Q8 matrix as float32."""
    for i in range(out.shape[0]):
        kernels_simd.q8_decode_row(values, scales, start + i, out, i)


@njit(**_SERIAL)
def decode_q4(packed, scales, mins, start, out):
    """out[i] = rows start + i of a Q4 matrix as float32 (arguments as matmul_q4's)."""
    n_blocks = packed.shape[1] >> _Q4_SHIFT
    for i in range(out.shape[0]):
        for b in range(n_blocks):
            kernels_simd.q4_decode_block(packed, start + i, b, _scale(scales, start + i, b),
                                         _block_min(mins, scales, start + i, b), out, i)


def _serial_twin(kernel):
    """`kernel` compiled again without parallel=True (prange runs as range): the same
    loops over the same row blocks, so the same bits, but no thread team is started,
    which costs ~1.5 us a call on one thread and ~10 us on two (Xeon, 2 cores), as
    much as multiplying a small matrix. Its own name keeps numba's on-disk cache of it
    apart from the parallel one's (the cache tells them apart by name only)."""
    f = kernel.py_func
    twin = FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                        f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__doc__ = f.__doc__
    return njit(**_SERIAL)(twin)


def _fused_kernels(bf16, q8_float, q4_float, int8, f32) -> SimpleNamespace:
    """The fused matmuls the weight formats call (matmul_bf16 / _q8 / _q4, gemv_f32), the
    q8 and Q4 ones taking float32 or int8 activations as set_int8_activations says."""
    def matmul_q8(x, values, scales, out):
        """out = x (M, K) @ Q8 matrix (values (N, K) int8, scales (N, K/32) float32 or
        float16 bits (uint16)).T."""
        form = int8_activations()
        if form is None:
            q8_float(x, values, scales, out)
        else:
            int8(form == "vnni", x, values, scales, None, out)

    def matmul_q4(x, packed, scales, mins, out):
        """out = x (M, K) @ Q4 matrix.T: packed (N, K/2) uint8, scales and mins (N, K/32)
        float32 or float16 bits (uint16), or Q4_K's two levels (_scale); mins None: -8 *
        scale (Q4_0)."""
        form = int8_activations()
        if form is None:
            q4_float(x, packed, scales, mins, out)
        else:
            int8(form == "vnni", x, packed, scales, mins, out)

    return SimpleNamespace(matmul_bf16=bf16, matmul_q8=matmul_q8, matmul_q4=matmul_q4,
                           gemv_f32=f32, int8_activations=int8_activations)


_PARALLEL_KERNELS = (matmul_bf16, _matmul_q8_float, _matmul_q4_float, _matmul_int8, gemv_f32)
_kernels = _fused_kernels(*_PARALLEL_KERNELS)
matmul_q8, matmul_q4 = _kernels.matmul_q8, _kernels.matmul_q4
# The same on the calling thread alone (kernels.linear hands this to a weight's fused
# hook instead of the module when one thread is faster).
_SERIAL_KERNELS = tuple(map(_serial_twin, _PARALLEL_KERNELS))
SERIAL = _fused_kernels(*_SERIAL_KERNELS)


WARMUP_COLUMNS = 256  # weight columns to compile the kernels with: one Q4_K super-block


def warmup_weights(n_rows: int, n_cols: int):
    """Zero weights of every array kind the loader produces, to compile kernels for
    (warmup): writable, then read-only (memory-mapped files); bf16 bits, float32, Q8
    values, Q4 nibbles; q8_forms the scales of Q8 (float32) and of GGUF's Q8_0 (float16,
    as uint16 bits); q4_forms the (scales, mins) of Q4_K (SuperScales as the kernels read them:
    uint8 codes, float16 bits per 8 blocks), Q4_1 and Q4_0 (float16; Q4_0 without mins)."""
    for writable in (True, False):
        w = SimpleNamespace(bits=np.zeros((n_rows, n_cols), dtype=np.uint16),
                            floats=np.zeros((n_rows, n_cols), dtype=np.float32),
                            values=np.zeros((n_rows, n_cols), dtype=np.int8),
                            packed=np.zeros((n_rows, n_cols // 2), dtype=np.uint8),
                            scales=np.zeros((n_rows, n_cols >> _Q8_SHIFT), dtype=np.float32),
                            half_scales=np.zeros((n_rows, n_cols >> _Q8_SHIFT), dtype=np.uint16),
                            codes=np.zeros((n_rows, n_cols >> _Q8_SHIFT), dtype=np.uint8),
                            supers=np.zeros((n_rows, n_cols >> (_Q8_SHIFT + _SUPER_SHIFT)),
                                            dtype=np.uint16))
        for array in vars(w).values():
            array.flags.writeable = writable
        w.q8_forms = (w.scales, w.half_scales)
        two_level = (w.codes, w.supers)
        w.q4_forms = ((two_level, two_level), (w.half_scales, w.half_scales),
                      (w.half_scales, None))
        yield w


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the array kinds
    the loader produces (warmup_weights)."""
    n_rows, n_cols = 2, WARMUP_COLUMNS
    x = np.zeros((n_rows, n_cols), dtype=np.float32)
    out = np.empty((n_rows, n_rows), dtype=np.float32)
    tile = np.empty((n_rows, n_cols), dtype=np.float32)
    vnni = _INT8_FORMS[:1] == ("vnni",)
    for w in warmup_weights(n_rows, n_cols):
        bits, values, packed, q8_forms, q4_forms = w.bits, w.values, w.packed, w.q8_forms, \
            w.q4_forms
        decode_bf16(bits, 0, tile)
        for q8_scales in q8_forms:
            decode_q8(values, q8_scales, 0, tile)
        for q4_scales, q4_mins in q4_forms:  # Q4_K, Q4_1, Q4_0
            decode_q4(packed, q4_scales, q4_mins, 0, tile)
        for bf16, q8_float, q4_float, int8, f32 in (_PARALLEL_KERNELS, _SERIAL_KERNELS):
            bf16(x, bits, out)
            f32(x[:1], w.floats, out[:1])
            for q8_scales in q8_forms:
                q8_float(x, values, q8_scales, out)
            for q4_scales, q4_mins in q4_forms:
                q4_float(x, packed, q4_scales, q4_mins, out)
            if _INT8_FORMS:
                for q8_scales in q8_forms:
                    int8(vnni, x, values, q8_scales, None, out)
                for q4_scales, q4_mins in q4_forms:
                    int8(vnni, x, packed, q4_scales, q4_mins, out)


def set_threads(n) -> int:
    """Use n threads in this thread's parallel loops (at most the NUMBA_NUM_THREADS
    started; None: all of them); returns the count set."""
    started = numba.config.NUMBA_NUM_THREADS
    count = started if n is None else min(n, started)
    numba.set_num_threads(count)
    return count


def _forget_kernels_built_from_older_sources() -> None:
    """numba re-uses a module's cached kernels until that module's file changes, but the
    IR of kernels_simd.py is compiled into this module's, kernels_int8's and
    kernels_bf16's, this module's quantize_block into kernels_int8's and its float32 bit
    casts into kernels_bf16's and kernels_steps': when one of the two files changed (an
    update, an edit), drop the four modules' cached kernels so they are built again.
    Where the cache folder is read-only, numba does not cache at all, so there is nothing
    to drop."""
    cache = Path(matmul_bf16._cache._cache_path)
    stamp = cache / "kernel_sources.sha256"
    digest = hashlib.sha256(Path(kernels_simd.__file__).read_bytes()
                            + Path(__file__).read_bytes()).hexdigest()
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for module in ("kernels_numba", "kernels_int8", "kernels_bf16", "kernels_steps"):
            for built in cache.glob(f"{module}.*.nb[ic]"):
                built.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass


_forget_kernels_built_from_older_sources()
