"""GGUF reader: dequantisation, file parsing, names and layout, config, errors, the demo model.

The `gguf` package (llama.cpp's own Python library) is the reference: every decoded
value is compared bit for bit against gguf.quants.dequantize of the same bytes.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize

from llama3_np.checkpoint.gguf import SUPPORTED_TYPES, read_gguf, read_gguf_file
from llama3_np.config import RopeScaling
from llama3_np.errors import CheckpointError, ConfigError
from llama3_np.formats import as_float32
from llama3_np.formats.bf16 import BF16
from llama3_np.formats.gguf_blocks import BLOCK_FORMATS, QuantizedTensor, dequantize
from llama3_np.rope import rope_frequencies
from llama3_np.schema import canonical_shapes
from tests.checkpoints.gguf import (QUANTIZABLE, encode, gguf_name, hf_to_gguf,
                                    llama31_rope_divisors, llama_metadata, meta_to_hf,
                                    random_blocks, write_gguf, write_llama_gguf)
from tests.tiny import random_weights, tiny_config

DEMO = Path(__file__).resolve().parent.parent / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-exact float32 equality (tells -0.0 from 0.0, needs no tolerance)."""
    assert actual.dtype == np.float32 and expected.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def as_stored(config):
    """The config as a GGUF file holds it: the norm epsilon is a float32 value there."""
    return replace(config, norm_eps=float(np.float32(config.norm_eps)))


def small_config(**overrides):
    """TINY with a 512-token vocabulary (fast to quantise) and Llama 3.1 scaling whose
    original context (8192) puts frequencies in all three regimes for head_dim 16."""
    return tiny_config(**{"vocab_size": 512, "bos_id": 1, "stop_ids": (2, 3),
                          "rope_scaling": RopeScaling(factor=8.0), **overrides})


# --- dequantisation ----------------------------------------------------------------

@pytest.mark.parametrize("type_name", sorted(BLOCK_FORMATS))
def test_dequantize_random_blocks_matches_gguf(type_name):
    raw = random_blocks(type_name, rows=5, cols=2 * BLOCK_FORMATS[type_name].values_per_block,
                        rng=np.random.default_rng(1))
    expected = reference_dequantize(raw, GGMLQuantizationType[type_name])
    assert_bits_equal(dequantize(raw, type_name), expected)


@pytest.mark.parametrize("type_name", [t for t in QUANTIZABLE if t in BLOCK_FORMATS])
def test_dequantize_quantized_floats_matches_gguf(type_name):
    w = np.random.default_rng(2).standard_normal((6, 128)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType[type_name])
    decoded = dequantize(raw, type_name)
    assert_bits_equal(decoded, reference_dequantize(raw, GGMLQuantizationType[type_name]))
    # 4-bit quantisation of N(0,1) data: error well under one step (range / 15 ~ 0.5).
    assert np.max(np.abs(decoded - w)) < 0.5


def test_quantized_tensor_protocol():
    raw = random_blocks("Q4_K", rows=4, cols=512, rng=np.random.default_rng(3))
    tensor = QuantizedTensor(raw, "Q4_K")
    assert tensor.shape == (4, 512) and tensor.raw.shape == (4, 2 * 144)
    full = tensor.to_float32()
    picked = tensor.take(np.array([3, 0, 3]))
    assert isinstance(picked, QuantizedTensor) and picked.shape == (3, 512)
    assert_bits_equal(picked.to_float32(), full[[3, 0, 3]])
    assert tensor.take(2).shape == (512,)
    assert_bits_equal(tensor.take(2).to_float32(), full[2])


def test_dequantize_in_chunks_matches_one_pass(monkeypatch):
    """Large tensors are decoded a chunk of blocks at a time; chunk edges must not show."""
    import llama3_np.formats.gguf_blocks as quants
    raw = random_blocks("Q6_K", rows=7, cols=768, rng=np.random.default_rng(4))
    whole = dequantize(raw, "Q6_K")
    monkeypatch.setattr(quants, "_BLOCKS_PER_CHUNK", 4)  # 21 blocks -> 6 chunks, ragged end
    assert_bits_equal(dequantize(raw, "Q6_K"), whole)


