"""In-memory weight forms: every way a weight is held between the file and the matmul.

    float32 / float16 ndarray   NumPy's own (float16 only as a reader hands it over)
    bf16.BF16                   raw bfloat16 bits, 2 bytes a weight
    q8.Q8                       int8 in blocks of 32 sharing a float32 scale (float16 as
                                GGUF's Q8_0 stores it)
    q4.Q4                       4-bit values in blocks of 32 with a scale and a min
                                (GGUF's Q4_0, Q4_1, Q4_K, re-laid)
    gguf_blocks.QuantizedTensor any GGUF block type as the file stores it (raw bytes)

Every form that is not an ndarray is a StoredTensor (below). convert.py turns any of
them into the form a load asks for; kernels.linear multiplies by them through their
fused / tile_decoder hooks, so it never asks which form it holds. Readers build forms
from file bytes; nothing here knows about files.
"""

from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

# fn(rows, out): out = rows @ w.T, (M, in_features) float32 -> (M, out_features) float32
FusedMatmul = Callable[[np.ndarray, np.ndarray], None]
# fn(start, tile): weight rows start .. start + len(tile), decoded into a float32 tile
TileDecoder = Callable[[int, np.ndarray], None]


@runtime_checkable
class StoredTensor(Protocol):
    """A tensor in a precision NumPy lacks, decoded only when used.

    `kernels` below is kernels_numba (the compiled loops) or None (NumPy only), as
    kernels.linear passes it on each call: a form never changes with the backend."""

    @property
    def shape(self) -> tuple:
        """The logical shape, e.g. (out_features, in_features)."""

    @property
    def nbytes(self) -> int:
        """The memory it holds."""

    def to_float32(self) -> np.ndarray:
        """The whole tensor decoded to a float32 ndarray."""

    def take(self, rows) -> "StoredTensor":
        """A stored tensor of the same form holding only the given rows (embedding lookup)."""

    def fused(self, kernels, n_rows: int) -> Optional[FusedMatmul]:
        """A kernel multiplying n_rows rows of x by the stored bytes without decoding them
        to memory, or None where there is none or where decoding tiles for BLAS is faster
        for that many rows (then kernels.linear decodes tiles)."""

    def tile_decoder(self, kernels) -> TileDecoder:
        """Decodes rows into a float32 tile for BLAS to multiply."""


def as_float32(tensor) -> np.ndarray:
    """Any stored tensor as a float32 ndarray (no copy when it already is one)."""
    if isinstance(tensor, np.ndarray):
        return tensor if tensor.dtype == np.float32 else tensor.astype(np.float32)
    return tensor.to_float32()


def take_rows(tensor, rows) -> np.ndarray:
    """Rows of a stored tensor as float32, decoding only those rows."""
    if isinstance(tensor, np.ndarray):
        return tensor[rows].astype(np.float32, copy=False)
    return tensor.take(rows).to_float32()


def kernel_view(scales):
    """Quantisation scales (or mins) as the compiled kernels read them: float16 as its
    bits (uint16: numba has no float16), float32 as it is; q4.SuperScales as a plain
    tuple of its two arrays, each so."""
    if isinstance(scales, tuple):
        return tuple(kernel_view(part) for part in scales)
    return scales.view(np.uint16) if scales is not None and scales.dtype == np.float16 \
        else scales


def distinct(tensors) -> list:
    """Each stored tensor once: tied embeddings are one tensor under two names."""
    return list({id(t): t for t in tensors}.values())


def fused_matmul(w, kernels, n_rows: int) -> Optional[FusedMatmul]:
    """w's fused kernel for n_rows rows of x, or None. An ndarray has one only as float32
    (C-contiguous) times one row of x: the row dot products (kernels_numba.gemv_f32),
    which read it from memory faster than BLAS's sgemv; BLAS multiplies the rest."""
    if not isinstance(w, np.ndarray):
        return w.fused(kernels, n_rows)
    if kernels is None or n_rows != 1 or w.dtype != np.float32 or not w.flags.c_contiguous:
        return None
    return lambda rows, out: kernels.gemv_f32(rows, w, out)


def bf16_matmul(w, bf16_kernels) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """fn(rows) -> rows @ w.T by the CPU's bf16 dot product (bf16_kernels: a
    kernels_bf16.Multiply, with x rounded to bf16 or in exact parts; or None), for bf16
    weights where it multiplies them; else None."""
    method = getattr(w, "bf16_matmul", None)
    return None if method is None else method(bf16_kernels)


def int8_matmul(w, int8_kernels) -> Optional[FusedMatmul]:
    """A kernel multiplying many rows of x, quantised to int8 per block, by the stored
    bytes in integer dot products (int8_kernels: kernels_int8, or None), for Q8 and Q4
    weights; else None."""
    method = getattr(w, "int8_matmul", None)
    return None if method is None or int8_kernels is None else method(int8_kernels)


def tile_decoder(w, kernels) -> TileDecoder:
    """w's tile decoder; an ndarray (float16) is copied into the tile."""
    if isinstance(w, np.ndarray):
        return lambda start, tile: np.copyto(tile, w[start:start + len(tile)])
    return w.tile_decoder(kernels)
