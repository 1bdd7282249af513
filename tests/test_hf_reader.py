"""The Hugging Face reader: safetensors parsing, names, q/k order, tying, sharding, errors.

Every comparison is exact: the reader only renames, reorders rows and reinterprets
bytes, so any difference at all is a bug.
"""

import json
import re
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llama3_np.checkpoint.hf import (INDEX_FILE, SINGLE_FILE, read_hf, read_safetensors,
                                     unpermute_qk)
from llama3_np.config import RopeScaling
from llama3_np.errors import CheckpointError
from llama3_np.formats.bf16 import BF16
from llama3_np.schema import canonical_names
from tests.checkpoints.hf import hf_permute, hf_unpermute, shard_file_name, write_hf_checkpoint
from tests.tiny import random_weights, tiny_config


def small_config(**overrides):
    """The tiny model with a 300-token vocabulary, so each checkpoint is ~100 KB."""
    return tiny_config(**{"vocab_size": 300, "bos_id": 256, "stop_ids": (257, 259), **overrides})


def torch_bf16_bits(array: np.ndarray) -> np.ndarray:
    """torch's own float32 -> bfloat16 rounding, as raw bits."""
    return torch.from_numpy(array).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def is_memory_mapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = getattr(array, "base", None)
    return False


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def write_small(tmp_path, weights=None, **kwargs):
    config = small_config()
    return write_hf_checkpoint(tmp_path, weights or random_weights(config), config, **kwargs)


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# --- q/k row order -----------------------------------------------------------------

def test_unpermute_undoes_hf_permute_by_hand():
    # One head of head_dim 4: Meta rows are pairs (re0, im0, re1, im1); HF stores
    # (re0, re1, im0, im1). Rows are labelled by their Meta index.
    hf_rows = np.array([[0], [2], [1], [3]], dtype=np.float32)
    np.testing.assert_array_equal(unpermute_qk(hf_rows, n_heads=1).ravel(), [0, 1, 2, 3])


@pytest.mark.parametrize("n_heads, head_dim, cols", [(4, 16, 64), (2, 16, 64), (3, 8, 40)])
def test_unpermute_inverts_transformers_permute(n_heads, head_dim, cols):
    meta = np.random.default_rng(1).standard_normal((n_heads * head_dim, cols)).astype(np.float32)
    hf = hf_permute(torch.from_numpy(meta), n_heads).numpy()
    assert not np.array_equal(hf, meta)  # the permutation really moves rows
    np.testing.assert_array_equal(unpermute_qk(hf, n_heads), meta)
    # On raw bfloat16 bits: the same rows move, nothing is decoded.
    bits = torch_bf16_bits(meta)
    hf_bits = hf_permute(torch.from_numpy(bits.view(np.int16)), n_heads).numpy().view(np.uint16)
    np.testing.assert_array_equal(unpermute_qk(hf_bits, n_heads), bits)


# --- whole checkpoints -------------------------------------------------------------

@pytest.mark.parametrize("dtype, shards, tied", [
    ("float32", 1, False), ("bfloat16", 1, False), ("float32", 3, False),
    ("bfloat16", 2, False), ("bfloat16", 1, True), ("float32", 2, True),
])
def test_loads_canonical_weights_exactly(tmp_path, dtype, shards, tied):
    config = small_config(tie_embeddings=tied)
    weights = random_weights(config)
    write_hf_checkpoint(tmp_path, weights, config, dtype=dtype, shards=shards, tied=tied)
    assert (tmp_path / INDEX_FILE).exists() == (shards > 1)

    ckpt = read_hf(tmp_path)

    assert ckpt.format == "hf" and ckpt.path == tmp_path
    assert set(ckpt.tensors) == set(canonical_names(config.n_layers)) | {"output.weight"}
    for name, expected in weights.items():
        got = ckpt.tensors[name]
        if dtype == "bfloat16":
            assert isinstance(got, BF16) and got.bits.dtype == np.uint16, name
            np.testing.assert_array_equal(got.bits, torch_bf16_bits(expected), err_msg=name)
        else:
            assert isinstance(got, np.ndarray) and got.dtype == np.float32, name
            np.testing.assert_array_equal(got, expected, err_msg=name)
    embedding = ckpt.tensors["tok_embeddings.weight"]
    assert (ckpt.tensors["output.weight"] is embedding) == tied
    # Loading copies nothing but the reordered q/k rows.
    assert is_memory_mapped(embedding.bits if dtype == "bfloat16" else embedding)


