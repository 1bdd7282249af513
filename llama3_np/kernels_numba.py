"""Compiled loops for kernels.py; importing this module needs numba.

Decoding one token is bound by memory bandwidth: each weight is read once per token,
so reading 2 (bf16) or ~1.1 (q8) bytes instead of 4 is the whole speed-up, provided
the conversion to float32 happens in registers at full speed. That depends on how
the loop is written. What vectorises (measured on AVX2):

- one flat inner loop over a contiguous row, j = 0..in_features, accumulating in a
  float32 scalar with reassociation allowed (so LLVM may keep 8-wide partial sums);
- a Q8 scale looked up as scales[j >> 5] inside that flat loop;
- bf16: four rows per pass sharing each load of x (6-10% faster than one row on a
  layer's matrices read from DRAM). The same for Q8 ran 10-30% slower, so Q8 keeps
  one row per pass.

bf16 then runs at DRAM bandwidth on two cores (~32 GB/s here). Q8 does more work per
byte (widen, convert, scale) and is compute bound: ~14 GB/s on one core, ~25 on two.
With the rows in the L2 cache (no memory traffic at all) the Q8 loop makes 13-16 G
weights/s per core, and hand-written AVX2 intrinsics in C, with the scale applied once
per block instead of per value, made no more: converting int8 to float32 is the limit.
Q4 does more again (cut two nibbles from each byte): 9-10 G weights/s per core.

A GEMV with a nested per-block loop (for block: for j in 32) ran 6-8x slower, and
one with a 32-float accumulator array 2.5x slower: LLVM no longer vectorises them.

Each GEMV is a serial loop over a range of rows, run by a parallel loop that hands
each thread contiguous blocks of rows. With OpenMP (below) starting the workers costs
~2.5 us, so even Llama 3.2 1B's smallest matrix (wk, 1M weights) is faster split:
bf16 66 us on two threads against 118 us on one.
"""

import os
import sys
from types import FunctionType, SimpleNamespace

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

# Threading layer. A decode step runs ~80 parallel GEMVs, so starting the workers must
# be cheap: GNU OpenMP takes ~2.5 us per parallel region here, numba's workqueue 40-65
# us (1B bf16 decode: 89 against 122 ms/token). workqueue stays the fallback where
# libgomp is missing; a user's NUMBA_THREADING_LAYER(_PRIORITY) wins.
if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
# OpenMP workers busy-wait after a region by default, starving the OpenBLAS threads of
# the prefill GEMMs that run between tile decodes (prefill 2x slower). Spinning 1000
# rounds before sleeping costs decoding nothing measurable. libgomp reads it on loading.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# "reassoc" lets LLVM split a float32 sum into vector lanes; NaN/inf stay IEEE.
_FAST = {"reassoc", "contract"}
_SERIAL = dict(fastmath=_FAST, cache=True, nogil=True)
_PARALLEL = dict(_SERIAL, parallel=True)
_Q8_SHIFT = 5  # j >> 5 is the index of j's 32-value Q8 block
_Q4_SHIFT = 4  # byte j >> 4 is the index of its 32-value Q4 block (16 bytes a block)
_ROWS_PER_TASK = 16  # the unit of rows handed to a thread


@intrinsic
def _bf16_to_float32(typingctx, bits):
    """uint32 holding bf16 bits in its low half -> float32 (shift up, reinterpret)."""
    signature = types.float32(types.uint32)

    def codegen(context, builder, sig, args):
        shifted = builder.shl(args[0], context.get_constant(types.uint32, 16))
        return builder.bitcast(shifted, context.get_value_type(types.float32))

    return signature, codegen


@njit(**_SERIAL)
def _gemv_bf16_rows(x, bits, out, start, stop):
    """out[r] = sum_j x[j] * bf16(bits[r, j]) for r in start..stop.
    x (K,) float32, bits (N, K) uint16. Four rows per pass share each load of x."""
    r = start
    while r + 4 <= stop:
        row0, row1, row2, row3 = bits[r], bits[r + 1], bits[r + 2], bits[r + 3]
        acc0 = acc1 = acc2 = acc3 = np.float32(0)
        for j in range(bits.shape[1]):
            xj = x[j]
            acc0 += xj * _bf16_to_float32(np.uint32(row0[j]))
            acc1 += xj * _bf16_to_float32(np.uint32(row1[j]))
            acc2 += xj * _bf16_to_float32(np.uint32(row2[j]))
            acc3 += xj * _bf16_to_float32(np.uint32(row3[j]))
        out[r], out[r + 1], out[r + 2], out[r + 3] = acc0, acc1, acc2, acc3
        r += 4
    for r in range(r, stop):  # the last stop - start mod 4 rows
        row = bits[r]
        acc = np.float32(0)
        for j in range(bits.shape[1]):
            acc += x[j] * _bf16_to_float32(np.uint32(row[j]))
        out[r] = acc


