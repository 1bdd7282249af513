"""Damaged checkpoints never crash a reader and never load as something they are not.

Each format's reader is given a valid tiny checkpoint with random damage: bits flipped
at random offsets, the file cut at a random length, or one header field rewritten
(safetensors JSON header values, GGUF counts / types / offsets / lengths, the .pth
pickle and zip headers, params.json / config.json / index values). The property:

    the reader raises a llama3_np.errors.Llama3Error, or it loads the original model.

"The original model" means the same canonical tensor names and shapes and the same
shape-defining config (dim, layers, heads, kv heads, head size, vocabulary, ffn width),
and, unless the damage touched bytes a tensor's values are read from, every tensor
bit-identical as float32. Two kinds of damage legitimately change
values and are marked as such:

- bytes inside a tensor's data (and, in a .pth zip, the local header that locates a
  storage's data): no format checksums its data as it is read (zip has CRCs, but
  checking them means reading every weight at load, which memory-mapping avoids);
- fields that say how the data is to be read and for which every value is valid: a
  dtype of the same width (BF16 <-> F16), or the .pth pickle, which names each
  tensor's storage, offset and strides (torch.load would read such a file the same way).

Hyperparameters that shape no tensor (norm_eps, rope_theta, rope scaling, context
length, bos / stop ids) are free: a flipped digit there is a different, valid model
that the file does describe, and no reader can tell it from the original. So is
config.json's tie_word_embeddings: when it says tied, the output is the embedding and
a stored lm_head is not used (as in transformers).

CI runs a fixed, derandomized set of examples per property; set
LLAMA3_NP_FUZZ_EXAMPLES=1000 for a longer hunt.
"""

import io
import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.config import ModelConfig, RopeScaling, from_meta_params
from llama3_np.errors import Llama3Error
from llama3_np.formats import as_float32
from llama3_np.tokenizer import Tokenizer, load_tokenizer
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    write_llama_gguf)
from tests.checkpoints.hf import write_hf_checkpoint
from tests.checkpoints.meta import write_meta_checkpoint, write_torch_zip
from tests.tiny import random_weights, tiny_config

