"""Q4: 4-bit values in blocks of 32 with a scale and a min, the one layout GGUF's Q4_0,
Q4_1 and Q4_K are re-laid in (gguf_blocks.q4_parts) so one kernel multiplies all three."""

from typing import NamedTuple

import numpy as np

from . import kernel_view

Q4_BLOCK = 32  # values sharing one scale and min
Q4_FLOAT_FUSED_MAX_ROWS = 6  # rows of float32 x up to which the fused loop beats tiles
_Q4_0_MIN_FACTOR = -8.0  # Q4_0: w = d * (q - 8), so min = -8 * scale
SUPER_BLOCKS = 8  # blocks of 32 sharing one of SuperScales' supers


class SuperScales(NamedTuple):
    """Scales (or mins) in two levels, as GGUF's K-quants store them: block b's is
    codes[b] * supers[b // 8], a small integer per 32 values times a float16 per 256.
    Their float32 product is exact (6 x 11 significant bits): the values of a float32
    scale per block in under a third of the bytes (Q4_K's scales and mins: 0.078
    bytes a weight against 0.25), and a decode step reads every byte."""
    codes: np.ndarray  # (..., in_features / 32) uint8
    supers: np.ndarray  # (..., in_features / 256) float16

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.supers.nbytes

    def take(self, rows) -> "SuperScales":
        return SuperScales(self.codes[rows], self.supers[rows])

    def to_float32(self) -> np.ndarray:
        """One float32 value per block, as a plain scales array holds them."""
        per_block = np.repeat(self.supers.astype(np.float32), SUPER_BLOCKS, axis=-1)
        return self.codes.astype(np.float32) * per_block


class Q4:
    """A matrix of 4-bit values in blocks of 32 along each row: w = scale * q + min.

    packed: (..., in_features / 2) uint8, per block 16 bytes, byte i holding q of value
    i (low nibble) and of value 16 + i (high nibble), as GGUF's Q4_0 lays them out;
    scales, mins: (..., in_features / 32), float16 (as Q4_0 / Q4_1 store them: 0.5625 /
    0.625 bytes a weight) or float32, or SuperScales (as Q4_K stores them: 0.5781);
    mins None means -8 * scale (Q4_0). A formats.StoredTensor."""

    def __init__(self, packed: np.ndarray, scales, mins=None):
        if _scale_kind(scales) is None or (mins is not None and
                                           _scale_kind(mins) != _scale_kind(scales)):
            raise TypeError(f"Q4 wants float16, float32 or SuperScales scales and mins of "
                            f"the same kind, got {_scale_kind(scales)} and "
                            f"{None if mins is None else _scale_kind(mins)}")
        if isinstance(scales, SuperScales) and mins is None:
            raise TypeError("Q4: SuperScales scales come with SuperScales mins (Q4_K's); "
                            "mins None means -8 * scale, Q4_0's offset")
        for part in (scales, mins):
            if isinstance(part, SuperScales) and \
                    part.supers.shape[-1] * SUPER_BLOCKS != part.codes.shape[-1]:
                raise ValueError(f"Q4: SuperScales want one super per {SUPER_BLOCKS} codes, "
                                 f"got {part.supers.shape} for {part.codes.shape}")
        self.packed, self.scales, self.mins = packed, scales, mins
        self.shape = packed.shape[:-1] + (2 * packed.shape[-1],)  # the logical shape
        # (scales, mins) as the compiled kernels read them (formats.kernel_view), made
        # once: a decode step multiplies by each matrix, and each view costs a microsecond.
        self._kernel_parts = (kernel_view(scales), kernel_view(mins))

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.mins is None else
                                                          self.mins.nbytes)

    def to_float32(self, out: np.ndarray = None) -> np.ndarray:
        """The whole matrix in float32; into `out` if given."""
        return dequantize_q4(self.packed, self.scales, self.mins, out=out)

    def take(self, rows) -> "Q4":
        return Q4(self.packed[rows], *(None if part is None else
                                       part.take(rows) if isinstance(part, SuperScales)
                                       else part[rows] for part in (self.scales, self.mins)))

    def fused(self, kernels, n_rows: int):
        # With float32 x, the Q4 loop does all its work again for each row of x: from 6 or
        # so rows on, decoding tiles for BLAS is faster (demo model's w1, 1536 x 576, one
        # thread: 4 rows 0.81 against 0.99 ms, 8 rows 1.6 against 1.1). The int8 loop is
        # 4-6x cheaper a row and wins up to the 32 rows kernels.linear allows.
        if kernels is None or (n_rows > Q4_FLOAT_FUSED_MAX_ROWS
                               and kernels.int8_activations() is None):
            return None
        parts = self._kernel_parts
        return lambda rows, out: kernels.matmul_q4(rows, self.packed, *parts, out)

    def int8_matmul(self, int8_kernels):
        parts = self._kernel_parts
        if not int8_kernels.supports(self.packed, *parts):
            return None
        return lambda rows, out: int8_kernels.matmul_q4(rows, self.packed, *parts, out)

    def tile_decoder(self, kernels):
        if kernels is not None:
            parts = self._kernel_parts
            return lambda start, tile: kernels.decode_q4(self.packed, *parts, start, tile)
        return lambda start, tile: self.take(slice(start, start + len(tile))).to_float32(tile)

    def __repr__(self) -> str:
        return f"Q4(shape={self.shape})"


def _scale_kind(scales):
    """What a scales (or mins) part is: "SuperScales", "float16", "float32", or None."""
    if isinstance(scales, SuperScales):
        return "SuperScales" if (scales.codes.dtype, scales.supers.dtype) == \
            (np.uint8, np.float16) else None
    dtype = getattr(scales, "dtype", None)
    return str(dtype) if dtype in (np.float16, np.float32) else None


def dequantize_q4(packed: np.ndarray, scales: np.ndarray, mins: np.ndarray = None,
                  out: np.ndarray = None) -> np.ndarray:
    """scale * q + min per block, in float32 (..., in_features); into `out` if given.
    mins None: -8 * scale (Q4_0); scales and mins arrays or SuperScales."""
    if out is None:
        out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.float32)
    scales, mins = (None if part is None else part.to_float32()
                    if isinstance(part, SuperScales) else part.astype(np.float32, copy=False)
                    for part in (scales, mins))
    mins = _Q4_0_MIN_FACTOR * scales if mins is None else mins
    nibbles = packed.reshape(packed.shape[:-1] + (-1, Q4_BLOCK // 2))  # (..., blocks, 16)
    q = np.empty(nibbles.shape[:-1] + (2, Q4_BLOCK // 2), dtype=np.uint8)
    np.bitwise_and(nibbles, 15, out=q[..., 0, :])  # values 0-15 of each block
    np.right_shift(nibbles, 4, out=q[..., 1, :])  # values 16-31
    blocks = out.reshape(nibbles.shape[:-1] + (Q4_BLOCK,))
    np.multiply(q.reshape(blocks.shape), scales[..., None], out=blocks)
    blocks += mins[..., None]
    return out
