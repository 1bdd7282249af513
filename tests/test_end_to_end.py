"""One tiny random model, written in every format, loaded through llama3_np.load and run
through the Python API and run.py: all formats give the same logits, and generation does
what the sampling options say."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llama3_np
from llama3_np.config import from_meta_params
from tests.checkpoints.gguf import write_llama_gguf
from tests.checkpoints.hf import write_hf_checkpoint
from tests.checkpoints.meta import write_meta_checkpoint
from tests.tiny import random_weights

REPO = Path(__file__).resolve().parents[1]
# Llama 3.1-style params.json in tiny shapes: GQA 4/2, ffn 160, rope scaling, full vocabulary.
PARAMS = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32,
              ffn_dim_multiplier=0.9, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, llama3_tokenizer_path):
    """The same float32 weights as a Meta directory, a HF snapshot and a GGUF file."""
    root = tmp_path_factory.mktemp("formats")
    config = from_meta_params(PARAMS)
    weights = random_weights(config, seed=3)
    meta = write_meta_checkpoint(root / "meta", weights, PARAMS, dtype="float32")
    shutil.copy(llama3_tokenizer_path, root / "meta" / "tokenizer.model")
    hf = write_hf_checkpoint(root / "hf", weights, config, dtype="float32", shards=2)
    (hf / "original").mkdir()
    shutil.copy(llama3_tokenizer_path, hf / "original" / "tokenizer.model")
    gguf = write_llama_gguf(root / "tiny.gguf", config, weights)
    return {"meta": root / "meta", "hf": root / "hf", "gguf": gguf}


@pytest.fixture(scope="module")
def model(checkpoints):
    return llama3_np.load(checkpoints["meta"])


def test_every_format_gives_identical_logits(checkpoints, llama3_tokenizer_path, model):
    tokens = model.tokenizer.encode(PROMPT, bos=True)
    expected = model.forward(tokens)
    for fmt in ("hf", "gguf"):
        other = llama3_np.load(checkpoints[fmt], tokenizer_path=llama3_tokenizer_path)
        assert other.config.dim == model.config.dim
        # Same float32 weights, same arithmetic: bit for bit.
        np.testing.assert_array_equal(other.forward(tokens), expected, err_msg=fmt)


def test_greedy_generation_follows_argmax_step_by_step(checkpoints):
    model = llama3_np.load(checkpoints["meta"])
    completion = model.generate(PROMPT, max_tokens=8)
    tokens = model.tokenizer.encode(PROMPT, bos=True)
    fresh = llama3_np.load(checkpoints["meta"])
    for token in completion.tokens:  # recompute each step from scratch, no cache
        assert token == int(np.argmax(fresh.forward(tokens)[-1]))
        tokens.append(token)
    assert completion.stats.generated_tokens == len(completion.tokens) == 8
    assert completion.text == model.tokenizer.decode(completion.tokens)


def test_same_seed_same_text(model):
    sample = lambda seed: model.generate(PROMPT, max_tokens=12, temperature=1.0, top_p=0.9,
                                         seed=seed).tokens
    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_generation_stops_at_a_stop_token(model):
    tokens = model.tokenizer.encode(PROMPT, bos=True)
    first = int(np.argmax(model.forward(tokens)[-1]))
    completion = model.generate(PROMPT, max_tokens=8, stop_ids=[first])
    assert completion.tokens == [] and completion.stats.stopped_by == "stop token"


def run_py(*args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def test_run_py_streams_a_completion(checkpoints, model):
    result = run_py("--model", checkpoints["hf"], "--max-tokens", 6, PROMPT)
    assert result.returncode == 0, result.stderr
    expected = model.generate(PROMPT, max_tokens=6)
    assert result.stdout == PROMPT + expected.text + "\n"
    summary = result.stderr.strip().splitlines()[-1]
    assert "prompt 6 tokens, generated 6 tokens" in summary
    assert "prefill" in summary and "decode" in summary and "tok/s" in summary


def test_run_py_reports_bad_input_in_one_line(tmp_path):
    result = run_py("--model", tmp_path / "nowhere", PROMPT)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "nowhere" in result.stderr


def test_a_kv_cache_that_cannot_fit_is_refused_before_anything_is_printed(
        checkpoints, monkeypatch, capsys):
    from llama3_np.cli import main

    # 2 layers x (keys, values) x 2 kv heads x 16 x 4 bytes: 512 bytes a position.
    monkeypatch.setattr("llama3_np.kv_cache.available_bytes", lambda: 8192)
    code = main(["--model", str(checkpoints["meta"]), "--max-tokens", "20", PROMPT])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("error: the KV cache for 25 positions needs 12.5 KiB in f32") and \
        "--kv-dtype bf16 (6.2 KiB)" in err and err.count("\n") == 1
    code = main(["--model", str(checkpoints["meta"]), "--max-tokens", "2", PROMPT])
    assert code == 0 and capsys.readouterr().out.startswith(PROMPT)  # 7 positions: fits
