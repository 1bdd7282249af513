"""Q4: 4-bit values in blocks of 32 with a scale and a min, the one layout GGUF's Q4_0,
Q4_1 and Q4_K are re-laid in (gguf_blocks.q4_parts) so one kernel multiplies all three."""

import numpy as np

Q4_BLOCK = 32  # values sharing one scale and min
Q4_BYTES_PER_WEIGHT = 0.5 + 8.0 / Q4_BLOCK  # a nibble, and a float32 scale and min per 32


class Q4:
    """A matrix of 4-bit values in blocks of 32 along each row: w = scale * q + min.

    packed: (..., in_features / 2) uint8, per block 16 bytes, byte i holding q of value
    i (low nibble) and of value 16 + i (high nibble), as GGUF's Q4_0 lays them out;
    scales, mins: (..., in_features / 32) float32. A formats.StoredTensor."""

    def __init__(self, packed: np.ndarray, scales: np.ndarray, mins: np.ndarray):
        self.packed, self.scales, self.mins = packed, scales, mins

    @property
    def shape(self) -> tuple:
        return self.packed.shape[:-1] + (2 * self.packed.shape[-1],)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + self.mins.nbytes

    def to_float32(self) -> np.ndarray:
        return dequantize_q4(self.packed, self.scales, self.mins)

    def take(self, rows) -> "Q4":
        return Q4(self.packed[rows], self.scales[rows], self.mins[rows])

    def fused(self, kernels):
        if kernels is None:
            return None
        return lambda rows, out: kernels.matmul_q4(rows, self.packed, self.scales, self.mins,
                                                   out)

    def tile_decoder(self, kernels):
        if kernels is not None:
            return lambda start, tile: kernels.decode_q4(self.packed, self.scales, self.mins,
                                                         start, tile)
        return lambda start, tile: dequantize_q4(self.packed[start:start + len(tile)],
                                                 self.scales[start:start + len(tile)],
                                                 self.mins[start:start + len(tile)], out=tile)

    def __repr__(self) -> str:
        return f"Q4(shape={self.shape})"


def dequantize_q4(packed: np.ndarray, scales: np.ndarray, mins: np.ndarray,
                  out: np.ndarray = None) -> np.ndarray:
    """scale * q + min per block, in float32 (..., in_features); into `out` if given."""
    if out is None:
        out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.float32)
    nibbles = packed.reshape(packed.shape[:-1] + (-1, Q4_BLOCK // 2))  # (..., blocks, 16)
    q = np.empty(nibbles.shape[:-1] + (2, Q4_BLOCK // 2), dtype=np.uint8)
    np.bitwise_and(nibbles, 15, out=q[..., 0, :])  # values 0-15 of each block
    np.right_shift(nibbles, 4, out=q[..., 1, :])  # values 16-31
    blocks = out.reshape(nibbles.shape[:-1] + (Q4_BLOCK,))
    np.multiply(q.reshape(blocks.shape), scales[..., None], out=blocks)
    blocks += mins[..., None]
    return out