# --- one tensor of every supported type, through a file -----------------------------

def _mapped(array) -> bool:
    """True if the array is a view of a memory map, not a copy."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


@pytest.mark.parametrize("type_name", SUPPORTED_TYPES)
def test_each_type_read_from_file_matches_gguf(tmp_path, type_name):
    rng = np.random.default_rng(5)
    rows, cols = 3, 512  # a multiple of every block size
    qtype = GGMLQuantizationType[type_name]
    if type_name in BLOCK_FORMATS:
        raw = random_blocks(type_name, rows, cols, rng)
        stored = (raw, qtype)
        expected = reference_dequantize(raw, qtype)
    else:
        stored = encode(rng.standard_normal((rows, cols)).astype(np.float32), type_name)
        expected = reference_dequantize(stored[0].view(np.uint8), qtype).astype(np.float32)
    path = write_gguf(tmp_path / "one.gguf", {"w": stored})
    tensor = read_gguf_file(path).tensors["w"]

    assert tensor.shape == (rows, cols)
    expected_kind = {"F32": np.ndarray, "F16": np.ndarray, "BF16": BF16}.get(type_name,
                                                                              QuantizedTensor)
    assert isinstance(tensor, expected_kind)
    if type_name in BLOCK_FORMATS:
        assert tensor.ggml_type == type_name and tensor.raw.dtype == np.uint8
    if type_name in ("F32", "F16"):
        assert tensor.dtype == {"F32": np.float32, "F16": np.float16}[type_name]
    backing = tensor.bits if type_name == "BF16" else getattr(tensor, "raw", tensor)
    assert _mapped(backing), "tensor data must stay in the memory map"
    assert_bits_equal(as_float32(tensor), expected)


# --- metadata -------------------------------------------------------------------------

SCALARS = [  # (value type, value written, value expected back)
    (GGUFValueType.UINT8, 200, 200), (GGUFValueType.INT8, -100, -100),
    (GGUFValueType.UINT16, 60000, 60000), (GGUFValueType.INT16, -30000, -30000),
    (GGUFValueType.UINT32, 4_000_000_000, 4_000_000_000),
    (GGUFValueType.INT32, -2_000_000_000, -2_000_000_000),
    (GGUFValueType.FLOAT32, 0.1, float(np.float32(0.1))),
    (GGUFValueType.BOOL, True, True),
    (GGUFValueType.STRING, "héllo ✓ world", "héllo ✓ world"),
    (GGUFValueType.UINT64, 2**63 + 5, 2**63 + 5), (GGUFValueType.INT64, -(2**62), -(2**62)),
    (GGUFValueType.FLOAT64, 0.1, 0.1),
]


def test_metadata_of_every_value_type(tmp_path):
    metadata = {}
    for vtype, value, _ in SCALARS:
        metadata[f"scalar.{vtype.name}"] = (value, vtype)
        metadata[f"array.{vtype.name}"] = ([value, value], GGUFValueType.ARRAY, vtype)
    metadata["array.nested"] = ([[1, 2], [3]], GGUFValueType.ARRAY, GGUFValueType.ARRAY)
    metadata["scalar.false"] = (False, GGUFValueType.BOOL)
    path = write_gguf(tmp_path / "kv.gguf", {"w": encode(np.zeros(4), "F32")}, metadata)

    read = read_gguf_file(path).metadata
    assert read["general.architecture"] == "llama"
    for vtype, _, expected in SCALARS:
        for key, want in ((f"scalar.{vtype.name}", expected),
                          (f"array.{vtype.name}", [expected, expected])):
            assert read[key] == want, key
            items = read[key] if isinstance(want, list) else [read[key]]
            assert all(type(v) is type(expected) for v in items), key  # plain Python values
    assert read["array.nested"] == [[1, 2], [3]]
    assert read["scalar.false"] is False


def test_custom_alignment(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_gguf(tmp_path / "a.gguf", {"first": encode(np.ones(3), "F32"),
                                            "w": encode(w, "F32")}, alignment=64)
    gguf = read_gguf_file(path)
    assert gguf.metadata["general.alignment"] == 64
    np.testing.assert_array_equal(gguf.tensors["w"], w)


# --- a whole Llama model ---------------------------------------------------------------

def test_gguf_qk_layout_is_metas(tmp_path):
    """llama.cpp's converter undoes HF's q/k permutation, so GGUF rows are Meta's: written
    the converter's way from known Meta weights, the file reads back as those weights."""
    config = small_config()
    weights = random_weights(config, seed=6)
    wq = weights["layers.0.attention.wq.weight"]
    assert not np.array_equal(meta_to_hf(wq, config.n_heads), wq)  # the test can fail
    assert np.array_equal(hf_to_gguf(meta_to_hf(wq, config.n_heads), config.n_heads), wq)

    checkpoint = read_gguf(write_llama_gguf(tmp_path / "m.gguf", config, weights))
    for name in ("attention.wq", "attention.wk"):
        np.testing.assert_array_equal(checkpoint.tensors[f"layers.1.{name}.weight"],
                                      weights[f"layers.1.{name}.weight"])