def test_float16_tensors_load_as_float16(tmp_path):
    config = small_config()
    weights = random_weights(config)
    write_hf_checkpoint(tmp_path, weights, config, dtype="float16")

    tensors = read_hf(tmp_path).tensors

    for name in ("layers.1.attention.wk.weight", "layers.0.feed_forward.w2.weight"):
        assert tensors[name].dtype == np.float16
        np.testing.assert_array_equal(tensors[name], weights[name].astype(np.float16))


def test_missing_lm_head_means_tied_even_if_config_says_otherwise(tmp_path):
    config = small_config(tie_embeddings=True)
    write_hf_checkpoint(tmp_path, random_weights(config), config, tied=True)
    edit_json(tmp_path / "config.json", tie_word_embeddings=False)

    ckpt = read_hf(tmp_path)

    assert ckpt.config.tie_embeddings
    assert ckpt.tensors["output.weight"] is ckpt.tensors["tok_embeddings.weight"]


@pytest.mark.parametrize("same_values", [True, False])
def test_lm_head_stored_beside_a_tied_config(tmp_path, same_values):
    """transformers' rule: an lm_head equal to the embedding is tied; one that differs
    is the output matrix, whatever tie_word_embeddings says."""
    config = small_config()
    weights = random_weights(config)
    if same_values:
        weights["output.weight"] = weights["tok_embeddings.weight"].copy()
    write_hf_checkpoint(tmp_path, weights, config, dtype="float32")
    edit_json(tmp_path / "config.json", tie_word_embeddings=True)

    ckpt = read_hf(tmp_path)

    assert ckpt.config.tie_embeddings == same_values
    assert (ckpt.tensors["output.weight"] is ckpt.tensors["tok_embeddings.weight"]) == same_values
    np.testing.assert_array_equal(ckpt.tensors["output.weight"], weights["output.weight"])


@pytest.mark.parametrize("config", [
    tiny_config(),  # Llama 3 vocabulary and special ids, llama3 rope scaling
    small_config(rope_scaling=None, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True),
    small_config(rope_scaling=RopeScaling(factor=32.0, low_freq_factor=2.0,
                                          high_freq_factor=8.0, original_context=128)),
], ids=["llama3", "unscaled-tied", "scaled-32"])
def test_config_round_trip(tmp_path, config):
    write_hf_checkpoint(tmp_path, random_weights(config), config, tied=config.tie_embeddings)
    got = read_hf(tmp_path).config
    assert got == config
    assert got.source == str(tmp_path / "config.json")


def test_tokenizer_file_prefers_metas_tiktoken_file(tmp_path):
    config = small_config()
    write_hf_checkpoint(tmp_path, random_weights(config), config)
    assert read_hf(tmp_path).tokenizer_file is None
    (tmp_path / "tokenizer.json").write_text("{}")
    assert read_hf(tmp_path).tokenizer_file == tmp_path / "tokenizer.json"
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "tokenizer.model").write_text("")
    assert read_hf(tmp_path).tokenizer_file == tmp_path / "original" / "tokenizer.model"


@pytest.mark.parametrize("tied", [False, True])
def test_reads_what_transformers_save_pretrained_writes(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=512,
        rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=257, tie_word_embeddings=tied,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        rope_theta=500000.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    state = model.state_dict()

    ckpt = read_hf(tmp_path)

    assert ckpt.config == small_config(stop_ids=(257,), tie_embeddings=tied)
    n_heads = {"q_proj": hf_config.num_attention_heads, "k_proj": hf_config.num_key_value_heads}
    to_meta = transformers_to_meta(hf_config.num_hidden_layers)
    for name, hf_tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue  # transformers does not save a tied lm_head
        proj = name.split(".")[-2]
        if proj in n_heads:
            hf_tensor = hf_unpermute(hf_tensor, n_heads[proj])
        expected = hf_tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(ckpt.tensors[to_meta[name]].bits, expected, err_msg=name)
    assert (ckpt.tensors["output.weight"] is ckpt.tensors["tok_embeddings.weight"]) == tied


# Written out by hand (not taken from the reader) so the name mapping is checked too.
TRANSFORMERS_TO_META = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
}


def transformers_to_meta(n_layers: int) -> dict:
    names = {}
    for hf, meta in TRANSFORMERS_TO_META.items():
        for i in range(n_layers if "{i}" in hf else 1):
            names[hf.format(i=i)] = meta.format(i=i)
    return names


# --- the safetensors format ---------------------------------------------------------