EXAMPLES = int(os.environ.get("LLAMA3_NP_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "ffn_dim")

# Small, with every structural feature (GQA, Llama 3.1 scaling in all three frequency
# regimes at head_dim 8, untied output); a 64-token vocabulary keeps each file a few KB.
CONFIG = tiny_config(dim=32, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, bos_id=1,
                     stop_ids=(2, 3), max_seq_len=64, rope_scaling=RopeScaling(factor=8.0))
# Meta's params.json implies Llama 3's special ids, so its vocabulary must be the full
# 128256; dim 16 and tied embeddings keep the file at 4 MB.
META_PARAMS = dict(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=128256,
                   multiple_of=16, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)


@dataclass
class Specimen:
    """A valid tiny checkpoint, the file in it that gets damaged, and what it loads as."""

    root: Path  # what read_checkpoint is given
    target: Path  # the file that is damaged
    original: bytes
    data_ranges: list  # (start, end) byte ranges of `target` that tensor values come from
    config: ModelConfig
    tensors: dict  # canonical name -> float32 copy

    def header_ranges(self) -> list:
        """The byte ranges of `target` outside the tensor data."""
        ranges, position = [], 0
        for start, end in sorted(self.data_ranges):
            if start > position:
                ranges.append((position, start))
            position = max(position, end)
        if position < len(self.original):
            ranges.append((position, len(self.original)))
        return ranges

    def touches_data(self, offsets) -> bool:
        return any(start <= at < end for at in offsets for start, end in self.data_ranges)


def specimen(root: Path, target: Path, data_ranges: list) -> Specimen:
    checkpoint = read_checkpoint(root)
    tensors = {name: as_float32(t).copy() for name, t in checkpoint.tensors.items()}
    return Specimen(root, target, target.read_bytes(), data_ranges, checkpoint.config, tensors)


def replace_file(path: Path, content: bytes) -> None:
    """Write under a new inode (os.replace), so maps of the previous content stay valid."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def load_damaged(s: Specimen, damaged: bytes, changes_values: bool) -> None:
    """The property, for the specimen with its target file replaced by `damaged`."""
    replace_file(s.target, damaged)
    try:
        checkpoint = read_checkpoint(s.root)
    except Llama3Error:
        return
    finally:
        replace_file(s.target, s.original)  # the next example starts from a valid checkpoint
    for field in SHAPE_FIELDS:
        assert getattr(checkpoint.config, field) == getattr(s.config, field), field
    assert checkpoint.tensors.keys() == s.tensors.keys()
    expected = dict(s.tensors)
    if checkpoint.config.tie_embeddings:  # (only config.json can say so for an untied file)
        assert checkpoint.tensors["output.weight"] is checkpoint.tensors["tok_embeddings.weight"]
        expected["output.weight"] = expected["tok_embeddings.weight"]
    for name, original in expected.items():
        tensor = checkpoint.tensors[name]
        assert tuple(tensor.shape) == original.shape, name
        if not changes_values:
            loaded = as_float32(tensor)
            assert np.array_equal(loaded.view(np.uint32), original.view(np.uint32)), name


# ---- the specimens -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def gguf_file(workspace):
    (workspace / "gguf").mkdir()
    path = write_llama_gguf(workspace / "gguf" / "m.gguf", CONFIG, random_weights(CONFIG, 1))
    reader = GGUFReader(path)
    data = [(t.data_offset, t.data_offset + t.n_bytes) for t in reader.tensors]
    return specimen(path, path, data)


@pytest.fixture(scope="module")
def gguf_reader(gguf_file):
    """The gguf package's view of the undamaged file (where each header field lies)."""
    return GGUFReader(gguf_file.target)


@pytest.fixture(scope="module")
def gguf_q8(workspace):
    (workspace / "q8").mkdir()
    path = write_llama_gguf(workspace / "q8" / "m.gguf", CONFIG, random_weights(CONFIG, 2),
                            type_name="Q8_0")
    reader = GGUFReader(path)
    data = [(t.data_offset, t.data_offset + t.n_bytes) for t in reader.tensors]
    return specimen(path, path, data)


@pytest.fixture(scope="module")
def gguf_with_tokenizer(workspace):
    (workspace / "tok").mkdir()
    config = byte_level_model_config(max_seq_len=64)
    path = write_llama_gguf(workspace / "tok" / "m.gguf", config, random_weights(config, 6),
                            metadata=byte_level_tokenizer_metadata())
    reader = GGUFReader(path)
    data = [(t.data_offset, t.data_offset + t.n_bytes) for t in reader.tensors]
    return specimen(path, path, data)


@pytest.fixture(scope="module")
def hf_dir(workspace):
    root = write_hf_checkpoint(workspace / "hf", random_weights(CONFIG, 3), CONFIG)
    target = root / "model.safetensors"
    data = target.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    return specimen(root, target, [(8 + header_size, len(data))])


@pytest.fixture(scope="module")
def hf_sharded(workspace):
    root = write_hf_checkpoint(workspace / "hf2", random_weights(CONFIG, 4), CONFIG, shards=2)
    return specimen(root, root / "model.safetensors.index.json", [])


@pytest.fixture(scope="module")
def meta_dir(workspace):
    config = from_meta_params(META_PARAMS, tie_embeddings=True)
    weights = {name: w for name, w in random_weights(config, 5).items() if name != "output.weight"}
    root = write_meta_checkpoint(workspace / "meta", weights, META_PARAMS)
    target = root / "consolidated.00.pth"
    return specimen(root, target, storage_ranges(target))


def storage_ranges(path: Path) -> list:
    """Each storage record's local zip header and data: where a tensor's values are read."""
    ranges = []
    with zipfile.ZipFile(path) as archive:
        raw = path.read_bytes()
        for info in archive.infolist():
            if "/data/" in info.filename:
                name_length, extra_length = struct.unpack_from("<HH", raw, info.header_offset + 26)
                end = info.header_offset + 30 + name_length + extra_length + info.file_size
                ranges.append((info.header_offset, end))
    return ranges


# ---- damage --------------------------------------------------------------------------------

@st.composite
def bit_flips(draw, s: Specimen):
    """1-3 flipped bits, each anywhere or (as often) outside the tensor data."""
    damaged, offsets = bytearray(s.original), []
    headers = s.header_ranges()
    for _ in range(draw(st.integers(1, 3))):
        if headers and draw(st.booleans()):
            start, end = draw(st.sampled_from(headers))
            at = draw(st.integers(start, end - 1))
        else:
            at = draw(st.integers(0, len(damaged) - 1))
        damaged[at] ^= 1 << draw(st.integers(0, 7))
        offsets.append(at)
    return bytes(damaged), s.touches_data(offsets)


def truncations(s: Specimen):
    return st.integers(0, len(s.original) - 1).map(lambda n: s.original[:n])


# JSON values a damaged or hand-edited file might hold in place of the right one.
json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["BF16", "F16", "F32", "F64", "I8", "4096", "llama3", "default"]),
    st.lists(st.integers(-2, 2**40), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                  st.integers(), max_size=2))


