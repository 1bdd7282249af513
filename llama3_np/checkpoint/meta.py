"""Meta's original checkpoints (params.json + consolidated.NN.pth), read without torch.

Each .pth is a torch.save zip archive: `<archive>/data.pkl` is a pickle describing the
tensors and `<archive>/data/<key>` holds each storage's raw bytes, uncompressed. The
pickle is untrusted input, so it is unpickled with an allow-list of globals and nothing
else can run. Storages are memory-mapped straight out of the zip, so a single-shard
checkpoint loads without copying a weight. Model-parallel checkpoints (70B has 8
shards) are joined along the axis Meta's code split each weight on.
"""

import io
import math
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..config import from_meta_params
from ..errors import CheckpointError, ConfigError, clip, excerpt
from ..files import read_json_object, regular_file
from ..formats.bf16 import BF16
from ..tokenizer.files import find_tokenizer_file
from . import MAX_RANK, Checkpoint, is_size, select_canonical

_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")

# Meta's model-parallel layout: ColumnParallelLinear keeps a slice of the output rows
# (axis 0), RowParallelLinear a slice of the input columns (axis 1); norms are replicated.
_COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3", "output")
_ROW_PARALLEL = ("wo", "w2")


def read_meta(directory: Path) -> Checkpoint:
    """A Meta checkpoint directory as a Checkpoint; weights stay memory-mapped when unsharded."""
    directory = Path(directory)
    params_path = directory / "params.json"
    params = _read_params(params_path)
    shards = [(path, read_pth(path)) for path in _shard_paths(directory)]
    _check_same_names(shards)
    config = from_meta_params(params, source=str(params_path),
                              tie_embeddings="output.weight" not in shards[0][1])
    where = shards[0][0] if len(shards) == 1 else f"{directory} ({len(shards)} shards)"
    tensors = select_canonical(_join_shards(shards, config.dim, directory), config, where,
                               ignore=lambda name: name == "rope.freqs")  # Llama 2 kept it
    return Checkpoint(config=config, tensors=tensors, path=directory, format="meta",
                      tokenizer_file=find_tokenizer_file(directory))


def read_pth(path: Path) -> dict:
    """One torch.save file as {name: tensor}: NumPy views of the memory-mapped file
    (float32 / float16 arrays; BF16 for bfloat16). Non-string keys are dropped."""
    path = Path(path)
    state = _TensorUnpickler(_TorchArchive(path)).load_checked()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return {name: value.tensor if isinstance(value, _Tensor) else value
            for name, value in state.items() if isinstance(name, str)}


# ---- the directory: params.json and the shard files ----

def _read_params(path: Path) -> dict:
    if not path.parent.is_dir():
        raise CheckpointError(f"{path.parent} is not a directory")
    if not path.exists():
        raise CheckpointError(f"{path.parent} has no params.json, which a Meta checkpoint "
                              "directory needs next to consolidated.00.pth")
    return read_json_object(path, ConfigError)


def _shard_paths(directory: Path) -> list:
    """consolidated.00.pth .. consolidated.NN.pth in order, refusing gaps."""
    found = {}
    for path in sorted(directory.glob("consolidated.*.pth")):
        match = _SHARD_NAME.fullmatch(path.name)
        if not match:
            continue
        index = int(match[1])
        if index in found:
            raise CheckpointError(f"{directory}: {found[index].name} and {path.name} "
                                  f"are both shard {index}")
        found[index] = path
    if not found:
        raise CheckpointError(f"{directory} has no consolidated.NN.pth weight files")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        present = ", ".join(found[i].name for i in sorted(found))
        raise CheckpointError(f"{directory}: consolidated.{missing[0]:02d}.pth is missing "
                              f"(found {present})")
    return [found[i] for i in sorted(found)]


# ---- joining model-parallel shards into canonical tensors ----

def _check_same_names(shards: list) -> None:
    """Model-parallel shards each hold a slice of every tensor: the same names in all."""
    first_path, first = shards[0]
    for path, tensors in shards[1:]:
        for lacking, holding, names in ((path, first_path, first.keys() - tensors.keys()),
                                        (first_path, path, tensors.keys() - first.keys())):
            if names:
                raise CheckpointError(f"{lacking} has no tensor '{min(names)}', which "
                                      f"{holding.name} has")


