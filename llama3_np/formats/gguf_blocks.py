"""GGUF (ggml) block quantisation: byte layouts, vectorised decoding, the stored tensor
QuantizedTensor, and the re-laying of Q8_0 / Q4_* into the kernels' q8.Q8 / q4.Q4 parts.

A block-quantised row is a run of fixed-size blocks, each holding `values_per_block`
numbers in `bytes_per_block` bytes: one or two float16 scales plus packed small
integers. Blocks never straddle rows, so every row is its own byte range and a
tensor can stay as a (rows, bytes_per_row) uint8 array until it is used.

The layouts are ggml's (ggml-common.h, block_q4_0 ... block_q6_K); the decoders
compute in the same order as ggml's dequantize_row_* so results are bit-exact.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .q4 import SUPER_BLOCKS, SuperScales

QK_K = 256  # values per "K-quant" super-block


def _split(blocks: np.ndarray, *sizes: int) -> list:
    """Cut each block (one row of `blocks`) into consecutive byte fields of the given sizes."""
    assert sum(sizes) == blocks.shape[1], (sizes, blocks.shape)
    return np.split(blocks, np.cumsum(sizes)[:-1], axis=1)


def _f16(field: np.ndarray) -> np.ndarray:
    """A 2-byte little-endian float16 field as a (n_blocks, 1) float32 column."""
    return field.view("<f2").astype(np.float32)


def _unpack(packed: np.ndarray, width: int, run: int) -> np.ndarray:
    """Split each byte into 8/width fields of `width` bits, lowest first, in ggml's order:
    within every run of `run` bytes, field 0 of each byte, then field 1 of each byte, ...

    (n_blocks, n_bytes) uint8 -> (n_blocks, n_bytes * 8 / width) uint8."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]  # (fields, 1)
    runs = packed.reshape(len(packed), -1, 1, run)  # (n, runs, 1, run)
    return ((runs >> shifts) & np.uint8((1 << width) - 1)).reshape(len(packed), -1)