def json_mutations(document: dict):
    """A document with one value replaced (at any depth), deleted, or one key added."""
    def paths(value, prefix=()):
        if isinstance(value, dict):
            for key, item in value.items():
                yield prefix + (key,)
                yield from paths(item, prefix + (key,))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield prefix + (i,)
                yield from paths(item, prefix + (i,))

    all_paths = list(paths(document))

    @st.composite
    def mutate(draw):
        doc = json.loads(json.dumps(document))
        path = draw(st.sampled_from(all_paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
        return doc

    return mutate()


# ---- every format: flipped bits, a file cut short ---------------------------------------------

@pytest.mark.parametrize("fixture", ["gguf_file", "gguf_q8", "hf_dir", "meta_dir"])
def test_bit_flips_and_truncation(request, fixture):
    s = request.getfixturevalue(fixture)

    @FUZZ
    @given(data=st.data())
    def flipped_bits(data):
        damaged, changes_values = data.draw(bit_flips(s))
        load_damaged(s, damaged, changes_values)

    @FUZZ
    @given(damaged=truncations(s))
    def truncated(damaged):
        load_damaged(s, damaged, changes_values=False)

    flipped_bits()
    truncated()


# ---- GGUF ----------------------------------------------------------------------------------

def gguf_header_slots(reader: GGUFReader) -> list:
    """(byte offset, width, role) of every numeric header field: counts, the version, key
    lengths, value types, values, array lengths, tensor ranks, dims, types ("type") and
    data offsets ("offset")."""
    base = reader.data.ctypes.data
    roles = {4: "type", 5: "offset"}  # the parts of a tensor-info field (gguf's reader)
    slots = []
    fields = [(f, {}) for f in reader.fields.values()]
    fields += [(t.field, roles) for t in reader.tensors]
    for field, part_roles in fields:
        for i, part in enumerate(field.parts):
            if part.dtype != np.uint8:  # numbers; the bytes of strings are flipped elsewhere
                width = part.dtype.itemsize
                for k in range(min(part.size, 4)):
                    slots.append((part.ctypes.data - base + k * width, width,
                                  part_roles.get(i, "")))
    return slots


@FUZZ
@given(data=st.data())
def test_gguf_header_fields(gguf_file, gguf_reader, data):
    s = gguf_file
    at, width, role = data.draw(st.sampled_from(gguf_header_slots(gguf_reader)))
    original = int.from_bytes(s.original[at:at + width], "little")
    values = [st.integers(0, 40), st.integers(0, 2**(8 * width) - 1)]
    if role == "offset":  # still aligned: it would read another tensor's bytes unchecked
        values.append(st.integers(-64, 64).map(lambda k: max(original + 32 * k, 0)))
    value = data.draw(st.one_of(values))
    damaged = bytearray(s.original)
    damaged[at:at + width] = value.to_bytes(width, "little")
    # A tensor type of the same width (F16 <-> BF16) reads the same bytes as other values.
    load_damaged(s, bytes(damaged), changes_values=role == "type")


@FUZZ
@given(data=st.data())
def test_gguf_tokenizer_metadata(gguf_with_tokenizer, data):
    """The tokenizer a damaged GGUF describes loads and works, or is refused by name."""
    s = gguf_with_tokenizer
    damaged, _ = data.draw(bit_flips(s))
    replace_file(s.target, damaged)
    try:
        tokenizer = load_tokenizer(read_checkpoint(s.root))
        ids = tokenizer.encode("hello, wörld 42", bos=True)
        assert all(0 <= i < tokenizer.n_vocab for i in ids)
        tokenizer.decode(ids)
    except Llama3Error:
        pass
    finally:
        replace_file(s.target, s.original)


# ---- safetensors -----------------------------------------------------------------------------

def safetensors_parts(raw: bytes) -> tuple:
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + size]), raw[8 + size:]


