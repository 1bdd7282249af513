"""Bad input never crashes or lies: each mistake a user can make ends in one of the
project's errors, naming the file or value and what is wrong, and run.py turns it into
one line on stderr and a non-zero exit code (--debug shows the traceback).

The cases here are the rows of the README's table of bad inputs. Random damage to each
file format is in test_fuzz_readers.py; hostile pickles in test_meta_reader.py.
"""

import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFValueType

import llama3_np
from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.checkpoint.hf import INDEX_FILE, read_safetensors
from llama3_np.config import from_meta_params
from llama3_np.errors import (CheckpointError, ConfigError, InputError, NonFiniteError,
                              TokenizerError)
from llama3_np.llama import Llama
from llama3_np.perplexity import perplexity
from llama3_np.tokenizer import Tokenizer
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    encode, write_gguf, write_llama_gguf)
from tests.checkpoints.hf import hf_config_json, shard_file_name, write_hf_checkpoint
from tests.checkpoints.meta import write_meta_checkpoint
from tests.tiny import random_weights, tiny_config

REPO = Path(__file__).resolve().parents[1]

# A model that runs end to end in milliseconds, with a 16-token context so that "too long"
# is a short prompt.
RUNNABLE = byte_level_model_config(max_seq_len=16)
# Meta's params.json implies Llama 3's vocabulary; dim 16 and tied embeddings keep it at 4 MB.
META_PARAMS = dict(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=128256,
                   multiple_of=16, rope_theta=500000.0)
HF_CONFIG = tiny_config(dim=32, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, bos_id=1,
                        stop_ids=(2,), max_seq_len=64)


@pytest.fixture(scope="module")
def runnable(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runnable") / "tiny.gguf"
    return write_llama_gguf(path, RUNNABLE, random_weights(RUNNABLE, seed=1),
                            metadata=byte_level_tokenizer_metadata())


@pytest.fixture(scope="module")
def model(runnable):
    return llama3_np.load(runnable)


def meta_weights(params: dict) -> dict:
    config = from_meta_params(params, tie_embeddings=True)
    return {k: w for k, w in random_weights(config, seed=2).items() if k != "output.weight"}


# ---- params.json / config.json ----------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('{"dim": 4096,', r"params\.json is not valid JSON"),
    ("[1, 2]", r"params\.json is not a JSON object"),
    ("[" * 100_000, r"params\.json is not valid JSON \(RecursionError"),
    ('{"dim": ' + "9" * 5000 + "}", r"params\.json is not valid JSON \(ValueError"),
    (b'{"dim": "\xff"}', r"params\.json is not valid JSON"),
], ids=["cut-short", "not-object", "nested-too-deep", "5000-digit-number", "not-utf8"])
def test_params_json_that_is_not_a_json_object(tmp_path, text, message):
    (tmp_path / "params.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    torch.save({"x": torch.ones(1)}, tmp_path / "consolidated.00.pth")
    with pytest.raises(ConfigError, match=message):
        read_checkpoint(tmp_path)


GOOD_PARAMS = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                   multiple_of=1024, ffn_dim_multiplier=1.3, norm_eps=1e-5,
                   rope_theta=500000.0, use_scaled_rope=True)


