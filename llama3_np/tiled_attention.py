"""Attention over a long context without the (heads, seq, total) score matrix.

The walk-through's attention (model.py) builds every score at once: at 8192 tokens
and 32 heads that is 8 GiB, three times over. This variant gives the same result
within float32 rounding (tests/test_tiled_attention.py) in a fixed budget: it
walks the cached keys in tiles and keeps, per query row, the running maximum of
its scores, the running sum of their exponentials and the running weighted sum of
values (the "online softmax" of FlashAttention). When a later tile raises the
maximum, what was summed so far is rescaled by exp(old max - new max).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .threads import compute_threads

# Float32 values computed at once (16 MiB): the plain path runs when all of a call's
# scores and keys fit, the tiled path takes key tiles whose scores and keys fit. (A decode
# step has few scores but reads every key: a bf16 cache is decoded tile by tile.)
SCORES_BUDGET = 1 << 22


def plain_attention_fits(n_heads: int, n_kv_heads: int, head_dim: int, seq: int,
                         total: int) -> bool:
    return max(n_heads * seq, n_kv_heads * head_dim) * total <= SCORES_BUDGET


def tiled_attention(q: np.ndarray, cache, layer: int, start_pos: int, seq: int) -> np.ndarray:
    """softmax(q k^T / sqrt(head_dim) + causal mask) v, key tile by key tile.

    q: the queries grouped by the kv head they read, (n_kv_heads, n_rep * seq, head_dim),
    row r * seq + s being query head r of the group at position start_pos + s (as
    model.py groups them); keys and values come from `cache` (positions up to
    start_pos + seq). Returns the heads' outputs in the same grouped layout."""
    n_kv_heads, n_rows, head_dim = q.shape
    total = start_pos + seq
    query_pos = start_pos + np.arange(n_rows) % seq  # (rows,)
    tile = max(1, SCORES_BUDGET // max(n_rows, n_kv_heads * head_dim))  # keys a tile
    q = q * np.float32(1 / np.sqrt(head_dim))  # scaled once, not every score

    running_max = np.full((n_kv_heads, n_rows, 1), -np.inf, dtype=np.float32)
    running_sum = np.zeros((n_kv_heads, n_rows, 1), dtype=np.float32)
    rescale = np.empty((n_rows, 1), dtype=np.float32)
    out = np.zeros(q.shape, dtype=np.float32)
    for begin in range(0, total, tile):
        end = min(total, begin + tile)
        keys, values = cache.read(layer, begin, end)  # (n_kv_heads, end - begin, head_dim)
        ahead = np.arange(begin, end)[None, :] > query_pos[:, None] \
            if end - 1 > start_pos else None  # keys past some queries' positions
        for g in range(n_kv_heads):  # 2-D matmuls: BLAS runs them faster than stacked ones
            scores = q[g] @ keys[g].T  # (rows, end - begin)
            if ahead is not None:
                scores[ahead] = -np.inf
            _by_rows(_online_softmax, scores, running_max[g], running_sum[g], rescale)
            out[g] = out[g] * rescale + scores @ values[g]  # scores now hold the weights
    return out / running_sum


def _online_softmax(scores, running_max, running_sum, rescale) -> None:
    """One tile's step for a block of rows, in place: scores become exp(score - new max),
    the running sum takes their sum, rescale gets exp(old max - new max) for the values
    summed so far. Every row sees key 0 in the first tile, so its maximum is finite from
    then on (and rescale is 0 on the first tile)."""
    new_max = np.maximum(running_max, scores.max(axis=-1, keepdims=True))
    np.exp(running_max - new_max, out=rescale)
    np.exp(np.subtract(scores, new_max, out=scores), out=scores)
    running_sum *= rescale
    running_sum += scores.sum(axis=-1, keepdims=True)
    running_max[...] = new_max


# Rows per block below which splitting a tile's softmax over threads costs more than it
# saves.
_MIN_ROWS_A_THREAD = 256
_pool = {}  # "executor": the softmax threads, made on first use


def _by_rows(step, *arrays) -> None:
    """step(*arrays) over blocks of rows, one block a thread: NumPy runs the elementwise
    passes on one core and releases the GIL, while BLAS's matmuls around them use every
    core. Each row's arithmetic is the same whichever thread does it."""
    n_rows = len(arrays[0])
    workers = min(compute_threads(), n_rows // _MIN_ROWS_A_THREAD)
    if workers < 2:
        step(*arrays)
        return
    if _pool.get("workers") != workers:
        _pool["executor"], _pool["workers"] = ThreadPoolExecutor(workers), workers
    bounds = np.linspace(0, n_rows, workers + 1).astype(int)
    blocks = [[a[lo:hi] for a in arrays] for lo, hi in zip(bounds, bounds[1:])]
    for done in [_pool["executor"].submit(step, *block) for block in blocks]:
        done.result()
