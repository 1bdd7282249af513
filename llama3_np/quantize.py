"""The in-memory weight formats the kernels multiply by, and conversion into them.

    "f32"   float32 ndarray
    "bf16"  storage.BF16: raw bfloat16 bits, half the memory of float32
    "q8"    Q8 below: blocks of 32 int8 values sharing one float32 scale (like ggml's
            Q8_0), 1.125 bytes per weight

`to_dtype` turns any stored tensor a checkpoint reader returns into one of these. With no
dtype asked for (None, the default), GGUF matrices the numba kernels multiply in their
own quantisation keep it, where those kernels run: Q8_0 becomes a Q8, and Q4_0, Q4_1,
Q4_K a Q4 (below, 0.75 bytes per weight), with the stored values exactly; everything
else becomes f32. A dtype asked for explicitly is what every matrix becomes.
Math on them lives in kernels.py.
"""

import numpy as np

from .checkpoint.gguf_quants import Q4_KINDS, q4_parts, q8_0_parts
from .errors import CheckpointError, InputError
from .storage import BF16, as_float32, float32_to_bf16_bits, take_rows

DTYPES = ("f32", "bf16", "q8")

Q8_BLOCK = 32  # values sharing one scale
# Memory per matrix weight in each form (q8: an int8 plus its share of a float32 scale).
BYTES_PER_WEIGHT = {"f32": 4.0, "bf16": 2.0, "q8": 1.0 + 4.0 / Q8_BLOCK}
Q4_BLOCK = 32  # values sharing one scale and min
Q4_BYTES_PER_WEIGHT = 0.5 + 8.0 / Q4_BLOCK  # a nibble, and a float32 scale and min per 32
_Q8_MAX = 127  # symmetric: -127..127, so -128 is never produced

# Convert big matrices this many values at a time: bounds the float32 temporaries to a
# few MB instead of a float32 copy of a whole (e.g. 128256 x 4096) embedding.
_CONVERT_CHUNK_VALUES = 1 << 22