@pytest.mark.parametrize("change, message", [
    ({"dim": "4096"}, r"'dim' should be int, got '4096'"),
    ({"n_layers": -2}, r"n_layers must be a positive integer in .*params\.json, got -2"),
    ({"n_heads": 0}, r"n_heads must be a positive integer .* got 0"),
    ({"n_heads": 48}, r"n_heads \(48\) x head_dim \(85\) != dim \(4096\)"),
    ({"n_kv_heads": 0}, r"n_kv_heads must be a positive integer .* got 0"),
    ({"n_kv_heads": 5}, r"n_heads \(32\) is not a multiple of n_kv_heads \(5\)"),
    ({"n_layers": 2.0}, r"'n_layers' should be int, got 2\.0"),
    ({"norm_eps": "1e-5"}, r"'norm_eps' should be float, got '1e-5'"),
    ({"norm_eps": -1e-5}, r"norm_eps must be a positive number .* got -1e-05"),
    ({"rope_theta": float("inf")}, r"rope_theta must be a positive number .* got inf"),
    ({"rope_theta": float("nan")}, r"rope_theta must be a positive number .* got nan"),
    ({"use_scaled_rope": "yes"}, r"'use_scaled_rope' should be bool"),
    ({"multiple_of": 0}, r"multiple_of \(0\) .* must be positive"),
    ({"ffn_dim_multiplier": float("inf")}, r"ffn_dim_multiplier \(inf\) must be positive"),
    ({"dim": 10 ** 400}, r"dim 1000.* is too large"),
    ({"vocab_size": -1}, r"vocab_size is -1 \(a Llama 2 era params\.json\)"),
    ({"vocab_size": 1000}, r"special token id 128000 is outside the vocabulary \(size 1000\)"),
    ({"dim": None}, r"params\.json has no 'dim'"),
], ids=lambda v: str(v)[:40])
def test_params_json_with_wrong_values(tmp_path, change, message):
    params = {k: v for k, v in {**GOOD_PARAMS, **change}.items() if v is not None}
    (tmp_path / "params.json").write_text(json.dumps(params))
    torch.save({"x": torch.ones(1)}, tmp_path / "consolidated.00.pth")
    with pytest.raises(ConfigError, match=message) as error:
        read_checkpoint(tmp_path)
    assert str(tmp_path / "params.json") in str(error.value)


@pytest.mark.parametrize("change, error, message", [
    ({"hidden_size": "32"}, ConfigError, r"'hidden_size' should be int, got '32'"),
    ({"num_attention_heads": 3}, ConfigError, r"n_heads \(3\) x head_dim \(8\) != dim \(32\)"),
    ({"head_dim": None, "num_attention_heads": 5}, ConfigError,
     r"n_heads \(5\) x head_dim \(6\) != dim \(32\)"),
    ({"num_key_value_heads": 3}, ConfigError, r"not a multiple of n_kv_heads \(3\)"),
    ({"model_type": "mistral"}, ConfigError, r"model_type 'mistral' is not a Llama model"),
    ({"rope_scaling": "llama3"}, ConfigError, r"'rope_scaling' should be dict"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ConfigError,
     r"rope type 'yarn' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3"}}, ConfigError, r"rope scaling has no 'factor'"),
    ({"rms_norm_eps": float("nan")}, ConfigError, r"norm_eps must be a positive number"),
    ({"tie_word_embeddings": "false"}, ConfigError, r"'tie_word_embeddings' should be bool"),
    ({"eos_token_id": ["</s>"]}, ConfigError, r"'eos_token_id' should be a token id or a list"),
    ({"bos_token_id": 999}, ConfigError, r"special token id 999 is outside the vocabulary"),
], ids=lambda v: str(v)[:40])
def test_config_json_with_wrong_values(tmp_path, change, error, message):
    config = {**hf_config_json(HF_CONFIG, tied=False, dtype="float32"), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=message) as raised:
        read_checkpoint(tmp_path)
    assert str(tmp_path / "config.json") in str(raised.value)


def test_generation_config_with_wrong_values_is_named(tmp_path):
    write_hf_checkpoint(tmp_path, random_weights(HF_CONFIG), HF_CONFIG)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": "2"}')
    with pytest.raises(ConfigError, match=r"generation_config\.json: 'eos_token_id' should be"):
        read_checkpoint(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 2')
    with pytest.raises(ConfigError, match=r"generation_config\.json is not valid JSON"):
        read_checkpoint(tmp_path)


def test_bogus_layer_count_fails_fast(tmp_path):
    """A layer count of a billion is refused by name, before any tensor name is built."""
    write_meta_checkpoint(tmp_path, meta_weights(META_PARAMS), {**META_PARAMS,
                                                                "n_layers": 10 ** 9})
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"n_layers 1000000000 is beyond any real model "
                                          r"\(at most 1024\) in .*params\.json"):
        read_checkpoint(tmp_path)
    assert time.perf_counter() - start < 5  # seconds; building the names would take minutes


# ---- the weight files --------------------------------------------------------------------------

