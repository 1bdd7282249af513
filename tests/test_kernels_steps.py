"""kernels_steps.py: RMSNorm and one query's attention as compiled loops compute what
model.py's NumPy steps compute, and the model decodes through them with numba."""

import importlib.util

import numpy as np
import pytest

from llama3_np import kernels
from llama3_np import model as model_module
from llama3_np.model import Transformer
from llama3_np.trace import Trace
from tests.test_long_context import filled_cache, plain_attention
from tests.tiny import random_weights, tiny_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed")
RNG = np.random.default_rng(3)


@pytest.fixture
def steps(monkeypatch):
    monkeypatch.setattr(kernels, "_backend", "numba")
    return kernels.compiled_steps()


def numpy_only(monkeypatch):
    monkeypatch.setattr(model_module, "compiled_steps", lambda: None)


def layers_attended(steps, monkeypatch) -> list:
    """The layer of each later one_query_attention call, in order."""
    layers, attend = [], steps.one_query_attention
    monkeypatch.setattr(steps, "one_query_attention",
                        lambda q, cache, layer, total: layers.append(layer) or
                        attend(q, cache, layer, total))
    return layers


@pytest.mark.parametrize("rows, dim", [(1, 576), (7, 2048), (3, 37)])
def test_rms_norm_equals_the_numpy_steps(steps, monkeypatch, rows, dim):
    x = (RNG.standard_normal((rows, dim)) * 3).astype(np.float32)
    gain = RNG.standard_normal(dim).astype(np.float32)
    gain.flags.writeable = False  # as a gain memory-mapped from a file
    compiled = steps.rms_norm(x, gain, 1e-5)
    np.testing.assert_array_equal(model_module.rms_norm(x, gain, 1e-5), compiled)  # taken
    numpy_only(monkeypatch)
    expected = model_module.rms_norm(x, gain, 1e-5)
    # The same operations per value; only the sum of squares is added in another order,
    # which moves the scale by a few roundoffs.
    assert compiled.dtype == np.float32 and compiled.shape == x.shape
    np.testing.assert_allclose(compiled, expected, rtol=4e-7, atol=0)


def test_rms_norm_keeps_nan_and_the_shapes_it_was_not_written_for(steps):
    x = np.ones((2, 8), dtype=np.float32)
    x[1, 3] = np.nan
    out = model_module.rms_norm(x, np.ones(8, dtype=np.float32), 1e-5)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    three_d = np.ones((2, 3, 8), dtype=np.float32)  # NumPy's steps take any shape
    assert model_module.rms_norm(three_d, np.ones(8, dtype=np.float32), 1e-5).shape == \
        three_d.shape