def test_reads_a_hand_written_file_with_unaligned_offsets(tmp_path):
    # A 3-element bf16 tensor first leaves the f32 and f16 data at odd byte offsets.
    bf16 = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    f16 = np.array([[0.5, -0.25]], dtype=np.float16)
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
        "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [6, 30]},
        "c": {"dtype": "F16", "shape": [1, 2], "data_offsets": [30, 34]},
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [34, 34]},
    }
    data = torch_bf16_bits(bf16).tobytes() + f32.tobytes() + f16.tobytes()
    path = tmp_path / "hand.safetensors"
    path.write_bytes(safetensors_bytes(header, data))

    tensors = read_safetensors(path)

    assert set(tensors) == {"a", "b", "c", "empty"}
    np.testing.assert_array_equal(tensors["a"].to_float32(), bf16)  # exact in bf16
    np.testing.assert_array_equal(tensors["b"], f32)
    np.testing.assert_array_equal(tensors["c"], f16)
    # The safetensors package agrees where it has a NumPy path (not bf16).
    with safe_open(path, framework="numpy") as reference:
        for name in ("b", "c"):
            np.testing.assert_array_equal(tensors[name], reference.get_tensor(name))
    assert tensors["empty"].shape == (0, 4)


ONE_F32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 1000) + b"{}", "runs past the end"),
    (safetensors_bytes(b"{not json"), "not valid JSON"),
    (safetensors_bytes(b"[1, 2]"), "not a JSON object"),
    (safetensors_bytes({"w": {**ONE_F32, "dtype": "Q4"}}, bytes(16)), "'w' has dtype 'Q4'"),
    (safetensors_bytes({"w": {**ONE_F32, "data_offsets": [0, 32]}}, bytes(16)), "'w'.*outside"),
    (safetensors_bytes({"w": {**ONE_F32, "shape": [2, 3]}}, bytes(16)), "'w'.*needs 24"),
    (safetensors_bytes({"w": {**ONE_F32, "shape": [2, -2]}}, bytes(16)), "'w'.*invalid shape"),
    (safetensors_bytes({"w": {"dtype": "F32"}}), "'w' lacks"),
], ids=["short", "header-too-long", "bad-json", "not-object", "dtype", "offsets-range",
        "offsets-vs-shape", "negative-shape", "incomplete"])
def test_bad_safetensors_header_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        read_safetensors(path)
    assert str(path) in str(error.value)


# --- errors ------------------------------------------------------------------------

def test_missing_shard_is_named(tmp_path):
    write_small(tmp_path, shards=3)
    (tmp_path / shard_file_name(2, 3)).unlink()
    with pytest.raises(CheckpointError, match=shard_file_name(2, 3)):
        read_hf(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    weights = random_weights(small_config())
    del weights["layers.1.feed_forward.w3.weight"]
    write_small(tmp_path, weights)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        read_hf(tmp_path)


def test_tensor_missing_from_the_shard_its_index_names(tmp_path):
    write_small(tmp_path, shards=2)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    moved = next(name for name, shard in index["weight_map"].items()
                 if shard == shard_file_name(2, 2))
    index["weight_map"][moved] = shard_file_name(1, 2)
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"model-00001-of-00002.*'{re.escape(moved)}'"):
        read_hf(tmp_path)


def test_wrong_shape_is_refused(tmp_path):
    weights = random_weights(small_config())
    weights["layers.0.feed_forward.w2.weight"] = weights["layers.0.feed_forward.w2.weight"].T
    write_small(tmp_path, weights)
    wrong = r"model\.layers\.0\.mlp\.down_proj\.weight.*\(160, 64\)"
    with pytest.raises(CheckpointError, match=wrong):
        read_hf(tmp_path)


def test_unknown_tensor_is_refused(tmp_path):
    weights = random_weights(small_config())
    weights["layers.2.attention_norm.weight"] = weights["layers.1.attention_norm.weight"]
    write_small(tmp_path, weights)
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.input_layernorm\.weight"):
        read_hf(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        read_hf(tmp_path)
    write_small(tmp_path)
    (tmp_path / SINGLE_FILE).unlink()
    with pytest.raises(CheckpointError, match=SINGLE_FILE):
        read_hf(tmp_path)


def test_bad_header_inside_a_snapshot_names_the_shard(tmp_path):
    write_small(tmp_path, shards=2)
    shard = tmp_path / shard_file_name(2, 2)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=shard_file_name(2, 2)):
        read_hf(tmp_path)
