"""The forward pass: KV cache, grouped-query attention, RoPE, masking, errors."""

import math

import numpy as np
import pytest

from llama3_np.config import RopeScaling
from llama3_np.errors import InputError
from llama3_np.kv_cache import KVCache
from llama3_np.model import Transformer, causal_mask
from llama3_np.rope import RotaryTable, apply_rope, rope_frequencies
from llama3_np.trace import Trace
from tests.tiny import random_weights, tiny_config

TOKENS = [128000, 2028, 374, 264, 1296, 11914, 13, 578, 4062]


def test_kv_cache_decoding_equals_full_recomputation():
    config = tiny_config()
    weights = random_weights(config)
    full = Transformer(config, weights).forward(TOKENS)
    model, cache = Transformer(config, weights), KVCache(config)
    stepped = [model.forward(TOKENS[:4], cache=cache)]  # prefill, then one token at a time
    stepped += [model.forward([t], 4 + i, cache=cache) for i, t in enumerate(TOKENS[4:])]
    stepped = np.concatenate(stepped)
    assert stepped.dtype == np.float32 and stepped.shape == (len(TOKENS), config.vocab_size)
    # Same arithmetic in a different order (matmul shapes differ): float32 rounding only.
    np.testing.assert_allclose(stepped, full, rtol=0, atol=2e-5 * np.abs(full).max())


def test_cache_grows_past_its_first_capacity():
    config = tiny_config()
    weights = random_weights(config)
    tokens = list(np.random.default_rng(0).integers(0, 128000, 300))
    full = Transformer(config, weights).forward(tokens)
    model, cache = Transformer(config, weights), KVCache(config, capacity=8)
    model.forward(tokens[:255], cache=cache)
    steps = [model.forward([t], 255 + i, cache=cache) for i, t in enumerate(tokens[255:])]
    assert cache.capacity >= 300
    np.testing.assert_allclose(np.concatenate(steps), full[255:], atol=2e-5 * np.abs(full).max())


def test_last_only_gives_the_last_row():
    config = tiny_config()
    weights = random_weights(config)
    full = Transformer(config, weights).forward(TOKENS)
    last = Transformer(config, weights).forward(TOKENS, last_only=True)
    assert last.shape == (1, config.vocab_size)
    # BLAS takes a different path for one row than for nine: float32 rounding only.
    np.testing.assert_allclose(last, full[-1:], rtol=0, atol=1e-5 * np.abs(full).max())


def test_grouped_query_attention_equals_repeated_kv_heads():
    """GQA with 2 kv heads == plain multi-head attention whose kv heads are those two,
    each repeated n_rep times in Meta's order (repeat_interleave: head h uses kv h // n_rep)."""
    gqa = tiny_config()
    mha = tiny_config(n_kv_heads=gqa.n_heads)
    weights = random_weights(gqa)
    repeated = dict(weights)
    for i in range(gqa.n_layers):
        for w in ("wk", "wv"):
            name = f"layers.{i}.attention.{w}.weight"
            heads = weights[name].reshape(gqa.n_kv_heads, gqa.head_dim, gqa.dim)
            repeated[name] = np.repeat(heads, gqa.n_rep, axis=0).reshape(-1, gqa.dim)
    np.testing.assert_allclose(Transformer(gqa, weights).forward(TOKENS),
                               Transformer(mha, repeated).forward(TOKENS), rtol=0, atol=1e-5)


def meta_scaled_frequencies(freqs, s: RopeScaling):
    """Meta's apply_scaling, element by element in Python floats, as reference."""
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < s.original_context / s.high_freq_factor:
            out.append(freq)
        elif wavelen > s.original_context / s.low_freq_factor:
            out.append(freq / s.factor)
        else:
            smooth = (s.original_context / wavelen - s.low_freq_factor) / \
                (s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * freq / s.factor + smooth * freq)
    return np.array(out)


@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_llama31_scaling_matches_metas_formula(factor):
    scaling = RopeScaling(factor=factor)
    plain = rope_frequencies(128, 500000.0)
    scaled = rope_frequencies(128, 500000.0, scaling)
    expected = meta_scaled_frequencies(plain, scaling)
    np.testing.assert_allclose(scaled, expected, rtol=3e-7)  # float32 vs float64: 2.5 ulp
    ratio = scaled / plain
    assert ratio[0] == 1 and ratio[-1] == 1 / factor  # fast ones kept, slow ones divided
    assert ((ratio > 1 / factor) & (ratio < 1)).sum() > 0  # and a blend between them


def test_rope_is_a_rotation_of_adjacent_pairs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    freqs = rope_frequencies(16, 10000.0)
    rotated = apply_rope(x, RotaryTable(freqs).rotations(7, 5))
    angle = (7 + np.arange(5))[:, None, None] * freqs[None, None, :]
    re, im = x[..., 0::2], x[..., 1::2]
    np.testing.assert_allclose(rotated[..., 0::2], re * np.cos(angle) - im * np.sin(angle),
                               atol=1e-5)
    np.testing.assert_allclose(rotated[..., 1::2], re * np.sin(angle) + im * np.cos(angle),
                               atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 1, 64)).astype(np.float32)
    table = RotaryTable(rope_frequencies(64, 500000.0))
    score = lambda i, j: float(np.sum(apply_rope(q, table.rotations(i, 1)) *
                                      apply_rope(k, table.rotations(j, 1))))
    assert score(10, 3) == pytest.approx(score(107, 100), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)


def test_causal_mask_hides_exactly_the_positions_ahead_of_each_query():
    """Three new tokens after two cached ones: query i (position 2 + i) sees 0 .. 2 + i."""
    inf = np.inf
    np.testing.assert_array_equal(causal_mask(2, 3), np.array(
        [[0, 0, 0, -inf, -inf],
         [0, 0, 0, 0, -inf],
         [0, 0, 0, 0, 0]], dtype=np.float32))
    assert causal_mask(2, 3).dtype == np.float32
    assert not causal_mask(7, 1).any()  # one new token sees everything before it


def test_masked_probabilities_are_exactly_zero_and_rows_sum_to_one():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    cache = model.new_cache()
    with Trace(model, "layers.*.attention.probs") as trace:
        model.forward(TOKENS[:5], cache=cache)
        model.forward(TOKENS[5:7], start_pos=5, cache=cache)
    first, second = trace.steps[0]["layers.1.attention.probs"], trace["layers.1.attention.probs"]
    assert first.shape == (config.n_heads, 5, 5) and second.shape == (config.n_heads, 2, 7)
    assert np.all(first[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)
    assert np.all(second[:, 0, 6] == 0) and np.all(second[:, 1, :] > 0)
    np.testing.assert_allclose(first.sum(-1), 1, atol=1e-6)


@pytest.mark.parametrize("tokens, start_pos", [([], 0), ([1], 3), ([1] * 513, 0)])
def test_impossible_positions_are_refused(tokens, start_pos):
    config = tiny_config()
    with pytest.raises(InputError):
        Transformer(config, random_weights(config)).forward(tokens, start_pos)
