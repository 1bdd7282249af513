"""Converting any stored tensor a reader returns into the form a load asks for.

    "f32"   float32 ndarray
    "bf16"  bf16.BF16: raw bfloat16 bits, half the memory of float32
    "q8"    q8.Q8: blocks of 32 int8 values sharing one float32 scale, 1.125 bytes a weight

`to_dtype` makes every matrix the dtype asked for. With none asked for (None), matrices
become f32, except GGUF Q8_0, Q4_0, Q4_1 and Q4_K matrices when `keep_quantized`: those
keep the file's quantisation, re-laid for the kernels (Q8_0 as a Q8 with the file's
float16 scales, 1.0625 bytes a weight; the 4-bit ones as a q4.Q4: 0.5625, 0.625 and 0.75),
with the stored values exactly.
Vectors (norm gains) are always float32.
"""

import numpy as np

from ..errors import InputError
from . import as_float32, take_rows
from .bf16 import BF16, float32_to_bf16_bits
from .gguf_blocks import Q4_KINDS, Q4_SCALE_BYTES, q4_parts, q8_0_parts
from .q4 import Q4, Q4_BLOCK, SuperScales
from .q8 import Q8, Q8_0_BYTES_PER_WEIGHT, Q8_BLOCK, Q8_BYTES_PER_WEIGHT, quantize_q8

DTYPES = ("f32", "bf16", "q8")

# Memory per matrix weight in each dtype.
BYTES_PER_WEIGHT = {"f32": 4.0, "bf16": 2.0, "q8": Q8_BYTES_PER_WEIGHT}

# Convert big matrices this many values at a time: bounds the float32 temporaries to a
# few MB instead of a float32 copy of a whole (e.g. 128256 x 4096) embedding.
_CONVERT_CHUNK_VALUES = 1 << 22


def to_dtype(tensor, dtype, name: str = "weight", keep_quantized: bool = True):
    """Any stored tensor (ndarray, BF16, Q8, Q4, GGUF QuantizedTensor) in the in-memory
    form `dtype` ("f32", "bf16" or "q8"; None: the default) that kernels.linear
    multiplies by.

    Vectors (norm gains) are always float32: they are tiny and used elementwise.
    With dtype None and keep_quantized, a GGUF block-quantised matrix a kernel multiplies
    directly keeps its quantisation: re-encoding would only cost memory or precision.
    keep_quantized matters only when dtype is None (and a Q8_0 matrix asked for as q8 is
    re-laid, not re-quantised, either way); the caller decides it (llama.load: where the
    numba kernels run, since NumPy would decode a quantised matrix for every product).
    A tensor already in the asked form is returned as is (no copy).
    """
    form = conversion(tensor, dtype, keep_quantized)
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


def new_bytes(tensor, dtype, keep_quantized: bool = True) -> int:
    """Bytes of new memory to_dtype(tensor, dtype, keep_quantized=...) allocates: 0 when
    it keeps the tensor as it is (e.g. bf16 bits memory-mapped from the checkpoint,
    asked for as bf16)."""
    form = conversion(tensor, dtype, keep_quantized)
    if form == "kept":
        return 0
    per_weight = (0.5 + Q4_SCALE_BYTES[form] / Q4_BLOCK if form in Q4_KINDS else
                  Q8_0_BYTES_PER_WEIGHT if form == "Q8_0" else BYTES_PER_WEIGHT[form])
    return int(np.prod(tensor.shape, dtype=np.int64) * per_weight)


def check_dtype(dtype) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def conversion(tensor, dtype, keep_quantized: bool) -> str:
    """What to_dtype makes of `tensor`: "kept" (the tensor itself), "f32", "bf16", "q8",
    or a GGUF type with a kernel: "Q8_0" (laid out again as Q8), or one of Q4_KINDS (as Q4)."""
    check_dtype(dtype)
    is_float32 = isinstance(tensor, np.ndarray) and tensor.dtype == np.float32
    if len(tensor.shape) != 2:
        return "kept" if is_float32 else "f32"
    ggml_type = getattr(tensor, "ggml_type", None)
    if dtype is None and keep_quantized and (ggml_type == "Q8_0" or ggml_type in Q4_KINDS):
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
    """A GGUF Q8_0 matrix as Q8: the same values and float16 scales, re-laid."""
    return Q8(*q8_0_parts(tensor.raw))


def _q4_from_gguf(tensor) -> Q4:
    """A GGUF Q4_0 / Q4_1 / Q4_K matrix as Q4, a few MB of rows at a time."""
    n_rows, n_cols = tensor.shape
    q4 = None
    for rows in _row_slices(n_rows, n_cols):
        piece = q4_parts(tensor.raw[rows], tensor.ggml_type)
        if q4 is None:
            q4 = Q4(*(_empty_rows(part, n_rows) for part in piece))
        for whole, part in zip((q4.packed, q4.scales, q4.mins), piece):
            _fill_rows(whole, rows, part)
    return q4


def _empty_rows(part, n_rows: int):
    """An array like `part` (or a SuperScales of them; or None) but of n_rows rows."""
    if isinstance(part, SuperScales):
        return SuperScales(*(_empty_rows(array, n_rows) for array in part))
    return None if part is None else np.empty((n_rows,) + part.shape[1:], part.dtype)


def _fill_rows(whole, rows, part) -> None:
    """whole[rows] = part, for arrays, SuperScales of them, or None."""
    if isinstance(part, SuperScales):
        for whole_array, array in zip(whole, part):
            whole_array[rows] = array
    elif part is not None:
        whole[rows] = part
