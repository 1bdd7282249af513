"""Hugging Face snapshots: config.json + model.safetensors (or shards + an index).

Safetensors is parsed here from its published layout (an 8-byte little-endian header
length, a JSON header giving each tensor's dtype, shape and byte range, then the raw
data) and memory-mapped, so bfloat16 stays as its raw 16 bits and nothing is decoded
at load. HF's names become Meta's, and HF's q/k row order is turned back into Meta's
once, here, so the model's complex RoPE applies directly.
"""

import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import ModelConfig, from_hf_config
from ..errors import CheckpointError, ConfigError, excerpt
from ..files import parse_json_object, read_json_object, regular_file
from ..formats.bf16 import BF16
from ..tokenizer.files import find_tokenizer_file
from . import MAX_RANK, Checkpoint, is_size, select_canonical

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Safetensors dtype -> how its bytes are viewed. BF16 has no NumPy dtype: its bits
# are kept as uint16 and wrapped in formats.bf16.BF16.
_DTYPES = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}

_HF_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
# The safetensors library's own limit: a corrupt length must not make us read gigabytes.
MAX_HEADER_BYTES = 100_000_000

# Buffers older transformers saved next to the weights; recomputed, never needed.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_name(canonical: str) -> str:
    """Meta's tensor name -> the name transformers' LlamaForCausalLM stores it under."""
    if canonical in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[canonical]
    _, layer, rest = canonical.split(".", 2)  # "layers", "{i}", "attention.wq.weight"
    return f"model.layers.{layer}.{_HF_LAYER_NAMES[rest]}"


def unpermute_qk(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's q/k row order -> Meta's. Within each head HF stores all real-part rows, then
    all imaginary-part rows; Meta interleaves them as (real, imag) pairs. Rows only are
    moved, so this works on any dtype, including raw bfloat16 bits."""
    out_features, in_features = rows.shape
    head_dim = out_features // n_heads
    # (n_heads, [real|imag], head_dim/2, in) -> (n_heads, head_dim/2, [real|imag], in)
    by_half = rows.reshape(n_heads, 2, head_dim // 2, in_features)
    return np.ascontiguousarray(by_half.transpose(0, 2, 1, 3)).reshape(out_features, in_features)


def read_safetensors(path: Path) -> dict:
    """Every tensor in one .safetensors file, memory-mapped: F32 and F16 as ndarrays,
    BF16 as formats.bf16.BF16 over the raw bits. The header is checked before any use."""
    header, data_start, file_size = _read_header(path)
    data_size = file_size - data_start
    entries = {name: _check_entry(path, name, entry, data_size)
               for name, entry in header.items()
               if name != "__metadata__"}  # free-form strings, e.g. {"format": "pt"}
    _check_layout(path, entries, data_size)
    file = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = (end - begin) // dtype.itemsize
        array = np.frombuffer(file, dtype=dtype, count=count, offset=data_start + begin)
        array = array.reshape(shape)
        tensors[name] = BF16(array) if header[name]["dtype"] == "BF16" else array
    return tensors


def _read_header(path: Path) -> tuple:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    regular_file(path, CheckpointError)  # a FIFO would block open() forever
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            file_size = f.tell()
            f.seek(0)
            if file_size < 8:
                raise CheckpointError(f"{path} is too short ({file_size} bytes) to be safetensors")
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > file_size - 8:
                raise CheckpointError(f"{path}: header length {header_size} runs past the "
                                      f"end of the file ({file_size} bytes); truncated or "
                                      "not safetensors")
            if header_size > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: header length {header_size} is over the "
                                      f"safetensors limit of {MAX_HEADER_BYTES} bytes")
            raw = f.read(header_size)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    header = parse_json_object(raw, f"{path}: the safetensors header", CheckpointError)
    return header, 8 + header_size, file_size


def _check_entry(path: Path, name: str, entry, data_size: int) -> tuple:
    """One header entry checked against the format: (dtype, shape, begin, end)."""
    where = f"{path}: tensor {excerpt(name)}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where} lacks dtype, shape or data_offsets in the header")
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
        raise CheckpointError(f"{where} has dtype {excerpt(entry['dtype'])}; only "
                              f"{', '.join(_DTYPES)} are supported")
    dtype = _DTYPES[entry["dtype"]]
    shape, offsets = entry["shape"], entry["data_offsets"]
    # Checked before math.prod: 800 dims of 4000 digits would take seconds to multiply.
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(map(is_size, shape))):
        raise CheckpointError(f"{where} has an invalid shape {excerpt(shape)} (at most "
                              f"{MAX_RANK} dimensions, each below 2**63)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_size, offsets))):
        raise CheckpointError(f"{where} has invalid data_offsets {excerpt(offsets)}")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise CheckpointError(f"{where}: data_offsets {offsets} fall outside the "
                              f"{data_size} data bytes of the file")
    expected = dtype.itemsize * math.prod(shape)
    if end - begin != expected:
        raise CheckpointError(f"{where}: data_offsets span {end - begin} bytes but "
                              f"{entry['dtype']} {tuple(shape)} needs {expected}")
    return dtype, tuple(shape), begin, end


def _check_layout(path: Path, entries: dict, data_size: int) -> None:
    """The tensors tile the data section exactly, in offset order, as the safetensors
    library requires: no gaps, no overlaps, nothing after. So a damaged offset cannot
    quietly read another tensor's bytes."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            raise CheckpointError(f"{path}: tensor '{name}' starts at data byte {begin}, but "
                                  f"the previous tensor ends at {position} (gap or overlap)")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: the tensors end at data byte {position}, but the file "
                              f"holds {data_size} data bytes")