def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such file"):
        read_checkpoint(tmp_path / "nope")


def test_directory_without_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no checkpoint found \(expected params\.json"):
        read_checkpoint(tmp_path)


def test_directory_with_only_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(HF_CONFIG, False, "bf16")))
    with pytest.raises(CheckpointError, match=r"has neither model\.safetensors nor model\."):
        read_checkpoint(tmp_path)


def test_meta_tensor_the_model_does_not_use(tmp_path):
    weights = {**meta_weights(META_PARAMS), "layers.0.attention.wq.bias": np.zeros(16, np.float32)}
    write_meta_checkpoint(tmp_path, weights, META_PARAMS)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: tensor "
                                              r"'layers\.0\.attention\.wq\.bias' does not belong"):
        read_checkpoint(tmp_path)


def test_meta_tensor_of_integers(tmp_path):
    write_meta_checkpoint(tmp_path, meta_weights(META_PARAMS), META_PARAMS)
    state = torch.load(tmp_path / "consolidated.00.pth")
    state["norm.weight"] = torch.ones(16, dtype=torch.int64)
    torch.save(state, tmp_path / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"norm\.weight is int64; expected bfloat16"):
        read_checkpoint(tmp_path)


def test_meta_shards_that_hold_different_tensors(tmp_path):
    write_meta_checkpoint(tmp_path, meta_weights(META_PARAMS), META_PARAMS, n_shards=2)
    state = torch.load(tmp_path / "consolidated.01.pth")
    del state["layers.1.ffn_norm.weight"]
    torch.save(state, tmp_path / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth has no tensor "
                                              r"'layers\.1\.ffn_norm\.weight', which "
                                              r"consolidated\.00\.pth has"):
        read_checkpoint(tmp_path)


def test_zip_header_naming_another_member(tmp_path):
    write_meta_checkpoint(tmp_path, meta_weights(META_PARAMS), META_PARAMS)
    shard = tmp_path / "consolidated.00.pth"
    raw = bytearray(shard.read_bytes())
    at = raw.index(b"consolidated.00/data/0PK"[:-2])  # the first storage's local header name
    raw[at + len("consolidated.00/data/")] = ord("9")
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"zip header of consolidated\.00/data/0 names "
                                              r"another file"):
        read_checkpoint(tmp_path)