class Q8:
    """A matrix quantised per block of 32 values along each row: w ~= values * scale.

    values: (..., in_features) int8; scales: (..., in_features / 32) float32.
    Follows the stored-tensor protocol of storage.py."""

    def __init__(self, values: np.ndarray, scales: np.ndarray):
        if values.dtype != np.int8 or scales.dtype != np.float32:
            raise TypeError(f"Q8 wants int8 values and float32 scales, got {values.dtype} "
                            f"and {scales.dtype}")
        if values.shape[:-1] + (values.shape[-1] // Q8_BLOCK,) != scales.shape \
                or values.shape[-1] % Q8_BLOCK:
            raise ValueError(f"Q8 values {values.shape} do not match scales {scales.shape} "
                             f"for blocks of {Q8_BLOCK}")
        self.values = values
        self.scales = scales

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

    def __repr__(self) -> str:
        return f"Q8(shape={self.shape})"


class Q4:
    """A matrix of 4-bit values in blocks of 32 along each row: w = scale * q + min.

    packed: (..., in_features / 2) uint8, per block 16 bytes, byte i holding q of value
    i (low nibble) and of value 16 + i (high nibble), as GGUF's Q4_0 lays them out;
    scales, mins: (..., in_features / 32) float32. Made from GGUF's Q4_0, Q4_1 and
    Q4_K only (checkpoint.gguf_quants.q4_parts). Follows storage.py's protocol."""

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


def dequantize_q8(values: np.ndarray, scales: np.ndarray, out: np.ndarray = None) -> np.ndarray:
    """values * scale per block, in float32; into `out` (same shape as values) if given."""
    if out is None:
        out = np.empty(values.shape, dtype=np.float32)
    blocked = values.shape[:-1] + (-1, Q8_BLOCK)
    np.multiply(values.reshape(blocked), scales[..., None], out=out.reshape(blocked))
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


def to_dtype(tensor, dtype, name: str = "weight", gguf_kernels: bool = True):
    """Any stored tensor (ndarray, BF16, Q8, GGUF QuantizedTensor) in the in-memory
    form `dtype` ("f32", "bf16" or "q8"; None: the default) that kernels.linear
    multiplies by.

    Vectors (norm gains) are always float32: they are tiny and used elementwise.
    With dtype None and gguf_kernels (the fused numba kernels will run), a GGUF
    block-quantised tensor that a kernel multiplies directly keeps its quantisation:
    re-encoding would only cost memory or precision. Without them NumPy would decode it
    for every product, slower than multiplying f32, so it is converted like the rest.
    A tensor already in the asked form is returned as is (no copy).
    """
    form = conversion(tensor, dtype, gguf_kernels)
    if form == "kept":
        return tensor
    if form == "f32":
        return as_float32(tensor)
    if form == "Q8_0":
        return _q8_from_gguf_q8_0(tensor)
    if form in Q4_KINDS:
        return _q4_from_gguf(tensor)
    if form == "bf16":
        if isinstance(tensor, BF16):  # kernels read rows as contiguous runs
            return BF16(np.ascontiguousarray(tensor.bits))
        bits = np.empty(tensor.shape, dtype=np.uint16)
        for rows, chunk in _float32_row_chunks(tensor):
            bits[rows] = float32_to_bf16_bits(chunk)
        return BF16(bits)
    values = np.empty(tensor.shape, dtype=np.int8)
    scales = np.empty(tensor.shape[:-1] + (tensor.shape[-1] // Q8_BLOCK,), dtype=np.float32)
    for rows, chunk in _float32_row_chunks(tensor):
        q = quantize_q8(chunk, name)
        values[rows], scales[rows] = q.values, q.scales
    return Q8(values, scales)


def new_bytes(tensor, dtype, gguf_kernels: bool = True) -> int:
    """Bytes of new memory to_dtype(tensor, dtype, gguf_kernels=...) allocates: 0 when
    it keeps the tensor as it is (e.g. bf16 bits memory-mapped from the checkpoint,
    asked for as bf16)."""
    form = conversion(tensor, dtype, gguf_kernels)
    if form == "kept":
        return 0
    per_weight = (Q4_BYTES_PER_WEIGHT if form in Q4_KINDS else
                  BYTES_PER_WEIGHT["q8" if form == "Q8_0" else form])  # Q8_0 becomes a Q8
    return int(np.prod(tensor.shape, dtype=np.int64) * per_weight)


def check_dtype(dtype) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def conversion(tensor, dtype, gguf_kernels: bool) -> str:
    """What to_dtype makes of `tensor`: "kept" (the tensor itself), "f32", "bf16", "q8",
    or a GGUF type with a kernel: "Q8_0" (laid out again as Q8), or one of Q4_KINDS (as Q4)."""
    check_dtype(dtype)
    is_float32 = isinstance(tensor, np.ndarray) and tensor.dtype == np.float32
    if len(tensor.shape) != 2:
        return "kept" if is_float32 else "f32"
    ggml_type = getattr(tensor, "ggml_type", None)
    if dtype is None and gguf_kernels and (ggml_type == "Q8_0" or ggml_type in Q4_KINDS):
        return ggml_type
    if ggml_type == "Q8_0" and dtype == "q8":  # asked for what it is: re-laid, not re-quantised
        return ggml_type
    if dtype in (None, "f32"):
        return "kept" if is_float32 else "f32"
    if dtype == "bf16":
        kept = isinstance(tensor, BF16) and tensor.bits.flags.c_contiguous
        return "kept" if kept else "bf16"
    return "kept" if isinstance(tensor, Q8) else "q8"


def _float32_row_chunks(tensor):
    """(row slice, float32 rows) pieces of a 2-D stored tensor, a few MB each."""
    for rows in _row_slices(*tensor.shape):
        yield rows, take_rows(tensor, rows)


def _row_slices(n_rows: int, n_cols: int):
    """Slices of consecutive rows holding about _CONVERT_CHUNK_VALUES values each."""
    step = max(1, _CONVERT_CHUNK_VALUES // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _q8_from_gguf_q8_0(tensor) -> Q8:
    """A GGUF Q8_0 matrix as Q8: the same values, each block's float16 scale widened."""
    return Q8(*q8_0_parts(tensor.raw))


def _q4_from_gguf(tensor) -> Q4:
    """A GGUF Q4_0 / Q4_1 / Q4_K matrix as Q4, a few MB of rows at a time."""
    n_rows, n_cols = tensor.shape
    q4 = Q4(np.empty((n_rows, n_cols // 2), np.uint8),
            *(np.empty((n_rows, n_cols // Q4_BLOCK), np.float32) for _ in range(2)))
    for rows in _row_slices(n_rows, n_cols):
        q4.packed[rows], q4.scales[rows], q4.mins[rows] = q4_parts(tensor.raw[rows],
                                                                  tensor.ggml_type)
    return q4