@njit(**_SERIAL)
def _gemv_q8_rows(x, values, scales, out, start, stop):
    """out[r] = sum_j x[j] * values[r, j] * scales[r, j // 32] for r in start..stop."""
    for r in range(start, stop):
        row, row_scales = values[r], scales[r]
        acc = np.float32(0)
        for j in range(values.shape[1]):
            acc += x[j] * np.float32(row[j]) * row_scales[j >> _Q8_SHIFT]
        out[r] = acc


@njit(**_SERIAL)
def _gemv_q4_rows(x_low, x_high, x_block_sums, packed, scales, mins, out, start, stop):
    """out[r] = sum_j x[j] * (scale * q[r, j] + min) for r in start..stop, with x split
    as the nibbles are (kernels.py): byte j of a row holds the q multiplying x_low[j]
    and x_high[j]; the mins multiply each block's sum of x. The nibbles are cut as
    uint8 (as wider integers the loop ran 35% slower)."""
    for r in range(start, stop):
        row, row_scales, row_mins = packed[r], scales[r], mins[r]
        acc = np.float32(0)
        for j in range(packed.shape[1]):
            low = np.uint8(row[j] & np.uint8(15))
            high = np.uint8(row[j] >> np.uint8(4))
            acc += (x_low[j] * np.float32(low) + x_high[j] * np.float32(high)) * \
                row_scales[j >> _Q4_SHIFT]
        for b in range(row_mins.shape[0]):
            acc += row_mins[b] * x_block_sums[b]
        out[r] = acc


@njit(**_SERIAL)
def _matmul_bf16_rows(x, bits, out, start, stop):
    """out[i, r] = x[i] . bf16(bits[r]) for every row i of x (M, K), r in start..stop.

    Rows of x go two at a time, so each decoded weight serves two products (four weight
    rows per pass: eight sums); an odd last row of x takes the GEMV. Between pairs the
    task's weight rows stay in the L2 cache: memory delivers them once."""
    n_x, n_cols = x.shape
    for i in range(0, n_x - 1, 2):
        x0, x1 = x[i], x[i + 1]
        r = start
        while r + 4 <= stop:
            row0, row1, row2, row3 = bits[r], bits[r + 1], bits[r + 2], bits[r + 3]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0)
            for j in range(n_cols):
                w0 = _bf16_to_float32(np.uint32(row0[j]))
                w1 = _bf16_to_float32(np.uint32(row1[j]))
                w2 = _bf16_to_float32(np.uint32(row2[j]))
                w3 = _bf16_to_float32(np.uint32(row3[j]))
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
                w = _bf16_to_float32(np.uint32(row[j]))
                a += x0[j] * w
                b += x1[j] * w
            out[i, r], out[i + 1, r] = a, b
    if n_x % 2:
        _gemv_bf16_rows(x[n_x - 1], bits, out[n_x - 1], start, stop)


@njit(**_SERIAL)
def _matmul_q8_rows(x, values, scales, out, start, stop):
    """As _matmul_bf16_rows, for Q8 weights (one weight row per pass)."""
    n_x, n_cols = x.shape
    for i in range(0, n_x - 1, 2):
        x0, x1 = x[i], x[i + 1]
        for r in range(start, stop):
            row, row_scales = values[r], scales[r]
            a = b = np.float32(0)
            for j in range(n_cols):
                w = np.float32(row[j]) * row_scales[j >> _Q8_SHIFT]
                a += x0[j] * w
                b += x1[j] * w
            out[i, r], out[i + 1, r] = a, b
    if n_x % 2:
        _gemv_q8_rows(x[n_x - 1], values, scales, out[n_x - 1], start, stop)


@njit(**_PARALLEL)
def matmul_bf16(x, bits, out):
    """out = x (M, K) @ bf16 matrix `bits` (N, K).T, decoding in registers: (M, N)."""
    n_rows = bits.shape[0]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        start = task * _ROWS_PER_TASK
        _matmul_bf16_rows(x, bits, out, start, min(n_rows, start + _ROWS_PER_TASK))