def safetensors_file(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


F32 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("header, data, message", [
    ({"a": {**F32, "data_offsets": [0, 8]}, "b": {**F32, "data_offsets": [0, 8]}}, bytes(16),
     r"tensor 'b' starts at data byte 0, but the previous tensor ends at 8"),
    ({"a": {**F32, "data_offsets": [8, 16]}}, bytes(16),
     r"tensor 'a' starts at data byte 8, but the previous tensor ends at 0"),
    ({"a": {**F32, "data_offsets": [0, 8]}}, bytes(12),
     r"the tensors end at data byte 8, but the file holds 12 data bytes"),
    ({"a": {**F32, "dtype": ["F32"], "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'a' has dtype \['F32'\]"),
    ({"a": {**F32, "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8),
     r"tensor 'a' has an invalid shape \[2\.0\]"),
    ({"a": {**F32, "data_offsets": [0, 2 ** 70]}}, bytes(8),
         r"has invalid data_offsets \[0, 1180591620717411303424\]"),
], ids=["overlap", "gap", "trailing-bytes", "dtype-list", "float-shape", "huge-offset"])
def test_safetensors_layout_errors(tmp_path, header, data, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_file(header, data))
    with pytest.raises(CheckpointError, match=message) as error:
        read_safetensors(path)
    assert str(path) in str(error.value)


def test_safetensors_index_that_omits_a_tensor(tmp_path):
    write_hf_checkpoint(tmp_path, random_weights(HF_CONFIG), HF_CONFIG, shards=2)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    del index["weight_map"]["lm_head.weight"]  # else the model would silently become tied
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"holds tensor 'lm_head\.weight', which "
                                              r"model\.safetensors\.index\.json does not list"):
        read_checkpoint(tmp_path)


def test_safetensors_index_naming_a_missing_shard(tmp_path):
    write_hf_checkpoint(tmp_path, random_weights(HF_CONFIG), HF_CONFIG, shards=2)
    (tmp_path / shard_file_name(2, 2)).unlink()
    with pytest.raises(CheckpointError, match=rf"shard {shard_file_name(2, 2)} named in "
                                              rf".*{INDEX_FILE} is missing"):
        read_checkpoint(tmp_path)


def test_gguf_tensor_offsets_must_follow_each_other(runnable, tmp_path):
    raw = bytearray(runnable.read_bytes())
    name = b"output_norm.weight"
    at = raw.index(len(name).to_bytes(8, "little") + name) + 8 + len(name) + 4 + 8 + 4
    offset = int.from_bytes(raw[at:at + 8], "little")
    raw[at:at + 8] = (offset + 32).to_bytes(8, "little")  # aligned, in the file: another's bytes
    path = tmp_path / "moved.gguf"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"tensor 'output_norm\.weight' has data offset "
                                              rf"{offset + 32}, but the tensors before it end "
                                              rf"at {offset}"):
        read_checkpoint(path)


def test_gguf_arrays_nested_too_deep(tmp_path):
    nested = [1]
    for _ in range(9):
        nested = [nested]
    types = (GGUFValueType.ARRAY, GGUFValueType.ARRAY)
    path = write_gguf(tmp_path / "deep.gguf", {"w": encode(np.zeros(4), "F32")},
                      {"deep": (nested, *types)})
    with pytest.raises(CheckpointError, match=r"metadata 'deep' nests arrays more than 8 deep"):
        read_checkpoint(path)


# ---- lengths that would make a reader load gigabytes before finding out ----------------------
# Each file is made large (sparse, so it takes no disk) so that only the length check,
# not the end of the file, stops the read.

def grow_sparse(path: Path, size: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def test_safetensors_header_over_the_libraries_limit(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    grow_sparse(path, 300_000_000)
    with pytest.raises(CheckpointError, match=r"header length 200000000 is over the "
                                              r"safetensors limit of 100000000 bytes"):
        read_safetensors(path)


@pytest.mark.parametrize("key, value, vtype, length, message", [
    ("general.name", "tiny", (GGUFValueType.STRING,), 1 << 31,
     r"metadata 'general\.name' claims a length of 2147483648 \(at most 67108864"),
    ("tokenizer.ggml.scores", [0.5], (GGUFValueType.ARRAY, GGUFValueType.FLOAT32), 1 << 28,
     r"metadata 'tokenizer\.ggml\.scores' claims a length of 268435456 \(at most 16777216"),
])
def test_gguf_lengths_beyond_plausible(tmp_path, key, value, vtype, length, message):
    path = write_gguf(tmp_path / "big.gguf", {"w": encode(np.zeros(4), "F32")},
                      {key: (value, *vtype)})
    raw = bytearray(path.read_bytes())
    at = raw.index(len(key).to_bytes(8, "little") + key.encode()) + 8 + len(key) + 4
    at += 4 if vtype[0] == GGUFValueType.ARRAY else 0  # an array's element type comes first
    raw[at:at + 8] = length.to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    grow_sparse(path, 4 << 30)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_pth_pickle_claiming_gigabytes(tmp_path):
    write_meta_checkpoint(tmp_path, meta_weights(META_PARAMS), META_PARAMS)
    shard = tmp_path / "consolidated.00.pth"
    raw = bytearray(shard.read_bytes())
    name = b"consolidated.00/data.pkl"
    entry = raw.rindex(b"PK\x01\x02", 0, raw.rindex(name))  # its central directory entry
    raw[entry + 24:entry + 28] = (3_000_000_000).to_bytes(4, "little")  # uncompressed size
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"data\.pkl claims 3000000000 bytes"):
        read_checkpoint(tmp_path)


def test_gguf_metadata_of_the_wrong_type(tmp_path):
    path = write_llama_gguf(tmp_path / "m.gguf", RUNNABLE, random_weights(RUNNABLE),
                            metadata={"llama.context_length": ("16", GGUFValueType.STRING)})
    with pytest.raises(ConfigError, match=r"'llama\.context_length' should be int, got '16'"):
        read_checkpoint(path)


# ---- the tokenizer ---------------------------------------------------------------------------

def test_tokenizer_model_with_the_wrong_number_of_ranks(runnable, llama3_tokenizer_path,
                                                        tmp_path):
    short = tmp_path / "tokenizer.model"
    short.write_bytes(b"\n".join(llama3_tokenizer_path.read_bytes().splitlines()[:500]))
    with pytest.raises(TokenizerError, match=r"holds 500 ranks; a Llama 3 tokenizer\.model "
                                             r"has exactly 128000"):
        llama3_np.load(runnable, tokenizer_path=short)


def test_tokenizer_model_that_is_binary_junk(runnable, tmp_path):
    junk = tmp_path / "tokenizer.model"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TokenizerError, match=r"tokenizer\.model line 1: expected"):
        llama3_np.load(runnable, tokenizer_path=junk)


def gguf_tokenizer_metadata(**changes) -> dict:
    metadata = {key: value for key, (value, *_) in byte_level_tokenizer_metadata().items()}
    return {**metadata, **{f"tokenizer.ggml.{k}": v for k, v in changes.items()}}


@pytest.mark.parametrize("changes, message", [
    (dict(add_bos_token="no"), r"'tokenizer\.ggml\.add_bos_token' should be bool, got 'no'"),
    (dict(pre=["gpt-2"]), r"'tokenizer\.ggml\.pre' should be str"),
    (dict(tokens=list(range(259))), r"tokenizer\.ggml\.tokens must be strings"),
    (dict(token_type=["1"] * 259), r"token_type integers"),
    (dict(bos_token_id="257"), r"bos token id '257' is outside the vocabulary"),
], ids=lambda v: str(v)[:30])
def test_gguf_tokenizer_metadata_of_the_wrong_type(changes, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_gguf_metadata(gguf_tokenizer_metadata(**changes), "m.gguf")


def test_tokenizer_json_of_an_unexpected_shape(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                "pre_tokenizer": "ByteLevel"}))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json .* has an unexpected structure "
                                             r"\(AttributeError"):
        Tokenizer.from_hf_tokenizer_json(path)


# ---- run-time input ------------------------------------------------------------------------------

def test_prompt_longer_than_the_context(model):
    with pytest.raises(InputError, match=r"the prompt has 21 tokens; with 0 already in "
                                         r"context that fills the 16-token context window"):
        model.generate("x" * 20, max_tokens=1)


def test_prompt_that_exactly_fills_the_context_is_refused_too(model):
    with pytest.raises(InputError, match="the prompt has 16 tokens"):
        model.generate("x" * 15, max_tokens=1)  # no room left for a single new token


@pytest.mark.parametrize("tokens, message", [
    ([257, 259], r"token id 259 is outside the vocabulary \(size 259\)"),
    ([257, -1], r"token id -1 is outside the vocabulary"),
])
def test_token_ids_outside_the_vocabulary(model, tokens, message):
    with pytest.raises(InputError, match=message):
        model.generate(tokens, max_tokens=1)


@pytest.mark.parametrize("options, message", [
    (dict(temperature=-0.5), r"temperature must be a finite number >= 0, got -0\.5"),
    (dict(temperature=float("nan")), r"temperature must be a finite number >= 0, got nan"),
    (dict(top_p=0.0), r"top-p must be in \(0, 1\], got 0\.0"),
    (dict(top_p=1.5), r"top-p must be in \(0, 1\], got 1\.5"),
    (dict(top_k=-3), r"top-k must be an integer >= 0 \(0 = off\), got -3"),
    (dict(seed=1.5), r"seed must be a non-negative integer, got 1\.5"),
    (dict(seed="42"), r"seed must be a non-negative integer, got '42'"),
    (dict(max_tokens=0), r"max-tokens must be a positive integer, got 0"),
], ids=lambda v: str(v)[:30])
def test_invalid_generation_options(model, options, message):
    options = {"max_tokens": 4, **options}
    with pytest.raises(InputError, match=message):
        model.generate("hi", **options)


def test_empty_prompt_completes_from_the_beginning_of_text_token(model):
    """With a bos token an empty prompt is [bos], and the first token is the model's own
    greedy choice after bos (or generation stops at once if that choice is eos)."""
    completion = model.generate("", max_tokens=1)
    assert completion.stats.prompt_tokens == 1
    fresh = Llama(model.config, model.weights, model.tokenizer)
    expected = int(np.argmax(fresh.forward([RUNNABLE.bos_id])[-1]))
    if expected in RUNNABLE.stop_ids:
        assert completion.tokens == [] and completion.stats.stop_token == expected
    else:
        assert completion.tokens == [expected]


def test_empty_prompt_without_a_bos_token_is_refused(model):
    no_bos = Tokenizer.from_gguf_metadata(gguf_tokenizer_metadata(add_bos_token=False), "m.gguf")
    with pytest.raises(InputError, match=r"the prompt is empty \(and this tokenizer adds "
                                         r"no beginning-of-text token"):
        Llama(model.config, model.weights, no_bos).generate("", max_tokens=1)


# ---- run.py: one line on stderr, a non-zero exit code ---------------------------------------

def run_py(*args, stdin: bytes = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)],
                          capture_output=True, input=stdin, cwd=REPO, timeout=120)