def _k_scales(packed: np.ndarray) -> tuple:
    """Q4_K / Q5_K: 12 bytes hold eight 6-bit scales and eight 6-bit mins.

    Bytes 0-3 / 4-7 carry the low 6 bits of scales 0-3 / mins 0-3, and their top two
    bits are the high bits of scales 4-7 / mins 4-7, whose low 4 bits sit in the
    low / high nibbles of bytes 8-11."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return scales, mins  # uint8


# Each decoder: (n_blocks, bytes_per_block) uint8 -> (n_blocks, values_per_block) float32.

def _q8_0(blocks):
    d, qs = _split(blocks, 2, 32)
    return qs.view(np.int8).astype(np.float32) * _f16(d)


def _q4_0(blocks):
    d, qs = _split(blocks, 2, 16)
    return _f16(d) * (_unpack(qs, 4, 16).astype(np.float32) - 8)


def _q4_1(blocks):
    d, m, qs = _split(blocks, 2, 2, 16)
    return _f16(d) * _unpack(qs, 4, 16).astype(np.float32) + _f16(m)


def _five_bit(qh, qs):
    """Q5_0 / Q5_1: low nibbles as in Q4, fifth bit j of value j in a little-endian uint32."""
    return (_unpack(qs, 4, 16) | (_unpack(qh, 1, 1) << 4)).astype(np.float32)


def _q5_0(blocks):
    d, qh, qs = _split(blocks, 2, 4, 16)
    return _f16(d) * (_five_bit(qh, qs) - 16)


def _q5_1(blocks):
    d, m, qh, qs = _split(blocks, 2, 2, 4, 16)
    return _f16(d) * _five_bit(qh, qs) + _f16(m)


def _k_quant(d, dmin, scales, q):
    """Q4_K / Q5_K: eight sub-blocks of 32, each value (d * scale) * q - dmin * min."""
    sc, mn = (codes.astype(np.float32) for codes in _k_scales(scales))
    q = q.reshape(len(q), 8, 32).astype(np.float32)
    out = (_f16(d) * sc)[:, :, None] * q - (_f16(dmin) * mn)[:, :, None]
    return out.reshape(len(q), QK_K)


def _q4_k(blocks):
    d, dmin, scales, qs = _split(blocks, 2, 2, 12, QK_K // 2)
    return _k_quant(d, dmin, scales, _unpack(qs, 4, 32))


def _q5_k(blocks):
    d, dmin, scales, qh, qs = _split(blocks, 2, 2, 12, QK_K // 8, QK_K // 2)
    return _k_quant(d, dmin, scales, _unpack(qs, 4, 32) | (_unpack(qh, 1, 32) << 4))


def _q6_k(blocks):
    """Sixteen sub-blocks of 16 with signed 8-bit scales; 4 low bits + 2 high bits, minus 32."""
    ql, qh, scales, d = _split(blocks, QK_K // 2, QK_K // 4, QK_K // 16, 2)
    q = (_unpack(ql, 4, 64) | (_unpack(qh, 2, 32) << 4)).astype(np.float32) - 32
    step = _f16(d) * scales.view(np.int8).astype(np.float32)  # (n, 16)
    return (step[:, :, None] * q.reshape(len(q), 16, 16)).reshape(len(q), QK_K)


# --- the forms the kernels multiply ---------------------------------------------------

def q8_0_parts(raw: np.ndarray) -> tuple:
    """(n_rows, bytes_per_row) uint8 of Q8_0 blocks (a float16 scale, 32 int8 values)
    -> (values (n_rows, K) int8, scales (n_rows, K/32) float16, as the file has them)."""
    n_rows = raw.shape[0]
    d, qs = _split(np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, 2 + 32), 2, 32)
    return (np.ascontiguousarray(qs).view(np.int8).reshape(n_rows, -1),
            np.ascontiguousarray(d.view("<f2"), dtype=np.float16).reshape(n_rows, -1))


# 4-bit formats as one kernel form.
#
# Q4_0, Q4_1 and Q4_K all store each value as scale * q + min, q in 0..15, with one
# scale and min per 32 values (Q4_0: min = -8 * scale; Q4_K: scale = d * sc and
# min = -dmin * m of its sub-block). q4_parts rewrites them in one layout, Q4_0's:
# per 32 values 16 bytes, byte i holding value i in its low nibble and value 16 + i in
# its high one. scale * q + min then gives the decoders' values exactly (Q4_0 aside
# from the sign of a zero: ggml's d * (q - 8) can be -0). The scales stay as the file
# has them, bytes a decode step reads: Q4_0's and Q4_1's float16 d (and m); Q4_K's 6-bit
# sc and m a byte each, with d and -dmin per 256 values (q4.SuperScales; d * sc needs up
# to 17 significant bits, more than float16's 11).

Q4_KINDS = ("Q4_0", "Q4_1", "Q4_K")
# Bytes of each kind's scales (and mins) in q4_parts per 32 values.
Q4_SCALE_BYTES = {"Q4_0": 2, "Q4_1": 4, "Q4_K": 2 * (1 + 2 / SUPER_BLOCKS)}  # Q4_0: no mins


def q4_parts(raw: np.ndarray, ggml_type: str) -> tuple:
    """(n_rows, bytes_per_row) uint8 of a Q4_KINDS type -> (packed (n_rows, K/2) uint8,
    scales, mins): (n_rows, K/32) float16 as the file has them for Q4_0 (mins None: -8 *
    scale) and Q4_1; SuperScales for Q4_K."""
    fmt = BLOCK_FORMATS[ggml_type]
    n_rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, fmt.bytes_per_block)
    if ggml_type == "Q4_K":
        d, dmin, k_scales, qs = _split(blocks, 2, 2, 12, QK_K // 2)
        q = _unpack(qs, 4, 32).reshape(-1, 2, 16)  # (32-value sub-blocks, halves, 16)
        packed = q[:, 0] | (q[:, 1] << 4)
        sc, mn = (codes.reshape(n_rows, -1) for codes in _k_scales(k_scales))
        d, minus_dmin = (np.ascontiguousarray(f, dtype=np.float16).reshape(n_rows, -1)
                         for f in (d.view("<f2"), -dmin.view("<f2")))  # negated exactly
        return (np.ascontiguousarray(packed).reshape(n_rows, -1),
                SuperScales(sc, d), SuperScales(mn, minus_dmin))
    if ggml_type == "Q4_0":
        d, packed = _split(blocks, 2, 16)
        scales, mins = d, None  # d * (q - 8) = d * q - 8 * d, exactly
    else:
        d, m, packed = _split(blocks, 2, 2, 16)
        scales, mins = d, m
    return (np.ascontiguousarray(packed).reshape(n_rows, -1),
            *(None if part is None else
              np.ascontiguousarray(part.view("<f2"), dtype=np.float16).reshape(n_rows, -1)
              for part in (scales, mins)))


@dataclass(frozen=True)
class BlockFormat:
    name: str
    values_per_block: int
    bytes_per_block: int
    decode: Callable[[np.ndarray], np.ndarray]


BLOCK_FORMATS = {f.name: f for f in (
    BlockFormat("Q8_0", 32, 2 + 32, _q8_0),
    BlockFormat("Q4_0", 32, 2 + 16, _q4_0),
    BlockFormat("Q4_1", 32, 2 + 2 + 16, _q4_1),
    BlockFormat("Q5_0", 32, 2 + 4 + 16, _q5_0),
    BlockFormat("Q5_1", 32, 2 + 2 + 4 + 16, _q5_1),
    BlockFormat("Q4_K", QK_K, 2 + 2 + 12 + QK_K // 2, _q4_k),
    BlockFormat("Q5_K", QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2, _q5_k),
    BlockFormat("Q6_K", QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, _q6_k),
)}

# Decode this many blocks at a time: bounds the temporaries to a few MB whatever the
# tensor size, while each chunk is still one vectorised pass.
_BLOCKS_PER_CHUNK = 1 << 15


def dequantize(raw: np.ndarray, ggml_type: str) -> np.ndarray:
    """(..., bytes_per_row) uint8 rows of `ggml_type` blocks -> (..., values_per_row) float32."""
    fmt = BLOCK_FORMATS[ggml_type]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, fmt.bytes_per_block)
    out = np.empty((len(blocks), fmt.values_per_block), dtype=np.float32)
    for start in range(0, len(blocks), _BLOCKS_PER_CHUNK):
        chunk = slice(start, start + _BLOCKS_PER_CHUNK)
        out[chunk] = fmt.decode(blocks[chunk])
    return out.reshape(raw.shape[:-1] + (-1,))


class QuantizedTensor:
    """A block-quantised tensor kept as raw bytes, one byte row per logical row.

    A formats.StoredTensor with no fused kernel of its own: convert.py re-lays the types
    a kernel multiplies (Q8_0, Q4_KINDS) as a Q8 / Q4 from `raw` and `ggml_type`."""

    def __init__(self, raw: np.ndarray, ggml_type: str):
        fmt = BLOCK_FORMATS[ggml_type]
        if raw.dtype != np.uint8 or raw.shape[-1] % fmt.bytes_per_block:
            raise ValueError(f"{ggml_type} rows must be uint8 runs of {fmt.bytes_per_block}-byte "
                             f"blocks, got {raw.dtype} rows of {raw.shape[-1]} bytes")
        self.raw = raw  # (..., bytes_per_row) uint8
        self.ggml_type = ggml_type

    @property
    def shape(self) -> tuple:
        fmt = BLOCK_FORMATS[self.ggml_type]
        blocks_per_row = self.raw.shape[-1] // fmt.bytes_per_block
        return self.raw.shape[:-1] + (blocks_per_row * fmt.values_per_block,)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def to_float32(self) -> np.ndarray:
        return dequantize(self.raw, self.ggml_type)

    def take(self, rows) -> "QuantizedTensor":
        if self.raw.ndim < 2:
            raise TypeError("take() picks rows; a 1-D quantised tensor has none")
        return QuantizedTensor(self.raw[rows], self.ggml_type)

    def fused(self, kernels, n_rows: int):
        return None

    def tile_decoder(self, kernels):
        return lambda start, tile: np.copyto(tile, self.take(slice(start, start + len(tile)))
                                             .to_float32())

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.ggml_type}, shape={self.shape})"