@st.composite
def shifted_offsets(draw, header: dict) -> dict:
    """One tensor's data_offsets moved together, keeping its span: it would read another
    tensor's bytes if the reader did not check that tensors tile the data."""
    header = json.loads(json.dumps(header))
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    shift = draw(st.integers(-4096, 4096).filter(bool))
    header[name]["data_offsets"] = [n + shift for n in header[name]["data_offsets"]]
    return header


@FUZZ
@given(data=st.data())
def test_safetensors_header_values(hf_dir, data):
    header, tensor_data = safetensors_parts(hf_dir.original)
    damaged_header = data.draw(st.one_of(json_mutations(header), shifted_offsets(header)))
    encoded = json.dumps(damaged_header).encode()
    # A dtype of the same width reads the same bytes as other values.
    changes_values = any(isinstance(entry, dict) and entry.get("dtype") in ("F16", "BF16")
                         and entry.get("dtype") != header.get(name, {}).get("dtype")
                         for name, entry in damaged_header.items())
    load_damaged(hf_dir, struct.pack("<Q", len(encoded)) + encoded + tensor_data, changes_values)


@FUZZ
@given(length=st.one_of(st.integers(0, 10_000), st.integers(0, 2**64 - 1)))
def test_safetensors_header_length(hf_dir, length):
    load_damaged(hf_dir, struct.pack("<Q", length) + hf_dir.original[8:], changes_values=False)


# ---- Meta .pth ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pth_parts(meta_dir):
    """data.pkl and the storages of the specimen, to rebuild a valid zip around a damaged
    pickle (so the damage reaches the unpickler instead of zip's CRC check)."""
    with zipfile.ZipFile(io.BytesIO(meta_dir.original)) as archive:
        names = archive.namelist()
        pickle_name = next(n for n in names if n.endswith("/data.pkl"))
        storages = {n.split("/data/", 1)[1]: archive.read(n) for n in names if "/data/" in n}
        return archive.read(pickle_name), storages


@FUZZ
@given(data=st.data())
def test_pth_damaged_pickle(meta_dir, pth_parts, data):
    pickle_bytes, storages = pth_parts
    damaged = bytearray(pickle_bytes)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        damaged = damaged[:data.draw(st.integers(0, len(damaged)))]
    rebuilt = write_torch_zip(meta_dir.root / "rebuilt.pth", bytes(damaged), storages)
    load_damaged(meta_dir, rebuilt.read_bytes(), changes_values=True)


