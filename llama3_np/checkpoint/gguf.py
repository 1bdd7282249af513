"""GGUF v3 (and v2) reader: metadata, tensor table, llama.cpp names -> Meta's.

File layout, all little-endian (ggml's gguf.h):

    "GGUF"  uint32 version  uint64 tensor_count  uint64 kv_count
    kv_count x      (string key, uint32 value_type, value)
    tensor_count x  (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml_type,
                     uint64 offset into the data section)
    padding to `general.alignment` (default 32), then the data section.

A string is a uint64 byte length and UTF-8 bytes; an array is a uint32 element type,
a uint64 count and the elements. ne[0] is the innermost (fastest-varying) dimension,
so the NumPy shape is ne reversed: a weight with ne = (in, out) is (out, in).

The file is memory-mapped, never read whole: float tensors are NumPy views of the
map, quantised ones keep their raw bytes (see formats/gguf_blocks.py).

llama.cpp stores q and k rows in Meta's adjacent-pair layout: convert_hf_to_gguf.py
applies `LlamaModel.permute` (reshape(n_head, 2, head_dim/2).swapaxes(1, 2)), the
inverse of the permutation Hugging Face applied to Meta's weights, because llama.cpp
rotates adjacent pairs ("norm" RoPE) for the LLAMA architecture. So rows are taken
as stored; tests/test_gguf_reader.py proves it on a file written that way.
"""

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_gguf_metadata
from ..errors import CheckpointError, clip
from ..formats import as_float32
from ..formats.bf16 import BF16
from . import Checkpoint, is_size, select_canonical
from ..formats.gguf_blocks import BLOCK_FORMATS, QuantizedTensor

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit lengths; v2 and v3 lay out the same way
DEFAULT_ALIGNMENT = 32

# Metadata value types with a fixed-size encoding (ids 8 and 9 are string and array).
_STRING, _ARRAY = 8, 9
_SCALAR_DTYPES = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("?"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}

# ggml tensor type ids (ggml.h); every name is listed so an unsupported one can be named.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
# Unquantised types: NumPy dtype of one stored element.
_FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
SUPPORTED_TYPES = (*_FLOAT_DTYPES, *BLOCK_FORMATS)

_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 63  # GGML_MAX_NAME (64) less the terminating NUL
_MAX_ARRAY_NESTING = 8  # arrays of arrays: the gguf package writes them, ggml reads none
# Far beyond any real key, value or vocabulary (Llama 3: 128256 tokens), and low enough
# that a corrupt length cannot turn gigabytes of a large file into Python objects.
_MAX_STRING_BYTES = 1 << 26
_MAX_ARRAY_LENGTH = 1 << 24
# Budgets for all the metadata together, as every value becomes a Python object: Llama 3's
# tokenizer (128,256 tokens, 280,147 merges, their types) holds ~540,000 values and
# ~4 MB of strings. An array of 2^24 empty arrays costs 1.4 GB; this caps such a file
# at about 150 MB and a couple of seconds.
_MAX_METADATA_VALUES = 1 << 21
_MAX_METADATA_BYTES = 1 << 27


@dataclass
class GGUFFile:
    """Everything in a GGUF file, under the file's own tensor names."""

    path: Path
    version: int
    metadata: dict  # key -> str / int / float / bool / list
    tensors: dict  # GGUF name -> float32 / float16 ndarray, BF16 or QuantizedTensor