def test_exp_is_within_one_ulp_of_the_exact_value(steps):
    x = np.concatenate([-RNG.exponential(10, 3000), RNG.uniform(-1, 1, 1000),
                        RNG.uniform(80, 88.72, 100), [0]]).astype(np.float32)
    got = np.array([steps._exp(v) for v in x], dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    normal = exact >= np.finfo(np.float32).tiny
    ulps = np.abs(got - exact) / np.spacing(exact.astype(np.float32))
    assert ulps[normal].max() <= 1 and (got[~normal] == 0).all() and got[x == 0] == 1
    assert np.isnan(steps._exp(np.float32(np.nan))) and steps._exp(np.float32(-np.inf)) == 0
    assert steps._exp(np.float32(88.73)) == steps._exp(np.float32(200)) == np.inf


@pytest.mark.parametrize("n_heads, n_kv_heads, head_dim, total", [
    (6, 2, 16, 1),  # the first position: a softmax of one score
    (6, 2, 16, 121),
    (9, 3, 64, 300),  # the demo model's groups of 3
    (4, 4, 32, 50),  # no grouping
])
@pytest.mark.parametrize("kv_dtype", ["f32", "bf16"])
def test_one_query_attention_equals_the_plain_steps(steps, n_heads, n_kv_heads, head_dim,
                                                    total, kv_dtype):
    config = tiny_config(n_heads=n_heads, n_kv_heads=n_kv_heads, dim=n_heads * head_dim)
    cache = filled_cache(config, total, kv_dtype)
    q = RNG.standard_normal((1, n_heads, head_dim)).astype(np.float32)
    grouped = model_module.group_queries(q, n_kv_heads)
    out = model_module.ungroup_heads(steps.one_query_attention(grouped, cache, 0, total), 1)
    keys, values = cache.read(0, 0, total)  # float32, a bf16 cache's decoded
    expected = plain_attention(q, keys, values, total - 1)
    exact = plain_attention(q.astype(np.float64), keys.astype(np.float64),
                            values.astype(np.float64), total - 1)
    assert out.shape == expected.shape == (1, n_heads, head_dim)
    # Scores of up to ~10 carry float32 roundoffs of ~1e-6 into the exponentials: over 40
    # random cases of the demo's shape both float32 ways erred from float64 by up to
    # 3.2e-6, and from each other by as much.
    np.testing.assert_allclose(out, exact, rtol=0, atol=5e-6)
    np.testing.assert_allclose(expected, exact, rtol=0, atol=5e-6)


def test_one_query_attention_reads_only_the_positions_it_is_given(steps):
    config = tiny_config()
    cache = filled_cache(config, 40)
    q = RNG.standard_normal((1, config.n_heads, config.head_dim)).astype(np.float32)
    grouped = model_module.group_queries(q, config.n_kv_heads)
    first_30 = steps.one_query_attention(grouped, cache, 0, 30)
    keys, values = cache.read(0, 0, 30)
    np.testing.assert_allclose(model_module.ungroup_heads(first_30, 1),
                               plain_attention(q, keys, values, 29), rtol=0, atol=5e-6)
    assert not np.allclose(first_30, steps.one_query_attention(grouped, cache, 0, 40))


def test_long_float32_caches_keep_numpys_attention(steps, monkeypatch):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    monkeypatch.setattr(steps, "FLOAT32_CACHE_MAX_POSITIONS", 10)
    calls = layers_attended(steps, monkeypatch)
    f32, bf16 = model.new_cache("f32"), model.new_cache("bf16")
    for cache in (f32, bf16):
        model.forward(list(range(8)), cache=cache)
        for token in range(4):  # positions 9 to 12 attended
            model.forward([token], cache=cache)
    assert calls == 2 * list(range(config.n_layers)) + 4 * list(range(config.n_layers))


@pytest.mark.parametrize("kv_dtype", ["f32", "bf16"])
def test_decoding_goes_through_the_compiled_steps_and_equals_numpys(steps, monkeypatch,
                                                                    kv_dtype):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    tokens = RNG.integers(0, config.vocab_size, 12).tolist()
    calls = layers_attended(steps, monkeypatch)

    def decode():
        cache = model.new_cache(kv_dtype)
        logits = [model.forward(tokens[:8], cache=cache)]
        return np.concatenate(logits + [model.forward([t], cache=cache) for t in tokens[8:]])

    compiled = decode()
    assert calls == 4 * list(range(config.n_layers))  # every layer of every decode step
    numpy_only(monkeypatch)
    expected = decode()
    np.testing.assert_allclose(compiled, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_a_trace_that_wants_the_probabilities_sees_numpys_steps(steps, monkeypatch):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    cache = model.new_cache()
    model.forward([5, 6, 7], cache=cache)
    layers = layers_attended(steps, monkeypatch)
    with Trace(model, "layers.1.attention.probs") as t:
        model.forward([8], cache=cache)
    assert layers == [0]  # layer 1's probabilities are recorded: NumPy's steps there
    probs = t["layers.1.attention.probs"]
    assert probs.shape == (config.n_heads, 1, 4)
    np.testing.assert_allclose(probs.sum(axis=-1), 1, rtol=1e-6)