def assert_one_line_error(result, *fragments: str, exit_code: int = 1) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == exit_code, stderr
    assert len(stderr.splitlines()) == 1 and stderr.endswith("\n"), stderr
    assert stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, stderr
    return stderr


def only_config(tmp_path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(HF_CONFIG, False, "bf16")))
    return tmp_path


def junk_file(tmp_path) -> Path:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x00\xff junk\n")
    return path


def truncated_gguf(runnable, tmp_path) -> Path:
    path = tmp_path / "cut.gguf"
    path.write_bytes(runnable.read_bytes()[:5000])
    return path


def corrupt_safetensors(tmp_path) -> Path:
    directory = write_hf_checkpoint(tmp_path / "hf", random_weights(HF_CONFIG), HF_CONFIG)
    raw = bytearray((directory / "model.safetensors").read_bytes())
    raw[20] ^= 0x80  # inside the JSON header: no longer UTF-8
    (directory / "model.safetensors").write_bytes(bytes(raw))
    return directory


def malicious_pth(tmp_path) -> Path:
    from tests.checkpoints.meta import write_torch_zip

    directory = tmp_path / "meta"
    directory.mkdir()
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    marker = tmp_path / "marker"
    write_torch_zip(directory / "consolidated.00.pth",
                    f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode())
    return directory