@njit(**_PARALLEL)
def matmul_q8(x, values, scales, out):
    """out = x (M, K) @ Q8 matrix (values (N, K) int8, scales (N, K/32) float32).T."""
    n_rows = values.shape[0]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        start = task * _ROWS_PER_TASK
        _matmul_q8_rows(x, values, scales, out, start, min(n_rows, start + _ROWS_PER_TASK))


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
def matmul_q4(x, packed, scales, mins, out):
    """out = x (M, K) @ Q4 matrix (packed (N, K/2) uint8, scales and mins (N, K/32)).T."""
    x_low, x_high, x_block_sums = _split_for_q4(x)
    n_rows = packed.shape[0]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        start = task * _ROWS_PER_TASK
        for i in range(x_low.shape[0]):
            _gemv_q4_rows(x_low[i], x_high[i], x_block_sums[i], packed, scales, mins, out[i],
                          start, min(n_rows, start + _ROWS_PER_TASK))


@njit(**_PARALLEL)
def decode_bf16(bits, start, out):
    """out[i] = bits[start + i] as float32, for a tile of rows multiplied by BLAS."""
    n_cols = bits.shape[1]
    for i in prange(out.shape[0]):
        row, dst = bits[start + i], out[i]
        for j in range(n_cols):
            dst[j] = _bf16_to_float32(np.uint32(row[j]))


@njit(**_PARALLEL)
def decode_q8(values, scales, start, out):
    """out[i] = rows start + i of a Q8 matrix as float32."""
    n_cols = values.shape[1]
    for i in prange(out.shape[0]):
        row, row_scales, dst = values[start + i], scales[start + i], out[i]
        for j in range(n_cols):
            dst[j] = np.float32(row[j]) * row_scales[j >> _Q8_SHIFT]


@njit(**_PARALLEL)
def decode_q4(packed, scales, mins, start, out):
    """out[i] = rows start + i of a Q4 matrix as float32."""
    n_blocks = scales.shape[1]
    for i in prange(out.shape[0]):
        row, dst = packed[start + i], out[i]
        row_scales, row_mins = scales[start + i], mins[start + i]
        for b in range(n_blocks):
            scale, minimum = row_scales[b], row_mins[b]
            for k in range(16):
                byte = row[16 * b + k]
                dst[32 * b + k] = np.float32(byte & np.uint8(15)) * scale + minimum
                dst[32 * b + 16 + k] = np.float32(byte >> np.uint8(4)) * scale + minimum


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


# The fused kernels on the calling thread alone, under the same names (kernels.linear
# hands this to a weight's fused hook instead of the module when one thread is faster).
SERIAL = SimpleNamespace(matmul_bf16=_serial_twin(matmul_bf16),
                         matmul_q8=_serial_twin(matmul_q8),
                         matmul_q4=_serial_twin(matmul_q4))


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the array kinds
    the loader produces: writable arrays, and read-only ones (memory-mapped files)."""
    n_rows, n_cols = 2, 64
    x = np.zeros((n_rows, n_cols), dtype=np.float32)
    out = np.empty((n_rows, n_rows), dtype=np.float32)
    tile = np.empty((n_rows, n_cols), dtype=np.float32)
    for writable in (True, False):
        bits = np.zeros((n_rows, n_cols), dtype=np.uint16)
        values = np.zeros((n_rows, n_cols), dtype=np.int8)
        packed = np.zeros((n_rows, n_cols // 2), dtype=np.uint8)
        scales = np.zeros((n_rows, n_cols >> _Q8_SHIFT), dtype=np.float32)
        for weight in (bits, values, packed, scales):
            weight.flags.writeable = writable
        for kernels in (SERIAL, sys.modules[__name__]):  # serial and parallel
            kernels.matmul_bf16(x, bits, out)
            kernels.matmul_q8(x, values, scales, out)
            kernels.matmul_q4(x, packed, scales, scales, out)
        decode_bf16(bits, 0, tile)
        decode_q8(values, scales, 0, tile)
        decode_q4(packed, scales, scales, 0, tile)


def set_threads(n) -> int:
    """Use n threads in this thread's parallel loops (at most the NUMBA_NUM_THREADS
    started; None: all of them); returns the count set."""
    started = numba.config.NUMBA_NUM_THREADS
    count = started if n is None else min(n, started)
    numba.set_num_threads(count)
    return count