def _join_shards(shards: list, dim: int, directory: Path) -> dict:
    """Name -> the whole tensor, each stored tensor checked to be floating point."""
    joined = {}
    for name in shards[0][1]:
        parts = [_float_tensor(path, tensors[name], name) for path, tensors in shards]
        joined[name] = _join(name, parts, dim, directory)
    return joined


def _float_tensor(path: Path, tensor, name: str):
    is_float = isinstance(tensor, BF16) or (
        isinstance(tensor, np.ndarray) and tensor.dtype in (np.float32, np.float16))
    if not is_float:
        kind = tensor.dtype if isinstance(tensor, np.ndarray) else type(tensor).__name__
        raise CheckpointError(f"{path}: {name} is {kind}; expected bfloat16, float16 or float32")
    return tensor


def _join(name: str, parts: list, dim: int, directory: Path):
    if len(parts) == 1:
        return parts[0]
    if len({part.shape for part in parts}) != 1:
        raise CheckpointError(f"{directory}: the shards hold {name} in different shapes "
                              f"{[part.shape for part in parts]}")
    if len({_precision(part) for part in parts}) != 1:
        raise CheckpointError(f"{directory}: the shards hold {name} in different precisions")
    axis = _split_axis(name, parts[0].shape, dim)
    if axis is None:
        return parts[0]
    if axis >= len(parts[0].shape):
        raise CheckpointError(f"{directory}: the shards hold {name} with shape "
                              f"{parts[0].shape}; a split weight is a matrix")
    # Concatenate the stored values (bf16 bits stay bits): one copy, in storage precision.
    if isinstance(parts[0], BF16):
        return BF16(np.concatenate([part.bits for part in parts], axis=axis))
    return np.concatenate(parts, axis=axis)


def _split_axis(name: str, part_shape: tuple, dim: int):
    """The axis Meta's model-parallel code split `name` on, or None if replicated."""
    kind = name.split(".")[-2] if "." in name else ""  # "layers.0.attention.wq.weight" -> "wq"
    if kind in _COLUMN_PARALLEL:
        return 0
    if kind in _ROW_PARALLEL:
        return 1
    if kind == "tok_embeddings":
        # Llama 3's VocabParallelEmbedding splits the vocabulary; Llama 2's
        # ParallelEmbedding split the embedding dim. The shard shape tells which.
        return 0 if part_shape[-1] == dim else 1
    return None


def _precision(tensor) -> str:
    return "bfloat16" if isinstance(tensor, BF16) else str(tensor.dtype)


# ---- one .pth file: the zip archive and its pickle ----

# What zipfile raises on a damaged archive besides BadZipFile: short reads (EOFError),
# offsets pointing outside the file (ValueError, OverflowError), a damaged compressed
# member (zlib.error), a flipped compression or encryption flag (NotImplementedError,
# RuntimeError), undecodable names (UnicodeDecodeError, a ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               OverflowError, struct.error, zlib.error, NotImplementedError, RuntimeError)


# A 70B shard's data.pkl is about 100 KB; a corrupt size must not make us read gigabytes.
_MAX_PICKLE_BYTES = 100_000_000
# torch.save writes about 32 opcodes per tensor (a 405B shard: ~40,000). Each opcode can
# make an object (EMPTY_SET: one byte, 200 bytes of memory) and a memo index sizes the
# unpickler's memo table (10 bytes can ask for gigabytes), so both are bounded.
_MAX_PICKLE_OPS = 1 << 19
# The byteorder record holds "little" or "big".
_MAX_BYTEORDER_BYTES = 16