def zip_header_slots(raw: bytes) -> list:
    """(offset, width) of the numeric fields of every local header, central directory
    entry and the end record: versions, flags, compression, CRC, sizes, lengths, offsets."""
    layouts = {b"PK\x03\x04": (4, [2, 2, 2, 2, 2, 4, 4, 4, 2, 2]),
               b"PK\x01\x02": (4, [2, 2, 2, 2, 2, 2, 4, 4, 4, 2, 2, 2, 2, 2, 4, 4]),
               b"PK\x05\x06": (4, [2, 2, 2, 2, 4, 4, 2])}
    slots = []
    for signature, (start, widths) in layouts.items():
        at = raw.find(signature)
        while at != -1:
            position = at + start
            for width in widths:
                slots.append((position, width))
                position += width
            at = raw.find(signature, at + 1)
    return slots


@FUZZ
@given(data=st.data())
def test_pth_zip_header_fields(meta_dir, data):
    at, width = data.draw(st.sampled_from(zip_header_slots(meta_dir.original)))
    value = data.draw(st.one_of(st.integers(0, 64), st.integers(0, 2**(8 * width) - 1)))
    damaged = bytearray(meta_dir.original)
    damaged[at:at + width] = value.to_bytes(width, "little")
    load_damaged(meta_dir, bytes(damaged), meta_dir.touches_data([at]))


# ---- params.json, config.json, the safetensors index --------------------------------------------

@pytest.mark.parametrize("fixture, name", [("meta_dir", "params.json"),
                                           ("hf_dir", "config.json"),
                                           ("hf_dir", "generation_config.json"),
                                           ("hf_sharded", "model.safetensors.index.json")])
def test_json_files(request, fixture, name):
    root = request.getfixturevalue(fixture).root
    s = specimen(root, root / name, [])
    document = json.loads(s.original)

    @FUZZ
    @given(data=st.data())
    def damaged_values(data):
        text = json.dumps(data.draw(json_mutations(document))).encode()
        load_damaged(s, text, changes_values=False)

    @FUZZ
    @given(data=st.data())
    def damaged_text(data):
        damaged, _ = data.draw(bit_flips(s))
        if data.draw(st.booleans()):
            damaged = damaged[:data.draw(st.integers(0, len(damaged)))]
        load_damaged(s, damaged, changes_values=False)

    damaged_values()
    damaged_text()


# ---- tokenizer.json and tokenizer_config.json ----------------------------------------------------

def hf_tokenizer_documents() -> tuple:
    """A tiny SmolLM2-shaped tokenizer.json (bytes, three merges, digits split off, ChatML
    specials, bos added by the post-processor) and its tokenizer_config.json."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    tokens = [spelling[b] for b in range(256)] + ["he", "ll", "hell"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = {
        "added_tokens": [{"id": 259 + i, "content": name, "special": True}
                         for i, name in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}]},
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [["h", "e"], ["l", "l"], ["he", "ll"]]},
    }
    config = {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"},
              "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>"
                               "{% endfor %}"}
    return tokenizer, config


@FUZZ
@given(data=st.data())
def test_tokenizer_json(workspace, data):
    """A damaged tokenizer.json or tokenizer_config.json gives a tokenizer that works, or a
    Llama3Error; never another exception."""
    tokenizer, config = hf_tokenizer_documents()
    if data.draw(st.booleans()):
        tokenizer = data.draw(json_mutations(tokenizer))
    else:
        config = data.draw(json_mutations(config))
    directory = workspace / "tokenizer_json"
    directory.mkdir(exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    try:
        loaded = Tokenizer.from_hf_tokenizer_json(directory / "tokenizer.json")
        ids = loaded.encode("hello 42", bos=loaded.bos_id is not None)
        loaded.decode(ids)
        if loaded.chat_format is not None:
            loaded.encode_dialog([{"role": "user", "content": "hi"}])
    except Llama3Error:
        pass

