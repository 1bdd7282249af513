"""Weights in storage precision: what a reader hands over before any math happens.

A reader returns each tensor either as a NumPy array (float32 or float16) or as an
object with the small "stored tensor" protocol below, for precisions NumPy lacks
(bfloat16, block-quantised formats):

    .shape         the logical shape, e.g. (out_features, in_features)
    .to_float32()  the whole tensor decoded to a float32 ndarray
    .take(rows)    a stored tensor holding only the given rows (embedding lookup)

`as_float32` turns either kind into float32; the loader and kernels build on it.
"""

import numpy as np


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits back into place."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), as torch does; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(x), (u >> 16) | 0x40, rounded).astype(np.uint16)


class BF16:
    """A tensor kept as raw bfloat16 bits (uint16), decoded only when used."""

    def __init__(self, bits: np.ndarray):
        if bits.dtype != np.uint16:
            raise TypeError(f"BF16 wants uint16 bits, got {bits.dtype}")
        self.bits = bits

    @property
    def shape(self) -> tuple:
        return self.bits.shape

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def to_float32(self) -> np.ndarray:
        return bf16_bits_to_float32(self.bits)

    def take(self, rows) -> "BF16":
        return BF16(self.bits[rows])

    def __repr__(self) -> str:
        return f"BF16(shape={self.shape})"


def as_float32(tensor) -> np.ndarray:
    """Any stored tensor as a float32 ndarray (no copy when it already is one)."""
    if isinstance(tensor, np.ndarray):
        return tensor if tensor.dtype == np.float32 else tensor.astype(np.float32)
    return tensor.to_float32()


def distinct(tensors) -> list:
    """Each stored tensor once: tied embeddings are one tensor under two names."""
    return list({id(t): t for t in tensors}.values())


def take_rows(tensor, rows) -> np.ndarray:
    """Rows of a stored tensor as float32, decoding only those rows."""
    if isinstance(tensor, np.ndarray):
        return tensor[rows].astype(np.float32, copy=False)
    return tensor.take(rows).to_float32()