class _TorchArchive:
    """A torch.save zip: its data.pkl bytes and its storages mapped (not read) from disk."""

    def __init__(self, path: Path):
        self.path = regular_file(path, CheckpointError)  # a FIFO would block the zip reader
        try:
            with zipfile.ZipFile(path) as archive:
                self.members = {info.filename: info for info in archive.infolist()}
                pickles = [n for n in self.members if n == "data.pkl" or n.endswith("/data.pkl")]
                if len(pickles) != 1:
                    raise CheckpointError(f"{path} is a zip file but not a torch.save "
                                          "checkpoint: it has no single data.pkl")
                # The archive's top directory is named after whatever file torch.save wrote.
                self.prefix = pickles[0][: -len("data.pkl")]
                self.pickle_bytes = self._read(archive, pickles[0], _MAX_PICKLE_BYTES)
                byteorder_member = self.prefix + "byteorder"
                byteorder = (self._read(archive, byteorder_member, _MAX_BYTEORDER_BYTES)
                             if byteorder_member in self.members else b"little")
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{path} is not a complete zip archive (truncated, corrupt "
                                  f"or not a torch.save file): {type(e).__name__}: "
                                  f"{clip(str(e))}") from e
        if byteorder.strip() != b"little":
            raise CheckpointError(f"{path} stores {excerpt(byteorder)} endian data; only "
                                  "little-endian checkpoints are supported")
        _check_pickle_ops(path, self.pickle_bytes)
        self.file = np.memmap(path, dtype=np.uint8, mode="r")

    def _read(self, archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
        """A record's bytes, refused before decompressing anything: torch.save stores every
        record, so a compressed one (a possible zip bomb) means the file was repacked."""
        info = self.members[name]
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{self.path}: {clip(name)} is compressed; torch.save "
                                  "stores it uncompressed, so this file was repacked")
        if info.file_size > limit:
            raise CheckpointError(f"{self.path}: {clip(name)} claims {info.file_size} "
                                  f"bytes; torch.save writes at most {limit} there")
        return archive.read(name)

    def storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        """Storage `key` as a 1-D array of `numel` elements, a view into the mapped file."""
        name = f"{self.prefix}data/{key}"
        info = self.members.get(name)
        if info is None:
            raise CheckpointError(f"{self.path} has no storage record {name}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{self.path}: {name} is compressed; torch.save stores "
                                  "tensors uncompressed, so this file was repacked")
        nbytes = numel * np.dtype(dtype).itemsize
        if info.file_size != nbytes:
            raise CheckpointError(f"{self.path}: {name} holds {info.file_size} bytes, but the "
                                  f"pickle describes {numel} elements ({nbytes} bytes)")
        start = self._data_start(info)
        if start + nbytes > self.file.size:
            raise CheckpointError(f"{self.path} is truncated: {name} ends past the end of "
                                  "the file")
        return self.file[start:start + nbytes].view(dtype=dtype, type=np.ndarray)

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        # The local file header (30 bytes + name + extra field) precedes the member's data;
        # its extra field may differ from the central directory's, so read it here. Its
        # name must repeat the directory's, as zipfile itself checks when it reads.
        offset = info.header_offset
        header = bytes(self.file[offset:offset + 30]) if offset >= 0 else b""
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: the zip header of {info.filename} is corrupt")
        name_length, extra_length = struct.unpack_from("<HH", header, 26)
        name = bytes(self.file[offset + 30:offset + 30 + name_length])
        if name != info.orig_filename.encode("utf-8", errors="replace") and \
                name != info.orig_filename.encode("cp437", errors="replace"):
            raise CheckpointError(f"{self.path}: the zip header of {info.filename} names "
                                  f"another file ({name[:60]!r})")
        return offset + 30 + name_length + extra_length


_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_pickle_ops(path: Path, data: bytes) -> None:
    """Refuse a pickle of more opcodes, or higher memo indices, than _MAX_PICKLE_OPS,
    before the unpickler builds anything: a scan of the opcodes, no object made."""
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if count == _MAX_PICKLE_OPS:
                raise CheckpointError(f"{path}: data.pkl runs more than {_MAX_PICKLE_OPS} "
                                      "pickle opcodes; a state dict's pickle needs far fewer")
            if opcode.name in _MEMO_OPCODES and not 0 <= int(arg) < _MAX_PICKLE_OPS:
                raise CheckpointError(f"{path}: data.pkl stores memo entry {excerpt(arg)}; "
                                      f"torch.save numbers them from 0 (below "
                                      f"{_MAX_PICKLE_OPS})")
    except CheckpointError:
        raise
    except Exception as e:  # genops: unknown opcodes, truncation, bad arguments
        raise _corrupt_pickle(path, e) from e