class _Cursor:
    """Reads the header fields in order, refusing to run past the end of the file."""

    def __init__(self, buffer: memoryview, path: Path):
        self.buffer, self.path, self.pos = buffer, path, 0
        self.values_left, self.bytes_left = _MAX_METADATA_VALUES, _MAX_METADATA_BYTES

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.buffer):
            raise CheckpointError(f"{self.path} is truncated: {what} at byte {self.pos} needs "
                                  f"{n} bytes but the file has {len(self.buffer)}")
        piece, self.pos = self.buffer[self.pos:end], end
        return piece

    def numbers(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(dtype.itemsize * count, what), dtype=dtype)

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]  # struct: 10x faster than NumPy here

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, limit: int, what: str) -> int:
        """A uint64 length, refused above `limit` before anything that large is read."""
        n = self.u64(what)
        if n > limit:
            raise CheckpointError(f"{self.path} is corrupt: {what} claims a length of {n} "
                                  f"(at most {limit} is plausible)")
        return n

    def spend(self, values: int, n_bytes: int, what: str) -> None:
        """Charge the metadata budgets, refusing a file that overdraws them."""
        self.values_left -= values
        self.bytes_left -= n_bytes
        if self.values_left < 0 or self.bytes_left < 0:
            raise CheckpointError(f"{self.path} is corrupt: the metadata up to {what} holds "
                                  f"more than {_MAX_METADATA_VALUES} values or "
                                  f"{_MAX_METADATA_BYTES} bytes of strings, far beyond any "
                                  "real model's")

    def string(self, what: str) -> str:
        n_bytes = self.count(_MAX_STRING_BYTES, what)
        self.spend(0, n_bytes, what)
        raw = bytes(self.take(n_bytes, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        """One metadata value as a plain Python value (arrays become lists). It counts as one
        value of the budget; an array's items are charged before any is read."""
        if depth == 0:
            self.spend(1, 0, what)
        if vtype in _SCALAR_DTYPES:
            return self.numbers(_SCALAR_DTYPES[vtype], 1, what)[0].item()
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth == _MAX_ARRAY_NESTING:
                raise CheckpointError(f"{self.path}: {what} nests arrays more than "
                                      f"{_MAX_ARRAY_NESTING} deep")
            item_type, count = self.u32(what), self.count(_MAX_ARRAY_LENGTH, what)
            self.spend(count, 0, what)
            if item_type in _SCALAR_DTYPES:  # one vectorised read, not a loop
                return self.numbers(_SCALAR_DTYPES[item_type], count, what).tolist()
            if item_type not in (_STRING, _ARRAY):  # refuse before looping `count` times
                raise CheckpointError(f"{self.path}: {what} has unknown value type {item_type}")
            return [self.value(item_type, what, depth + 1) for _ in range(count)]
        raise CheckpointError(f"{self.path}: {what} has unknown value type {vtype}")


def _memory_map(path: Path) -> np.memmap:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    try:
        if path.stat().st_size < 4 + 4 + 8 + 8:  # np.memmap refuses an empty file
            raise CheckpointError(f"{path} is truncated: too short for a GGUF header")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def _check_version(version: int, path: Path) -> None:
    if version in SUPPORTED_VERSIONS:
        return
    if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        raise CheckpointError(f"{path} is a big-endian GGUF file; only little-endian "
                              "files are supported")
    raise CheckpointError(f"{path} has GGUF version {version}; supported versions are "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}")


def _alignment(metadata: dict, path: Path) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path}: general.alignment must be a power of two, "
                              f"got {alignment!r}")
    return alignment


def _tensor_type(type_id: int, name: str, path: Path) -> str:
    type_name = GGML_TYPE_NAMES.get(type_id)
    if type_name in SUPPORTED_TYPES:
        return type_name
    stored = f"ggml type {type_name}" if type_name else f"unknown ggml type id {type_id}"
    raise CheckpointError(f"{path}: tensor '{name}' is stored as {stored}, which this reader "
                          f"cannot decode; supported types: {', '.join(SUPPORTED_TYPES)}")


def _stored_tensor(data: np.memmap, start: int, type_name: str, ne: list):
    """A view of the mapped bytes as the right kind of stored tensor (no copy)."""
    shape = tuple(reversed(ne))  # NumPy order: ne[0] (the row) is last
    if type_name in _FLOAT_DTYPES:
        dtype = _FLOAT_DTYPES[type_name]
        view = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
        view = view.reshape(shape)
        return BF16(view) if type_name == "BF16" else view
    fmt = BLOCK_FORMATS[type_name]
    row_bytes = ne[0] // fmt.values_per_block * fmt.bytes_per_block
    raw = np.frombuffer(data, dtype=np.uint8, count=math.prod(shape[:-1]) * row_bytes,
                        offset=start)
    return QuantizedTensor(raw.reshape(shape[:-1] + (row_bytes,)), type_name)


def _tensor_bytes(type_name: str, ne: list, name: str, path: Path) -> int:
    """Size of the tensor's data. Exact Python ints: a corrupt shape must not wrap around."""
    if type_name in _FLOAT_DTYPES:
        return math.prod(ne) * _FLOAT_DTYPES[type_name].itemsize
    fmt = BLOCK_FORMATS[type_name]
    if ne[0] % fmt.values_per_block:
        raise CheckpointError(f"{path}: tensor '{name}' has rows of {ne[0]} values, not a "
                              f"multiple of the {type_name} block size {fmt.values_per_block}")
    return math.prod(ne) // fmt.values_per_block * fmt.bytes_per_block