def test_float32_model_round_trips_exactly(tmp_path):
    config = small_config()
    weights = random_weights(config, seed=7)
    checkpoint = read_gguf(write_llama_gguf(tmp_path / "m.gguf", config, weights))

    assert checkpoint.format == "gguf" and checkpoint.tokenizer_file is None
    assert checkpoint.config == as_stored(config)  # every field; scaling from rope_freqs
    assert set(checkpoint.tensors) == set(weights)  # rope_freqs told the config; not kept
    for name, w in weights.items():
        np.testing.assert_array_equal(checkpoint.tensors[name], w, err_msg=name)
    assert checkpoint.metadata["tokenizer.ggml.tokens"][:3] == ["t0", "t1", "t2"]


def test_rope_scaling_read_from_rope_freqs_gives_the_stored_divisors(tmp_path):
    config = small_config()
    checkpoint = read_gguf(write_llama_gguf(tmp_path / "m.gguf", config,
                                            random_weights(config, seed=8)))
    divisors = llama31_rope_divisors(16, 500000.0, 8.0)  # what the file holds
    assert sorted(set(divisors.tolist()))[0] == 1.0 and divisors.max() == 8.0
    assert checkpoint.config.rope_scaling.factor == 8.0
    # plain frequencies / stored divisors = the frequencies the model computes.
    # rtol: the divisors and rope.py compute the blend in float32 in different orders.
    np.testing.assert_allclose(rope_frequencies(16, 500000.0) / divisors,
                               rope_frequencies(16, 500000.0, checkpoint.config.rope_scaling),
                               rtol=1e-6)


def test_rope_freqs_not_llama31_is_refused(tmp_path):
    config = small_config()
    path = write_llama_gguf(tmp_path / "m.gguf", config, random_weights(config, seed=9),
                            metadata={"llama.rope.scaling.original_context_length":
                                      (2048, GGUFValueType.UINT32)})
    with pytest.raises(ConfigError, match="rope_freqs does not match"):
        read_gguf(path)