def _corrupt_pickle(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: data.pkl is corrupt ({type(e).__name__}: {clip(str(e))})")


# torch's storage types, by the name data.pkl refers to them; bfloat16 arrives as uint16 bits.
_STORAGE_DTYPES = {
    "BFloat16Storage": np.uint16, "HalfStorage": np.float16, "FloatStorage": np.float32,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(str):
    """Stands in for torch.FloatStorage & co. while unpickling: only the name matters.
    Immutable (a str without __dict__), so a pickle cannot tamper with it."""

    __slots__ = ()


class _Sealed:
    """What the unpickler makes refuses a BUILD opcode: torch.save sets no state on a
    tensor or storage, and one that did could rewrite their arrays or attributes."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _StateRefused(f"data.pkl sets the state of a {type(self).__name__.strip('_')} "
                            f"({excerpt(state)}), which torch.save never writes")


class _StateRefused(Exception):
    """Raised by _Sealed.__setstate__; load_checked adds the file's name."""


@dataclass
class _Storage(_Sealed):
    array: np.ndarray  # 1-D: the storage's elements (bfloat16 as uint16 bits)
    bfloat16: bool


@dataclass
class _Tensor(_Sealed):
    """A rebuilt tensor while unpickling (read_pth unwraps it): an ndarray or BF16."""

    tensor: object


class _TensorUnpickler(pickle.Unpickler):
    """Turns data.pkl into NumPy views. It resolves only the globals a dict of tensors
    needs; any other (os.system, eval, ...) is refused before it can be called."""

    def __init__(self, archive: _TorchArchive):
        super().__init__(io.BytesIO(archive.pickle_bytes))
        self._archive = archive
        self._allowed = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
        }

    def load_checked(self):
        try:
            return self.load()
        except CheckpointError:
            raise
        except _StateRefused as e:
            raise CheckpointError(f"{self._archive.path}: {e}") from None
        except Exception as e:  # untrusted bytes can break the unpickler in any number of ways
            raise _corrupt_pickle(self._archive.path, e) from e

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        allowed = self._allowed.get((module, name))
        if allowed is None:
            raise CheckpointError(f"{self._archive.path} refuses to load global "
                                  f"{clip(module)}.{clip(name)}: "
                                  "a checkpoint may hold only tensors")
        return allowed

    def persistent_load(self, pid):
        # torch.save writes each storage as ('storage', type, key, location, numel).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and is_size(pid[4])):
            raise CheckpointError(f"{self._archive.path}: data.pkl refers to an unknown "
                                  f"persistent object {excerpt(pid)}")
        _, storage_type, key, _location, numel = pid
        array = self._archive.storage(key, _STORAGE_DTYPES[storage_type], numel)
        return _Storage(array, bfloat16=storage_type == "BFloat16Storage")

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        return data

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"{self._archive.path}: data.pkl builds a tensor without "
                                  "a storage")
        view = self._view(storage.array, storage_offset, size, stride)
        return _Tensor(BF16(view) if storage.bfloat16 else view)

    def _view(self, array: np.ndarray, offset, size, stride) -> np.ndarray:
        """The tensor as a view of its storage, after checking it stays inside it."""
        # The rank and each number are checked before any arithmetic: 600 sizes of 20000
        # digits would take minutes to multiply.
        if not (is_size(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) <= MAX_RANK
                and all(is_size(n) for n in size + stride)):
            raise CheckpointError(f"{self._archive.path}: a tensor has an invalid layout "
                                  f"(offset {excerpt(offset)}, size {excerpt(size)}, stride "
                                  f"{excerpt(stride)}; at most {MAX_RANK} dimensions, each "
                                  "below 2**63)")
        count = math.prod(size)
        if count == 0:
            return array[:0].reshape(size)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= array.size:
            raise CheckpointError(f"{self._archive.path}: a tensor of shape {size} at offset "
                                  f"{offset} reaches past its storage of {array.size} elements")
        if stride == _contiguous_strides(size):
            return array[offset:offset + count].reshape(size)
        return as_strided(array[offset:], shape=size,
                          strides=tuple(s * array.itemsize for s in stride), writeable=False)


def _contiguous_strides(size: tuple) -> tuple:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