def read_gguf_file(path: Path) -> GGUFFile:
    """Parse a GGUF file: all metadata, and every tensor as a view of the memory map."""
    path = Path(path)
    data = _memory_map(path)
    cursor = _Cursor(memoryview(data), path)
    if bytes(cursor.take(4, "the magic number")) != MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    version = cursor.u32("the version")
    _check_version(version, path)
    n_tensors, n_kv = cursor.u64("the tensor count"), cursor.u64("the key/value count")

    metadata = {}
    for i in range(n_kv):
        key = cursor.string(f"metadata key #{i}")
        short = clip(key)  # messages quote at most the start of a key
        if key in metadata:
            raise CheckpointError(f"{path} is corrupt: metadata key '{short}' appears twice")
        metadata[key] = cursor.value(cursor.u32(f"the type of '{short}'"), f"metadata '{short}'")

    infos = []  # (name, ne, ggml type id, offset)
    for i in range(n_tensors):
        name = cursor.string(f"tensor name #{i}")
        if len(name) > _MAX_NAME:
            raise CheckpointError(f"{path} is corrupt: tensor name #{i} ('{clip(name)}') is "
                                  f"{len(name)} characters long; ggml allows {_MAX_NAME}")
        n_dims = cursor.u32(f"the rank of tensor '{name}'")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise CheckpointError(f"{path} is corrupt: tensor '{name}' has {n_dims} dimensions")
        ne = [int(d) for d in cursor.numbers(_SCALAR_DTYPES[10], n_dims, f"the shape of '{name}'")]
        if not all(map(is_size, ne)):  # ggml's dimensions are int64
            raise CheckpointError(f"{path} is corrupt: tensor '{name}' has shape {ne}, a "
                                  "dimension of 2**63 or more")
        type_id = cursor.u32(f"the type of tensor '{name}'")
        infos.append((name, ne, type_id, cursor.u64(f"the offset of tensor '{name}'")))

    alignment = _alignment(metadata, path)
    data_start = _padded(cursor.pos, alignment)
    tensors = {}
    expected_offset = 0  # ggml lays tensors out in table order, each padded to the alignment
    for name, ne, type_id, offset in infos:
        if name in tensors:
            raise CheckpointError(f"{path} is corrupt: tensor '{name}' appears twice")
        type_name = _tensor_type(type_id, name, path)
        if offset % alignment:
            raise CheckpointError(f"{path} is corrupt: tensor '{name}' starts at data offset "
                                  f"{offset}, not a multiple of the alignment {alignment}")
        start = data_start + offset
        size = _tensor_bytes(type_name, ne, name, path)
        if start + size > len(data):
            raise CheckpointError(f"{path} is truncated: tensor '{name}' needs bytes "
                                  f"{start}..{start + size} but the file ends at byte {len(data)}")
        if offset != expected_offset:  # as llama.cpp's gguf_init_from_file checks
            raise CheckpointError(f"{path} is corrupt: tensor '{name}' has data offset "
                                  f"{offset}, but the tensors before it end at {expected_offset}")
        expected_offset += _padded(size, alignment)
        tensors[name] = _stored_tensor(data, start, type_name, ne)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)


def _padded(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


# Meta's tensor names -> llama.cpp's.
_TOP_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}
_LAYER_NAMES = {
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 scaling as per-frequency divisors


def gguf_name(canonical: str) -> str:
    """llama.cpp's name for one of Meta's tensor names."""
    if canonical in _TOP_NAMES:
        return _TOP_NAMES[canonical]
    _, layer, rest = canonical.split(".", 2)  # "layers", "{i}", "attention.wq.weight"
    return f"blk.{layer}.{_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def _check_architecture(metadata: dict, path: Path) -> None:
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: architecture '{arch}' is not supported (only 'llama')")


def read_gguf(path: Path) -> Checkpoint:
    """A llama.cpp GGUF checkpoint as a Checkpoint: Meta's names and layout, storage precision.
    Llama 3.1's rope_freqs tensor only tells the config its rope scaling; the model
    computes its frequencies from the config, so the tensor is not kept."""
    gguf = read_gguf_file(path)
    _check_architecture(gguf.metadata, gguf.path)
    embedding = gguf.tensors.get(_TOP_NAMES["tok_embeddings.weight"])
    divisors = gguf.tensors.get(ROPE_FREQS)
    config = from_gguf_metadata(
        gguf.metadata, str(gguf.path),
        embedding_rows=0 if embedding is None else embedding.shape[0],
        tie_embeddings=_TOP_NAMES["output.weight"] not in gguf.tensors,
        rope_divisors=None if divisors is None else as_float32(divisors))
    tensors = select_canonical(gguf.tensors, config, gguf.path, stored_name=gguf_name,
                               ignore=lambda name: name == ROPE_FREQS,
                               config_name="its metadata")
    return Checkpoint(config=config, tensors=tensors, path=gguf.path, format="gguf",
                      tokenizer_file=None, metadata=gguf.metadata)