def _read_hf_tensors(directory: Path) -> dict:
    """HF name -> tensor, from model.safetensors or from the shards an index names."""
    index_path = directory / INDEX_FILE
    if not index_path.exists():
        if not (directory / SINGLE_FILE).exists():
            raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        return read_safetensors(directory / SINGLE_FILE)

    weight_map = read_json_object(index_path, CheckpointError).get("weight_map")
    if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError(f"{index_path} has no 'weight_map' of tensor name -> file name")
    shards = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:  # the index may only point inside the snapshot
            raise CheckpointError(f"{index_path} names shard '{shard}' outside {directory}")
        if not (directory / shard).is_file():
            raise CheckpointError(f"shard {shard} named in {index_path} is missing")
        shards[shard] = read_safetensors(directory / shard)
    tensors = {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise CheckpointError(f"{directory / shard} has no tensor '{name}', "
                                  f"though {INDEX_FILE} says it does")
        tensors[name] = shards[shard][name]
    for shard, held in shards.items():  # an unlisted tensor (lm_head?) would be lost
        unlisted = held.keys() - weight_map.keys()
        if unlisted:
            raise CheckpointError(f"{directory / shard} holds tensor '{min(unlisted)}', which "
                                  f"{INDEX_FILE} does not list")
    return tensors


def _undo_qk_permutation(tensors: dict, config: ModelConfig) -> None:
    for i in range(config.n_layers):
        for name, n_heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
            key = f"layers.{i}.attention.{name}.weight"
            tensor = tensors[key]
            if isinstance(tensor, BF16):
                tensors[key] = BF16(unpermute_qk(tensor.bits, n_heads))
            else:
                tensors[key] = unpermute_qk(tensor, n_heads)


def _differs_from_embedding(hf_tensors: dict) -> bool:
    """Whether a stored lm_head holds other values than the embedding (tied files
    normally store none; one that is a copy is tied all the same)."""
    head = hf_tensors.get("lm_head.weight")
    embedding = hf_tensors.get("model.embed_tokens.weight")
    if head is None or embedding is None or type(head) is not type(embedding):
        return head is not None
    raw = (lambda t: t.bits) if isinstance(head, BF16) else (lambda t: t)
    return head.shape != embedding.shape or not np.array_equal(raw(head), raw(embedding))


def read_hf(directory: Path) -> Checkpoint:
    """A Hugging Face Llama snapshot directory as a Checkpoint in Meta's names and layout."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():  # (exists, not is_file: a FIFO is refused when read)
        raise CheckpointError(f"{directory} has no config.json; not a Hugging Face snapshot")
    generation_path = directory / "generation_config.json"
    generation = (read_json_object(generation_path, ConfigError)
                  if generation_path.exists() else None)
    config = from_hf_config(read_json_object(config_path, ConfigError), generation,
                            source=str(config_path))

    hf_tensors = _read_hf_tensors(directory)
    if "lm_head.weight" not in hf_tensors and not config.tie_embeddings:
        config = replace(config, tie_embeddings=True)  # no lm_head: the embedding is the output
    if config.tie_embeddings and _differs_from_embedding(hf_tensors):
        # As transformers does: an lm_head that differs from the embedding is not tied.
        config = replace(config, tie_embeddings=False)
    tensors = select_canonical(hf_tensors, config, directory, stored_name=hf_name,
                               ignore=lambda name: name == "lm_head.weight"
                               or name.endswith(_IGNORED_SUFFIXES))
    _undo_qk_permutation(tensors, config)
    return Checkpoint(config=config, tensors=tensors, path=directory, format="hf",
                      tokenizer_file=find_tokenizer_file(directory))
