"""bfloat16: the top half of a float32, kept as raw uint16 bits, half float32's memory."""

import numpy as np


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits back into place (widened
    and shifted in one pass)."""
    out = np.empty(bits.shape, dtype=np.uint32)
    return np.left_shift(bits, 16, out=out, dtype=np.uint32).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), as torch does; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(x), (u >> 16) | 0x40, rounded).astype(np.uint16)


class BF16:
    """A tensor kept as raw bfloat16 bits (uint16), decoded only when used.
    A formats.StoredTensor."""

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

    def fused(self, kernels, n_rows: int):
        if kernels is None:
            return None
        return lambda rows, out: kernels.matmul_bf16(rows, self.bits, out)

    def bf16_matmul(self, bf16_kernels):
        if bf16_kernels is None or not bf16_kernels.supports(self.bits):
            return None
        return lambda rows: bf16_kernels.matmul(rows, self.bits)

    def tile_decoder(self, kernels):
        if kernels is not None:
            return lambda start, tile: kernels.decode_bf16(self.bits, start, tile)
        # bf16_bits_to_float32, written into the tile instead of new arrays.
        return lambda start, tile: np.left_shift(self.bits[start:start + len(tile)], 16,
                                                 out=tile.view(np.uint32), dtype=np.uint32)

    def __repr__(self) -> str:
        return f"BF16(shape={self.shape})"
