"""Compiled twins of two of model.py's steps, for the numba backend; importing this module
needs numba.

Decoding a token of a small model spends much of its time between the matmuls: each
NumPy call costs a microsecond or two and a temporary, whatever the size of its vector.
RMSNorm is six calls on a row, one query's attention ten (two stacked matmuls through
BLAS, the softmax's five passes). Here each is one loop over the data, with the same
arithmetic in the same order per value, except that the float32 sums are added in
another order (lanes of a vector, as in the matmul kernels) and e^x is a polynomial
within 1 ulp (_exp). On the demo model (SmolLM2-135M, 30 layers of 576, int8 activations,
2 threads, alternating runs) a token took 6.5 ms with NumPy's steps, 6.0 with this
RMSNorm, 5.8 with this attention and 5.4 with both; benchmarks/decode_overhead.py's
"everything but the matmuls" went from 1.59 to 1.01 ms a token.
model.py calls them through kernels.compiled_steps(), which is None without numba.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .kernels_numba import bf16_to_float32, bits_to_float32

# Loops over a row: LLVM may split the float32 sums into vector lanes ("reassoc").
_LOOP = dict(fastmath={"reassoc", "contract"}, cache=True, nogil=True)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """model.rms_norm of the rows of x (rows, dim), float32."""
    return _rms_norm_rows(x, weight, np.float32(eps), np.empty(x.shape, dtype=np.float32))


@njit(**_LOOP)
def _rms_norm_rows(x, weight, eps, out):
    n = x.shape[1]
    for i in range(x.shape[0]):
        row, normed = x[i], out[i]
        squares = np.float32(0)
        for j in range(n):
            squares += row[j] * row[j]
        root = np.float32(math.sqrt(squares / np.float32(n) + eps))
        for j in range(n):
            normed[j] = row[j] / root * weight[j]
    return out


# Past this many positions of a float32 cache, NumPy's way reads the keys faster: its
# matmuls run on BLAS's threads, this loop on one (1B's shape, 2 threads: 1024 positions
# 0.35 against 0.28 ms a layer, 2048 0.66 / 0.77, 4096 1.25 / 1.15, 32768 12.2 / 9.5; the
# demo model's 512 0.05 / 0.09, 8192 0.77 / 0.72). A bf16 cache, which NumPy first decodes
# tile by tile, is faster here at any length (131072 positions 36 against 106 ms).
FLOAT32_CACHE_MAX_POSITIONS = 4096


def attends(cache, total: int) -> bool:
    """Whether one_query_attention beats NumPy's steps on `total` positions of `cache`."""
    return cache.kv_dtype == "bf16" or total <= FLOAT32_CACHE_MAX_POSITIONS


def one_query_attention(q: np.ndarray, cache, layer: int, total: int) -> np.ndarray:
    """model.py's attention for a single query position (decoding a token), which sees
    every cached position, so there is nothing to mask: q (n_kv_heads, n_rep, head_dim)
    grouped as model.group_queries groups it, keys and values the first `total` positions
    of `cache` (read where they are stored, bf16 bits too). Returns the grouped heads'
    outputs (n_kv_heads, n_rep, head_dim)."""
    keys, values = cache.buffers(layer)
    return _attend(np.ascontiguousarray(q), keys, values, total,
                   np.empty(q.shape, dtype=np.float32))


# e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2; ln 2 in two parts so that
# x - n ln 2 is exact; e^r by Cephes' expf polynomial.
_LOG2_E = np.float32(1.44269504088896341)
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_POLYNOMIAL = tuple(np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))
_LOWEST_NORMAL_EXPONENT = np.float32(-87.33654)  # ln of the smallest normal float32
_HIGHEST_EXPONENT = np.float32(88.72284)  # ln of the largest float32


@njit(fastmath={"contract"}, cache=True, nogil=True)  # not reassoc: the ln 2 parts stay apart
def _exp(x):
    """e^x in float32 arithmetic that LLVM vectorises (libm's expf is one call a value:
    13x slower here), within 1 ulp of the exact value (NumPy's own float32 exp: 2.4 on
    AVX-512); results below the smallest normal float32 are 0, as softmax may take them."""
    if not x >= _LOWEST_NORMAL_EXPONENT:
        return x if x != x else np.float32(0)  # NaN stays NaN
    if x > _HIGHEST_EXPONENT:
        return np.float32(np.inf)
    n = np.floor(x * _LOG2_E + np.float32(0.5))
    r = x - n * _LN2_HIGH - n * _LN2_LOW
    p = _EXP_POLYNOMIAL[0]
    for c in _EXP_POLYNOMIAL[1:]:
        p = p * r + c
    # times 2^n as 2^half * 2^(n - half), exact: n reaches 128, past float32's exponents
    half = np.int32(n) >> 1
    return (p * (r * r) + r + np.float32(1)) * bits_to_float32(np.uint32(half + 127) << 23) * \
        bits_to_float32(np.uint32(np.int32(n) - half + 127) << 23)


def _cached(value):
    """A cached key or value as float32 (a bf16 cache holds bits). Compiled code only."""
    raise NotImplementedError("_cached runs inside numba-compiled code only")


@overload(_cached)
def _cached_overload(value):
    if value == types.uint16:
        return lambda value: bf16_to_float32(np.uint32(value))
    return lambda value: value


@njit(**_LOOP)
def _attend(q, keys, values, total, out):
    n_kv_heads, n_rep, head_dim = q.shape
    root = np.float32(math.sqrt(head_dim))
    probs = np.empty((n_rep, total), dtype=np.float32)
    for g in range(n_kv_heads):  # each key and value is read once for its group's queries
        for t in range(total):  # scores q.k / sqrt(head_dim)
            for r in range(n_rep):
                score = np.float32(0)
                for d in range(head_dim):
                    score += q[g, r, d] * _cached(keys[g, t, d])
                probs[r, t] = score / root
        for r in range(n_rep):  # their softmax
            top = probs[r].max()
            denominator = np.float32(0)
            for t in range(total):
                probs[r, t] = _exp(probs[r, t] - top)
                denominator += probs[r, t]
            for t in range(total):
                probs[r, t] /= denominator
        out[g] = 0
        for t in range(total):  # the probability-weighted sum of values
            for r in range(n_rep):
                p = probs[r, t]
                for d in range(head_dim):
                    out[g, r, d] += p * _cached(values[g, t, d])
    return out


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) both steps for the array kinds the
    model passes: float32 rows, and float32 or bf16 caches."""
    gain = np.ones(2, dtype=np.float32)
    for writable in (True, False):  # a gain in a memory-mapped file is read-only
        gain.flags.writeable = writable
        rms_norm(np.ones((1, 2), dtype=np.float32), gain, 1e-5)
    q = np.ones((1, 1, 2), dtype=np.float32)
    for dtype in (np.float32, np.uint16):
        buffer = np.zeros((1, 1, 2), dtype=dtype)
        _attend(q, buffer, buffer, 1, np.empty_like(q))