@pytest.mark.parametrize("type_name", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantized_model_round_trips(tmp_path, type_name):
    config = small_config(tie_embeddings=True)
    weights = random_weights(config, seed=10)
    checkpoint = read_gguf(write_llama_gguf(tmp_path / "m.gguf", config, weights, type_name))

    assert checkpoint.config.tie_embeddings
    assert checkpoint.tensors["output.weight"] is checkpoint.tensors["tok_embeddings.weight"]
    qtype = GGMLQuantizationType[type_name]
    for name, w in weights.items():
        stored = checkpoint.tensors[name]
        assert stored.shape == w.shape, name
        if w.ndim == 1:  # norms stay float32
            np.testing.assert_array_equal(stored, w)
            continue
        expected = reference_dequantize(encode(w, type_name)[0].view(np.uint8), qtype)
        assert_bits_equal(as_float32(stored), expected.astype(np.float32))


def test_k_quant_model_loads(tmp_path):
    """K-quants need rows of 256: a wider tiny model whose matrices are random Q4_K/Q5_K/Q6_K
    blocks (gguf cannot quantise to K-quants), read back bit-exactly under Meta's names."""
    config = small_config(dim=256, ffn_dim=512, n_layers=1, rope_scaling=None)
    rng = np.random.default_rng(11)
    tensors = {}
    for i, (name, shape) in enumerate(canonical_shapes(config).items()):
        if len(shape) == 1:
            tensors[gguf_name(name)] = encode(np.ones(shape), "F32")
        else:
            type_name = K_QUANTS[i % len(K_QUANTS)]
            raw = random_blocks(type_name, *shape, rng)
            tensors[gguf_name(name)] = (raw, GGMLQuantizationType[type_name])
    checkpoint = read_gguf(write_gguf(tmp_path / "k.gguf", tensors, llama_metadata(config)))

    assert checkpoint.config == as_stored(config)
    for name, shape in canonical_shapes(config).items():
        raw, qtype = tensors[gguf_name(name)]
        if qtype is not None:
            assert checkpoint.tensors[name].ggml_type == qtype.name
            assert_bits_equal(checkpoint.tensors[name].to_float32(),
                              reference_dequantize(raw, qtype))


# --- errors ------------------------------------------------------------------------------

@pytest.fixture
def small_file(tmp_path):
    config = small_config(n_layers=1)
    return write_llama_gguf(tmp_path / "m.gguf", config, random_weights(config, seed=13))


def _patched(path: Path, at: int, new: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[at:at + len(new)] = new
    out = path.with_name("patched.gguf")
    out.write_bytes(bytes(data))
    return out


def _tensor_info_at(path: Path, name: str) -> int:
    """Byte position just after a tensor's name in the tensor table (its n_dims field)."""
    data = path.read_bytes()
    encoded = len(name).to_bytes(8, "little") + name.encode()
    return data.index(encoded) + len(encoded)


def test_bad_magic(small_file):
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_gguf(_patched(small_file, 0, b"GGUX"))


@pytest.mark.parametrize("version, message", [(1, "version 1"), (4, "version 4"),
                                              (3 << 24, "big-endian")])
def test_unsupported_version(small_file, version, message):
    with pytest.raises(CheckpointError, match=message):
        read_gguf(_patched(small_file, 4, version.to_bytes(4, "little")))


def test_truncated_anywhere(small_file, tmp_path):
    data = small_file.read_bytes()
    header_end = _tensor_info_at(small_file, "rope_freqs.weight")
    cuts = [0, 3, 10, 23, 100, 5000, header_end - 9, header_end + 5, len(data) - 200, len(data) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            read_gguf(path)


@pytest.mark.parametrize("type_id, named", [(99, "unknown ggml type id 99"),
                                            (10, "ggml type Q2_K")])
def test_unsupported_tensor_type(small_file, type_id, named):
    at = _tensor_info_at(small_file, "blk.0.attn_q.weight") + 4 + 2 * 8  # n_dims, ne[0..1]
    with pytest.raises(CheckpointError, match=named) as caught:
        read_gguf(_patched(small_file, at, type_id.to_bytes(4, "little")))
    assert "'blk.0.attn_q.weight'" in str(caught.value)
    assert "supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K" \
        in str(caught.value)


@pytest.mark.parametrize("offset, message", [(1 << 40, "truncated"), (1, "alignment")])
def test_tensor_offset_out_of_range(small_file, offset, message):
    at = _tensor_info_at(small_file, "blk.0.attn_q.weight") + 4 + 2 * 8 + 4
    with pytest.raises(CheckpointError, match=message):
        read_gguf(_patched(small_file, at, offset.to_bytes(8, "little")))


def test_absurd_shape_is_truncated_not_wrapped(small_file):
    """ne[0] * ne[1] * 4 overflows int64; the size check must still see it is too big."""
    at = _tensor_info_at(small_file, "blk.0.attn_q.weight") + 4  # ne[0]
    with pytest.raises(CheckpointError, match="truncated"):
        read_gguf(_patched(small_file, at, (1 << 62).to_bytes(8, "little")))


def test_other_architecture_refused_by_name(tmp_path):
    path = write_gguf(tmp_path / "q.gguf", {"w": encode(np.zeros(4), "F32")}, arch="qwen2")
    with pytest.raises(CheckpointError, match="architecture 'qwen2'"):
        read_gguf(path)


def test_missing_unknown_and_misshapen_tensors(tmp_path):
    config = small_config(n_layers=1)
    weights = random_weights(config, seed=14)
    without_w2 = {k: v for k, v in weights.items() if k != "layers.0.feed_forward.w2.weight"}
    with pytest.raises(CheckpointError, match="layers.0.feed_forward.w2.weight"):
        read_gguf(write_llama_gguf(tmp_path / "a.gguf", config, without_w2))

    with pytest.raises(CheckpointError, match="'blk.1.attn_q.weight' does not belong"):
        read_gguf(write_llama_gguf(tmp_path / "b.gguf", config,
                                   {**weights, "layers.1.attention.wq.weight":
                                    weights["layers.0.attention.wq.weight"]}))

    narrow = {"llama.feed_forward_length": (128, GGUFValueType.UINT32)}
    with pytest.raises(CheckpointError, match=r"'blk.0.ffn_gate.weight' has shape \(160, 64\)"):
        read_gguf(write_llama_gguf(tmp_path / "c.gguf", config, weights, metadata=narrow))


def test_metadata_of_wrong_type(tmp_path):
    config = small_config(n_layers=1)
    weights = random_weights(config, seed=15)
    path = write_llama_gguf(tmp_path / "m.gguf", config, weights,
                            metadata={"llama.block_count": ("two", GGUFValueType.STRING)})
    with pytest.raises(ConfigError, match="'llama.block_count' should be int"):
        read_gguf(path)


# --- the demo model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    if not DEMO.is_file():
        pytest.skip("demo model missing: run weights/fetch.sh")
    return read_gguf(DEMO)


def test_demo_model_config(demo):
    c = demo.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim) == (576, 30, 9, 3, 1536)
    assert (c.vocab_size, c.head_dim, c.max_seq_len) == (49152, 64, 8192)
    assert c.rope_theta == 100000.0 and c.rope_scaling is None
    assert c.tie_embeddings and c.bos_id == 1 and c.stop_ids == (2,)
    assert np.float32(c.norm_eps) == np.float32(1e-5)


def test_demo_model_tensors(demo):
    t = demo.tensors
    assert t["output.weight"] is t["tok_embeddings.weight"]
    assert isinstance(t["tok_embeddings.weight"], QuantizedTensor)
    assert t["tok_embeddings.weight"].ggml_type == "Q8_0"
    for i in range(30):
        for name in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                     "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
            assert t[f"layers.{i}.{name}.weight"].ggml_type == "Q4_1"
        for name in ("attention_norm", "ffn_norm"):
            assert t[f"layers.{i}.{name}.weight"].dtype == np.float32
    assert t["norm.weight"].dtype == np.float32 and "rope.freqs" not in t


def test_demo_model_agrees_with_gguf_reader(demo):
    """llama.cpp's own Python reader sees the same metadata and the same tensor values."""
    reader = GGUFReader(DEMO)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            assert demo.metadata[key] == field.contents(), key
    by_name = {t.name: t for t in reader.tensors}
    for gguf_name, ours in (("token_embd.weight", "tok_embeddings.weight"),
                            ("blk.7.attn_k.weight", "layers.7.attention.wk.weight"),
                            ("blk.29.ffn_norm.weight", "layers.29.ffn_norm.weight")):
        theirs = by_name[gguf_name]
        rows = slice(0, 64)  # enough to cover many blocks, quick to decode
        expected = reference_dequantize(np.asarray(theirs.data)[rows], theirs.tensor_type)
        stored = demo.tensors[ours]
        got = stored[rows] if isinstance(stored, np.ndarray) else stored.take(rows).to_float32()
        assert_bits_equal(got, expected.astype(np.float32))
