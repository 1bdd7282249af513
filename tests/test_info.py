"""Parameter arithmetic and `run.py info`: counts of the published Llama 3 models from their
configs alone, counts that match real tensors, memory at each precision."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from llama3_np.errors import ConfigError
from llama3_np.info import (COMPONENTS, parameter_counts,
                            read_config_file, weight_bytes)
from llama3_np.kv_cache import kv_bytes_per_position
from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

# Meta's params.json files as published (original/params.json in each Hugging Face repo).
PARAMS_8B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
             "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05,
             "rope_theta": 500000.0}
PARAMS_70B = {"dim": 8192, "ffn_dim_multiplier": 1.3, "multiple_of": 4096, "n_heads": 64,
              "n_kv_heads": 8, "n_layers": 80, "norm_eps": 1e-05, "vocab_size": 128256,
              "rope_theta": 500000.0}
PARAMS_1B = {"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32,
             "n_kv_heads": 8, "n_layers": 16, "norm_eps": 1e-05, "rope_theta": 500000.0,
             "use_scaled_rope": True, "vocab_size": 128256}
PARAMS_3B = {"dim": 3072, "ffn_dim_multiplier": 1.0, "multiple_of": 256, "n_heads": 24,
             "n_kv_heads": 8, "n_layers": 28, "norm_eps": 1e-05, "rope_theta": 500000.0,
             "use_scaled_rope": True, "vocab_size": 128256}
# Hugging Face config.json of Llama 3.2 1B (the fields that matter here).
CONFIG_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
             "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 16,
             "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
             "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
             "tie_word_embeddings": True, "bos_token_id": 128000,
             "eos_token_id": [128001, 128008, 128009],
             "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}

# The published totals (Meta's model cards round them to 8B, 70B, 1.23B, 3.21B).
PUBLISHED = [("8b", PARAMS_8B, "params.json", 8_030_261_248),
             ("70b", PARAMS_70B, "params.json", 70_553_706_496),
             ("1b", PARAMS_1B, "params.json", 1_235_814_400),
             ("1b-hf", CONFIG_1B, "config.json", 1_235_814_400),
             ("3b", PARAMS_3B, "params.json", 3_212_749_824)]


def write_config(tmp_path, doc: dict, name: str):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("label, doc, name, total", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_models_from_their_config_alone(tmp_path, label, doc, name, total):
    counts = parameter_counts(read_config_file(write_config(tmp_path, doc, name)))
    assert counts["total"] == total
    assert sum(counts[c] for c in COMPONENTS) == total


def test_llama3_8b_by_component(tmp_path):
    counts = parameter_counts(read_config_file(write_config(tmp_path, PARAMS_8B, "params.json")))
    layers, dim, kv_dim, ffn, vocab = 32, 4096, 1024, 14336, 128256
    assert counts == {
        "embedding": vocab * dim, "output": vocab * dim,  # separate matrices in 8B
        "attention q": layers * dim * dim, "attention k": layers * kv_dim * dim,
        "attention v": layers * kv_dim * dim, "attention o": layers * dim * dim,
        "ffn gate": layers * ffn * dim, "ffn up": layers * ffn * dim,
        "ffn down": layers * dim * ffn,
        "norms": (2 * layers + 1) * dim, "total": 8_030_261_248}


def test_tied_output_is_counted_once(tmp_path):
    counts = parameter_counts(read_config_file(write_config(tmp_path, PARAMS_1B, "params.json")))
    assert counts["output"] == 0 and counts["embedding"] == 128256 * 2048


@pytest.mark.parametrize("tied", [False, True])
def test_counts_match_the_tensors_of_a_model(tied):
    config = tiny_config(tie_embeddings=tied)
    distinct = {id(w): w for w in random_weights(config).values()}.values()
    assert parameter_counts(config)["total"] == sum(w.size for w in distinct)


def test_counts_match_the_demo_checkpoint(demo_model_path):
    from llama3_np.checkpoint.detect import read_checkpoint

    checkpoint = read_checkpoint(demo_model_path)
    distinct = {id(t): t for t in checkpoint.tensors.values()}
    stored = sum(math.prod(t.shape) for t in distinct.values())
    assert parameter_counts(checkpoint.config)["total"] == stored == 134_515_008


def test_memory_at_each_precision(tmp_path):
    config = read_config_file(write_config(tmp_path, PARAMS_8B, "params.json"))
    counts = parameter_counts(config)
    norms, matrices = counts["norms"], counts["total"] - counts["norms"]
    assert weight_bytes(config, "f32") == 4 * counts["total"]
    assert weight_bytes(config, "bf16") == 2 * matrices + 4 * norms
    # q8: 32 int8 weights and their float32 scale, 36 bytes per block (formats.q8.Q8).
    assert weight_bytes(config, "q8") == matrices // 32 * 36 + 4 * norms
    # keys and values x 32 layers x 8 kv heads x head dim 128, float32.
    assert kv_bytes_per_position(config) == 2 * 32 * 8 * 128 * 4
    assert kv_bytes_per_position(config, "bf16") == 2 * 32 * 8 * 128 * 2


def test_memory_matches_the_converted_weights():
    """weight_bytes agrees with what formats.convert.to_dtype actually keeps in memory."""
    from llama3_np.formats.convert import to_dtype

    config = tiny_config()
    weights = random_weights(config)
    for dtype in ("f32", "bf16", "q8"):
        kept = [to_dtype(w, dtype) for w in weights.values()]
        assert sum(_nbytes(t) for t in kept) == weight_bytes(config, dtype), dtype


def _nbytes(tensor) -> int:
    if isinstance(tensor, np.ndarray):
        return tensor.nbytes
    arrays = {id(v): v for v in vars(tensor).values() if isinstance(v, np.ndarray)}
    # Each buffer once: a form may also hold a view of its own arrays (the kernels' view).
    return sum(v.nbytes for v in arrays.values() if id(v.base) not in arrays)


def test_config_file_errors_are_one_clear_sentence(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_config_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        read_config_file(broken)
    with pytest.raises(ConfigError, match="neither a Meta params.json"):
        read_config_file(write_config(tmp_path, {"layers": 3}, "y.json"))


def run_info(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), "info", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_info_from_a_config_file(tmp_path):
    result = run_info("--config", write_config(tmp_path, PARAMS_8B, "params.json"))
    assert result.returncode == 0, result.stderr
    assert "8,030,261,248" in result.stdout
    assert "theta 500000, no scaling" in result.stdout
    assert "separate input and output matrices" in result.stdout


def test_cli_info_on_the_demo_model(demo_model_path):
    result = run_info("--model", demo_model_path)
    assert result.returncode == 0, result.stderr
    assert "134,515,008" in result.stdout
    assert "Q4_1" in result.stdout and "chat format chatml" in result.stdout
    assert "theta 100000" in result.stdout and "tied" in result.stdout


def test_cli_info_bad_config_is_one_line(tmp_path):
    result = run_info("--config", tmp_path / "nope.json")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "nope.json" in result.stderr