@pytest.mark.parametrize("case, args, fragments", [
    ("missing path", lambda t, r: ["--model", t / "nope", "hi"], ["nope: no such file"]),
    ("only config.json", lambda t, r: ["--model", only_config(t), "hi"],
     ["has neither model.safetensors"]),
    ("truncated gguf", lambda t, r: ["--model", truncated_gguf(r, t), "hi"],
     ["cut.gguf is truncated"]),
    ("corrupt safetensors", lambda t, r: ["--model", corrupt_safetensors(t), "hi"],
     ["model.safetensors: the safetensors header is not valid JSON"]),
    ("malicious pth", lambda t, r: ["--model", malicious_pth(t), "hi"],
     ["refuses to load global posix.system"]),
    ("bad temperature", lambda t, r: ["--model", r, "--temperature", "-1", "hi"],
     ["temperature must be a finite number >= 0, got -1.0"]),
    ("bad top-p", lambda t, r: ["--model", r, "--top-p", "1.5", "hi"], ["top-p must be in"]),
    ("too-long prompt", lambda t, r: ["--model", r, "x" * 40],
     ["the prompt has 41 tokens", "16-token context window"]),
    ("broken tokenizer", lambda t, r: ["--model", r, "--tokenizer", junk_file(t), "hi"],
     ["tokenizer.model line 1: expected"]),
    ("no prompt", lambda t, r: ["--model", r], ["no prompt given"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_run_py_prints_one_line_and_exits_1(runnable, tmp_path, case, args, fragments):
    result = run_py(*args(tmp_path, runnable))
    assert_one_line_error(result, *fragments)
    assert result.stdout == b""  # refused before anything is printed
    assert not (tmp_path / "marker").exists()


def test_run_py_debug_shows_the_traceback(tmp_path):
    result = run_py("--debug", "--model", tmp_path / "nope", "hi")
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert stderr.startswith("Traceback (most recent call last):")
    assert "llama3_np.errors.CheckpointError:" in stderr and "nope: no such file" in stderr


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "warm", "hi"], "argument --temperature: invalid float value: 'warm'"),
    (["--seed", "1.5", "hi"], "argument --seed: invalid int value: '1.5'"),
    (["--max-tokens", "many", "hi"], "argument --max-tokens: invalid int value: 'many'"),
    (["--dtype", "f64", "hi"], "argument --dtype: invalid choice: 'f64'"),
])
def test_run_py_options_that_do_not_parse(args, fragment):
    """argparse's errors are one line too; exit code 2 marks an unparsable command line."""
    assert_one_line_error(run_py(*args), fragment, "see run.py --help", exit_code=2)


