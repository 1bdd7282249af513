"""Q8: a matrix quantised per block of 32 values along each row, like ggml's Q8_0."""

import numpy as np

from ..errors import CheckpointError, InputError
from . import kernel_view

Q8_BLOCK = 32  # values sharing one scale
Q8_BYTES_PER_WEIGHT = 1.0 + 4.0 / Q8_BLOCK  # an int8 plus its share of a float32 scale
Q8_0_BYTES_PER_WEIGHT = 1.0 + 2.0 / Q8_BLOCK  # GGUF's Q8_0: its scales are float16
_Q8_MAX = 127  # symmetric: -127..127, so -128 is never produced


class Q8:
    """w ~= values * scale, per block of 32 values along each row.

    values: (..., in_features) int8; scales: (..., in_features / 32) float32 (quantize_q8's)
    or float16 (GGUF Q8_0's, kept as the file has them: a decode step reads 6% fewer bytes).
    A formats.StoredTensor."""

    def __init__(self, values: np.ndarray, scales: np.ndarray):
        if values.dtype != np.int8 or scales.dtype not in (np.float16, np.float32):
            raise TypeError(f"Q8 wants int8 values and float16 or float32 scales, got "
                            f"{values.dtype} and {scales.dtype}")
        if values.shape[:-1] + (values.shape[-1] // Q8_BLOCK,) != scales.shape \
                or values.shape[-1] % Q8_BLOCK:
            raise ValueError(f"Q8 values {values.shape} do not match scales {scales.shape} "
                             f"for blocks of {Q8_BLOCK}")
        self.values = values
        self.scales = scales
        self._kernel_scales = kernel_view(scales)  # made once, as Q4's kernel parts

    @property
    def shape(self) -> tuple:
        return self.values.shape

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scales.nbytes

    def to_float32(self) -> np.ndarray:
        return dequantize_q8(self.values, self.scales)

    def take(self, rows) -> "Q8":
        return Q8(self.values[rows], self.scales[rows])

    def fused(self, kernels, n_rows: int):
        if kernels is None:
            return None
        scales = self._kernel_scales
        return lambda rows, out: kernels.matmul_q8(rows, self.values, scales, out)

    def int8_matmul(self, int8_kernels):
        if not int8_kernels.supports(self.values, self.scales):
            return None
        scales = self._kernel_scales
        return lambda rows, out: int8_kernels.matmul_q8(rows, self.values, scales, out)

    def tile_decoder(self, kernels):
        if kernels is not None:
            scales = self._kernel_scales
            return lambda start, tile: kernels.decode_q8(self.values, scales, start, tile)
        return lambda start, tile: dequantize_q8(self.values[start:start + len(tile)],
                                                 self.scales[start:start + len(tile)], out=tile)

    def __repr__(self) -> str:
        return f"Q8(shape={self.shape})"


def dequantize_q8(values: np.ndarray, scales: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """values * scale per block, in float32; into `out` (same shape as values) if given."""
    if out is None:
        out = np.empty(values.shape, dtype=np.float32)
    blocked = values.shape[:-1] + (-1, Q8_BLOCK)
    # float16 scales widened first (exactly): int8 * float16 would be computed in float16
    np.multiply(values.reshape(blocked), scales.astype(np.float32, copy=False)[..., None],
                out=out.reshape(blocked))
    return out


def quantize_q8(w: np.ndarray, name: str = "weight") -> Q8:
    """float32 (..., in_features) -> Q8; each block's largest |w| maps to +-127.

    Every value is rounded to the nearest step, so |w - dequantised| <= scale / 2."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0 or w.shape[-1] % Q8_BLOCK:
        raise InputError(f"cannot quantise {name} {w.shape} to q8: its rows must be a "
                         f"multiple of {Q8_BLOCK} values long")
    blocks = w.reshape(w.shape[:-1] + (-1, Q8_BLOCK))
    scales = np.abs(blocks).max(axis=-1) / np.float32(_Q8_MAX)
    if not np.isfinite(scales).all():
        raise CheckpointError(f"cannot quantise {name} to q8: it holds NaN or infinite values")
    # An all-zero block has scale 0; dividing by 1 there keeps its values 0.
    steps = blocks / np.where(scales > 0, scales, np.float32(1))[..., None]
    values = np.rint(steps).astype(np.int8).reshape(w.shape)
    return Q8(values, scales)
