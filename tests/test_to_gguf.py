"""benchmarks/to_gguf.py, which makes the GGUF files llama.cpp is benchmarked on: the
file must hold the same model, or the comparison measures two different models."""

import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest

import llama3_np
from llama3_np.tokenizer import Tokenizer
from llama3_np.tokenizer.gguf import describe_gguf_metadata
from tests.checkpoints.hf import write_hf_checkpoint
from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

sys.path.insert(0, str(REPO / "benchmarks"))
from to_gguf import gpt2_vocabulary, tiktoken_merges, write_gguf  # noqa: E402

TEXTS = ["Hello world!  The capital of France is Paris.",
         ".:.:.:.: 12345 1234567 ünïcödé 日本語  \n\n\t x",
         "def f(x):\n    return x**2  # squares   ",
         "<|begin_of_text|> is text here, not a special token"]


def test_merges_of_a_small_bpe_are_every_split_in_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert tiktoken_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_llama3_vocabulary_spelled_for_gguf_encodes_as_tiktoken(llama3_tokenizer_path):
    vocabulary = gpt2_vocabulary(llama3_tokenizer_path)
    assert len(vocabulary["tokens"]) == 128256
    assert len(vocabulary["merges"]) == 280147  # as in Meta's Llama 3 tokenizer.json
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
                "tokenizer.ggml.tokens": vocabulary["tokens"],
                "tokenizer.ggml.token_type": vocabulary["types"],
                "tokenizer.ggml.merges": vocabulary["merges"]}
    from_gguf = Tokenizer(describe_gguf_metadata(metadata, "test"))
    reference = Tokenizer.from_tiktoken_file(llama3_tokenizer_path)
    for text in TEXTS:
        assert from_gguf.encode(text) == reference.encode(text), text
    assert from_gguf.encode("<|eot_id|>", allow_special=True) == [128009]


@pytest.mark.parametrize("file_type, dtype", [("F32", "f32"), ("BF16", "bf16")])
@pytest.mark.parametrize("tied", [False, True])
def test_gguf_holds_the_same_model(tmp_path, llama3_tokenizer_path, file_type, dtype, tied):
    """The GGUF file gives the logits of the checkpoint it was written from, exactly."""
    config = tiny_config(tie_embeddings=tied)
    folder = write_hf_checkpoint(tmp_path / "hf", random_weights(config), config, tied=tied)
    shutil.copy(llama3_tokenizer_path, folder / "tokenizer.model")
    gguf = write_gguf(folder, tmp_path / "model.gguf", file_type)
    original = llama3_np.load(folder, dtype=dtype, backend="numpy")
    converted = llama3_np.load(gguf, dtype=dtype, backend="numpy")
    # GGUF holds the epsilon as float32, as llama.cpp does (float32 arithmetic sees no
    # difference: NumPy adds a Python float to float32 values in float32).
    assert converted.config == replace(original.config,
                                       norm_eps=float(np.float32(original.config.norm_eps)))
    tokens = original.tokenizer.encode(TEXTS[0], bos=True)
    assert converted.tokenizer.encode(TEXTS[0], bos=True) == tokens
    np.testing.assert_array_equal(converted.forward(tokens, cache=converted.new_cache()),
                                  original.forward(tokens, cache=original.new_cache()))