def test_run_py_caps_max_tokens_at_the_context_with_a_notice(runnable):
    result = run_py("--model", runnable, "--max-tokens", "100", "hi")
    stderr = result.stderr.decode().splitlines()
    assert result.returncode == 0, stderr
    assert stderr[0] == ("note: --max-tokens 100 capped to 13: the prompt's 3 tokens leave 13 "
                         "of the 16-token context")
    generated = int(re.search(r"generated (\d+) tokens", stderr[-1])[1])
    assert generated <= 13


def test_run_py_does_not_warn_when_max_tokens_fits(runnable):
    result = run_py("--model", runnable, "--max-tokens", "13", "hi")
    assert result.returncode == 0
    assert len(result.stderr.decode().splitlines()) == 1  # the summary only


def test_run_py_empty_prompt_starts_from_bos(runnable):
    result = run_py("--model", runnable, "--max-tokens", "2", "")
    assert result.returncode == 0, result.stderr
    assert re.match(r"prompt 1 tokens, generated [0-2] tokens", result.stderr.decode())


def test_run_py_stdin_that_is_not_utf8(runnable):
    assert_one_line_error(run_py("--model", runnable, "-", stdin=b"caf\xe9\n"),
                          "standard input is not UTF-8 text")


def test_run_py_prompt_argument_that_is_not_utf8(runnable):
    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")  # as Python hands such bytes over
    assert_one_line_error(run_py("--model", runnable, latin1), "the prompt is not UTF-8 text")


LATIN1 = b"caf\xe9".decode("utf-8", "surrogateescape")  # as Python hands such bytes over


@pytest.mark.parametrize("args, stdin, fragment", [
    (["ppl", "-"], b"caf\xe9 au lait\n", "standard input is not UTF-8 text"),
    (["chat", "--max-tokens", "2", "--message", LATIN1], None, "the message is not UTF-8 text"),
    (["chat", "--max-tokens", "2", "--system", LATIN1], b"hi\n",
     "the system prompt is not UTF-8 text"),
], ids=["ppl-stdin", "chat-message", "chat-system"])
def test_text_that_is_not_utf8_is_refused_everywhere(runnable, args, stdin, fragment):
    """ppl -, chat --message and --system took such bytes silently (as lone surrogates)."""
    result = run_py(*args, "--model", runnable, stdin=stdin)
    assert_one_line_error(result, fragment)
    assert result.stdout == b""


def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(demo_model_path):
    result = run_py("chat", "--model", demo_model_path, "--max-tokens", "2",
                    stdin=b"caf\xe9\nhi\n")
    stderr = result.stderr.decode().splitlines()
    assert result.returncode == 0, stderr
    assert stderr[0].startswith("error: standard input is not UTF-8 text (surrogates not "
                                "allowed at position 3)")
    assert len(result.stdout.decode().splitlines()) == 1  # the reply to "hi" only


@pytest.mark.parametrize("args", [
    ["--max-tokens", "0", "hi"],
    ["chat", "--max-tokens", "-1", "--message", "hi"],
    ["ppl", "-", "--ctx", "1"],
], ids=["complete", "chat", "ppl"])
def test_options_are_checked_before_loading_or_printing(tmp_path, args):
    """Refused only after the model loaded (and the prompt was echoed): here the model does
    not even exist, and the option is what the error names."""
    result = run_py(*args, "--model", tmp_path / "nope", stdin=b"some text")
    assert_one_line_error(result, "must be")
    assert result.stdout == b""


# ---- weights holding NaN or inf ----------------------------------------------------------------

def one_inf(weights: dict) -> str:
    weights["layers.1.feed_forward.w2.weight"][3, 5] = np.inf
    return "layers.1.ffn.out"


def all_nan(weights: dict) -> str:
    for w in weights.values():
        w[...] = np.nan
    return "embeddings"


@pytest.fixture(scope="module", params=[one_inf, all_nan], ids=["one-inf", "all-nan"])
def damaged(request, tmp_path_factory):
    """(a runnable GGUF whose weights hold NaN or inf, the step they first show in)."""
    weights = random_weights(RUNNABLE, seed=1)
    first = request.param(weights)
    path = tmp_path_factory.mktemp("damaged") / "damaged.gguf"
    write_llama_gguf(path, RUNNABLE, weights, metadata=byte_level_tokenizer_metadata())
    return path, first


@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "seed": 0},
                                     {"temperature": 0.8, "top_p": 0.9, "seed": 0}],
                         ids=["greedy", "temperature", "top-p"])
def test_non_finite_logits_stop_generation_naming_the_step(damaged, options):
    """Before: token 0 forever (greedy), no tokens (temperature), an IndexError (top-p)."""
    path, first = damaged
    model = llama3_np.load(path)
    with pytest.raises(NonFiniteError, match=r"NaN or infinite logits at position 0\.\.2; the "
                                             rf"first non-finite value is in {first}:"):
        model.generate("hi", max_tokens=3, **options)


def test_non_finite_logits_stop_perplexity(damaged):
    """Before: `perplexity nan`."""
    path, first = damaged
    model = llama3_np.load(path)
    with pytest.raises(NonFiniteError, match=rf"position 0\.\.7; the first non-finite value "
                                             rf"is in {first}"):
        perplexity(model, list(range(1, 20)), ctx=8)


def test_non_finite_logits_end_run_py_with_one_line(damaged):
    path, first = damaged
    assert_one_line_error(run_py("--model", path, "--max-tokens", "3", "hi"),
                          f"the first non-finite value is in {first}")


# ---- threads and output -------------------------------------------------------------------

def test_run_py_caps_threads_at_the_cores_available(runnable):
    """--threads 1000 started 1001 threads on 2 cores: decode ran 400x slower."""
    from llama3_np.threads import available_cores

    result = run_py("--model", runnable, "--threads", "1000", "--max-tokens", "2", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines()[0] == (
        f"note: --threads 1000 capped to {available_cores()}, the cores available to this "
        "process")
    script = ("import os; from llama3_np.threads import configure_threads; "
              "configure_threads(1000); print(os.environ['OPENBLAS_NUM_THREADS'], "
              "os.environ['NUMBA_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           cwd=REPO, env=env, check=True).stdout.split()
    assert shown == [str(available_cores())] * 2


@pytest.mark.parametrize("args", [
    lambda r, t: ["info", "--model", r],
    lambda r, t: ["--model", r, "--max-tokens", "2", "hi"],
    lambda r, t: ["ppl", t, "--model", r, "--ctx", "8"],
], ids=["info", "complete", "ppl"])
def test_output_errors_are_one_line(runnable, tmp_path, args):
    """`run.py ... > /dev/full` ended in an OSError traceback."""
    text = tmp_path / "text.txt"
    text.write_text("some text to score, long enough for a window or two")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(REPO / "run.py"),
                                 *map(str, args(runnable, text))],
                                stdout=full, stderr=subprocess.PIPE, cwd=REPO, timeout=120)
    assert_one_line_error(result, "error: cannot write to standard output: No space left on "
                                  "device")
