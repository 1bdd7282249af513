"""Long inputs: tiled attention and chunked prefill equal the walk-through's plain steps;
the KV cache belongs to its caller (several sequences, and threads, on one model);
the bf16 cache's error; memory refusals that name their cause."""

import subprocess
import threading
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from llama3_np import kernels, kv_cache, tiled_attention
from llama3_np import model as model_module
from llama3_np.errors import InputError
from llama3_np.kv_cache import KVCache
from llama3_np.model import Transformer, causal_mask, group_queries, softmax, ungroup_heads
from llama3_np.generate import generate_tokens
from llama3_np.formats.convert import to_dtype
from llama3_np.sampling import Sampler
from llama3_np.trace import Trace
from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(0, 128000, 300).tolist()


def plain_attention(q, keys, values, start_pos, masked=True):
    """The walk-through's steps on (seq, n_heads, head_dim) q and (n_kv, total, head_dim)
    keys and values, as model.py writes them."""
    seq, n_heads, head_dim = q.shape
    grouped = group_queries(q, keys.shape[0])
    scores = (grouped @ keys.transpose(0, 2, 1)) / np.float32(np.sqrt(head_dim))
    mask = causal_mask(start_pos, seq) if masked else np.float32(0)
    probs = softmax(scores.reshape(n_heads, seq, -1) + mask)
    return ungroup_heads(probs.reshape(keys.shape[0], -1, keys.shape[1]) @ values, seq)


def filled_cache(config, total, kv_dtype="f32"):
    cache = KVCache(config, kv_dtype)
    k = RNG.standard_normal((total, config.n_kv_heads, config.head_dim)).astype(np.float32)
    v = RNG.standard_normal((total, config.n_kv_heads, config.head_dim)).astype(np.float32)
    cache.store(0, 0, 3 * k, v)  # scores of a few units: the softmax is far from uniform
    cache.length = total
    return cache


# Tiled and plain attention do the same float32 operations in a different order (sums
# split at tile edges, one division at the end) plus one rescaling by exp(old max - new
# max) per tile, each worth a roundoff (6e-8) of outputs of size ~1-3. Measured worst
# over these cases: 1.3e-6, with 23 tiles of one key; 5e-7 to 1e-6 with fewer tiles.
TILED_ATOL = 4e-6


def tile_budget(config, seq: int, keys: int) -> int:
    """The SCORES_BUDGET that makes tiled_attention take tiles of `keys` keys."""
    return max(config.n_rep * seq, config.n_kv_heads * config.head_dim) * keys


@pytest.mark.parametrize("seq, start_pos, keys", [
    (37, 0, 5),  # prefill: tiles of 5 keys, the mask cuts through them
    (9, 40, 7),  # a later chunk: tiles before it unmasked, the last ones masked
    (1, 120, 16),  # one decode step over 121 positions, 8 tiles
    (20, 3, 1),  # one key per tile
])
def test_tiled_attention_equals_the_plain_steps(monkeypatch, seq, start_pos, keys):
    config = tiny_config(n_heads=6, n_kv_heads=2, dim=6 * 16)  # groups of 3 query heads
    cache = filled_cache(config, start_pos + seq)
    q = RNG.standard_normal((seq, config.n_heads, config.head_dim)).astype(np.float32)
    monkeypatch.setattr(tiled_attention, "SCORES_BUDGET", tile_budget(config, seq, keys))
    tiled = ungroup_heads(tiled_attention.tiled_attention(
        group_queries(q, config.n_kv_heads), cache, 0, start_pos, seq), seq)
    keys, values = cache.read(0, 0, start_pos + seq)
    expected = plain_attention(q, keys, values, start_pos)
    assert tiled.shape == expected.shape == (seq, config.n_heads, config.head_dim)
    np.testing.assert_allclose(tiled, expected, rtol=0, atol=TILED_ATOL)


def test_tiled_attention_can_tell_a_missing_mask(monkeypatch):
    """The comparison above is sharp: attention that ignores the mask is far outside it."""
    config = tiny_config()
    cache = filled_cache(config, 30)
    q = RNG.standard_normal((30, config.n_heads, config.head_dim)).astype(np.float32)
    keys, values = cache.read(0, 0, 30)
    monkeypatch.setattr(tiled_attention, "SCORES_BUDGET", tile_budget(config, 30, 8))
    tiled = ungroup_heads(tiled_attention.tiled_attention(
        group_queries(q, config.n_kv_heads), cache, 0, 0, 30), 30)
    assert np.abs(tiled - plain_attention(q, keys, values, 0)).max() < TILED_ATOL
    unmasked = plain_attention(q, keys, values, 0, masked=False)
    assert np.abs(tiled - unmasked).max() > 1000 * TILED_ATOL


def test_softmax_rows_split_over_threads_give_the_same_bits(monkeypatch):
    config = tiny_config(n_heads=6, n_kv_heads=2, dim=6 * 16)
    cache = filled_cache(config, 40)
    q = group_queries(RNG.standard_normal((37, 6, 16)).astype(np.float32), 2)
    monkeypatch.setattr(tiled_attention, "SCORES_BUDGET", tile_budget(config, 37, 5))
    alone = tiled_attention.tiled_attention(q, cache, 0, 3, 37)
    monkeypatch.setattr(tiled_attention, "_MIN_ROWS_A_THREAD", 4)
    for workers in (2, 3):
        monkeypatch.setattr(tiled_attention, "compute_threads", lambda: workers)
        np.testing.assert_array_equal(tiled_attention.tiled_attention(q, cache, 0, 3, 37), alone)


def small_steps(monkeypatch):
    """Chunks of 7 tokens and key tiles of 11: every boundary is crossed many times."""
    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 7)
    monkeypatch.setattr(tiled_attention, "SCORES_BUDGET", tile_budget(tiny_config(), 7, 11))


def test_chunked_prefill_with_tiled_attention_equals_one_plain_pass(monkeypatch):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    plain = model.forward(TOKENS)  # 4 heads x 300 x 300 scores: the plain path
    small_steps(monkeypatch)
    chunked = model.forward(TOKENS)
    last = model.forward(TOKENS, last_only=True)
    # float32 rounding in a different order, through 2 layers and the output projection.
    scale = np.abs(plain).max()
    np.testing.assert_allclose(chunked, plain, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(last, plain[-1:], rtol=0, atol=1e-5 * scale)


def test_a_prompt_in_pieces_then_decode_equals_one_pass(monkeypatch):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    plain = model.forward(TOKENS)
    small_steps(monkeypatch)
    cache = model.new_cache()
    pieces = [model.forward(TOKENS[:100], cache=cache),  # chunks of 7, tiled
              model.forward(TOKENS[100:290], 100, cache=cache)]
    pieces += [model.forward([t], 290 + i, cache=cache) for i, t in enumerate(TOKENS[290:])]
    np.testing.assert_allclose(np.concatenate(pieces), plain, rtol=0,
                               atol=1e-5 * np.abs(plain).max())
    assert cache.length == len(TOKENS)


def test_a_trace_records_the_plain_steps_of_a_long_call(monkeypatch):
    """While traced, a call is one chunk and a layer whose probs are recorded takes the
    plain path; the other layers stay tiled, and the logits agree either way."""
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    untraced = model.forward(TOKENS[:50])
    small_steps(monkeypatch)
    with Trace(model, "layers.1.attention.probs", "logits") as t:
        traced = model.forward(TOKENS[:50])
    assert len(t.steps) == 1 and t["layers.1.attention.probs"].shape == (4, 50, 50)
    np.testing.assert_allclose(traced, untraced, rtol=0, atol=1e-5 * np.abs(untraced).max())


def test_two_sequences_on_one_model_equal_two_models():
    config = tiny_config()
    weights = random_weights(config)
    shared = Transformer(config, weights)
    prompts = [TOKENS[:20], TOKENS[50:63]]
    alone = [list(generate_tokens(Transformer(config, weights), p, Sampler(), 12, (),
                                  KVCache(config))) for p in prompts]
    streams = [generate_tokens(shared, p, Sampler(), 12, (), shared.new_cache())
               for p in prompts]
    together = [[], []]
    for _ in range(12):  # interleaved, step by step
        for i, stream in enumerate(streams):
            together[i].append(next(stream))
    assert together == alone


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_concurrent_generations_on_one_model_equal_sequential_ones(backend):
    if backend == "numba" and kernels._numba_kernels() is None:
        pytest.skip("numba is not installed")
    config = tiny_config(vocab_size=3000, bos_id=None, stop_ids=())
    weights = {name: to_dtype(w, "bf16") if w.ndim == 2 else w
               for name, w in random_weights(config).items()}  # the tiled bf16 path
    model = Transformer(config, weights)
    prompts = [RNG.integers(0, 3000, n).tolist() for n in (40, 3, 17, 60, 25, 9)]
    run = lambda p: list(generate_tokens(model, p, Sampler(), 10, (), model.new_cache()))
    kernels.set_backend(backend)
    try:
        sequential = [run(p) for p in prompts]
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(run, prompts))
    finally:
        kernels.set_backend("auto")
    assert concurrent == sequential


# Rounding keys and values to bfloat16 (8 significant bits, relative error up to 2^-9)
# moves attention outputs by ~1e-3 of their size, and the logits with them. Measured on
# this random 2-layer model: 2.0e-3 of the logits' scale; on the SmolLM2 demo model
# (30 layers, real weights, 400 tokens; see the README): 3.7e-3, with 99.3% of the
# top-1 predictions unchanged. Bounded here at 1e-2, and shown to be more than float32
# rounding.
BF16_CACHE_ERROR = 1e-2


def test_a_bf16_cache_halves_the_bytes_within_a_documented_error():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    f32, bf16 = model.new_cache("f32"), model.new_cache("bf16")
    exact = model.forward(TOKENS[:200], cache=f32)
    rounded = model.forward(TOKENS[:200], cache=bf16)
    assert bf16.nbytes * 2 == f32.nbytes
    relative = np.abs(rounded - exact).max() / np.abs(exact).max()
    assert 1e-5 < relative < BF16_CACHE_ERROR


def test_a_cache_that_cannot_fit_is_refused_with_advice(monkeypatch):
    config = tiny_config(max_seq_len=100000)
    model = Transformer(config, random_weights(config))
    # 2 layers x (keys, values) x 2 kv heads x 16 x 4 bytes = 512 bytes a position
    monkeypatch.setattr(kv_cache, "available_bytes", lambda: 20 << 20)  # 20 MiB free
    cache = model.new_cache()
    with pytest.raises(InputError, match=r"KV cache for 60000 positions needs 29\.3 MiB in "
                                         r"f32.*--max-tokens, or --kv-dtype bf16 \(14\.6 MiB\)$"):
        cache.reserve(60000)
    assert cache.capacity == 0  # nothing was allocated
    # The advice names only what fits: at 10 MiB free, bf16 does not either.
    monkeypatch.setattr(kv_cache, "available_bytes", lambda: 10 << 20)
    with pytest.raises(InputError, match=r"shorter prompt or --max-tokens$"):
        cache.reserve(60000)
    # and never a bigger dtype than the one that does not fit
    bf16 = model.new_cache("bf16")
    with pytest.raises(InputError, match=r"14\.6 MiB in bf16.*--max-tokens$"):
        bf16.reserve(60000)


def test_a_trace_too_big_to_record_names_the_filter(monkeypatch):
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    monkeypatch.setattr("llama3_np.memory.available_bytes", lambda: 1 << 20)
    with Trace(model) as t, pytest.raises(InputError, match="--layer N or --step GLOB"):
        model.forward(TOKENS)
    assert t.steps == []  # refused before anything ran
    with Trace(model, "layers.0.attention_norm"):  # 300 x 64 floats: fits
        model.forward(TOKENS)


LONG_PROMPT_SCRIPT = """
import resource, sys
import numpy as np
from llama3_np.model import Transformer
from tests.tiny import random_weights, tiny_config
config = tiny_config(dim=128, n_heads=8, n_kv_heads=2, ffn_dim=256, vocab_size=1000,
                     bos_id=None, stop_ids=(), max_seq_len=8192)
model = Transformer(config, random_weights(config))
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
logits = model.forward(np.arange(8192) % 1000, last_only=True)
print(np.isfinite(logits).all(), flush=True)
"""


def test_an_8192_token_prompt_runs_in_bounded_memory():
    """The plain path would build 8 heads x 8192 x 8192 scores (2 GiB, three times over);
    under a 1 GiB address-space limit the prompt must still run."""
    limit = 1 << 30
    done = subprocess.run([sys.executable, "-c", LONG_PROMPT_SCRIPT.format(limit=limit)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_a_trace_sees_only_its_own_threads_calls():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    entered, release = threading.Event(), threading.Event()

    def traced():
        with Trace(model, "logits") as t:
            entered.set()
            release.wait(10)
            model.forward(TOKENS[:3])
        return t

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(traced)
        entered.wait(10)
        model.forward(TOKENS[:7])  # this thread, while the other one traces
        release.set()
        t = future.result()
    assert [len(step["tokens"]) for step in t.steps] == [3]
    assert model.trace is model_module.NO_TRACE  # and nothing is left behind


def test_a_cache_continues_where_it_ends_unless_told_otherwise():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    whole = model.forward(TOKENS[:9])
    cache = model.new_cache()
    model.forward(TOKENS[:5], cache=cache)
    np.testing.assert_allclose(model.forward(TOKENS[5:9], cache=cache), whole[5:],
                               rtol=0, atol=1e-5 * np.abs(whole).max())
    # An explicit start_pos rewinds: positions 5.. are overwritten.
    np.testing.assert_allclose(model.forward(TOKENS[5:9], 5, cache=cache), whole[5:],
                               rtol=0, atol=1e-5 * np.abs(whole).max())
    assert cache.length == 9


@pytest.mark.parametrize("tokens, message", [
    ([-1], "token id -1 is outside the vocabulary"),
    ([128256], "token id 128256 is outside the vocabulary"),
    ([2.9], "a list of token ids"),
    ([[1, 2]], "a list of token ids"),
    ([], "at least one token"),
])
def test_bad_token_ids_are_refused(tokens, message):
    config = tiny_config()
    with pytest.raises(InputError, match=message):
        Transformer(config, random_weights(config)).forward(tokens)


def test_a_cache_of_another_model_is_refused():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    with pytest.raises(InputError, match="belongs to a model of another shape"):
        model.forward([1, 2], cache=KVCache(tiny_config(n_layers=3)))


def test_growing_the_cache_keeps_every_stored_row():
    config = tiny_config()
    cache = KVCache(config, capacity=2)
    k = np.ones((2, config.n_kv_heads, config.head_dim), np.float32)
    cache.store(0, 0, k, k)  # layer 0 writes positions 0, 1 ...
    cache.store(1, 0, k, k)
    cache.store(0, 2, 2 * k, 2 * k)  # ... then a later call grows the cache
    assert (cache.read(1, 0, 2)[0] == 1).all() and (cache.read(0, 2, 4)[0] == 2).all()


def test_the_rotation_table_stops_at_the_context_window():
    from llama3_np.rope import RotaryTable, rope_frequencies

    table = RotaryTable(rope_frequencies(16, 10000.0), max_positions=300)
    table.rotations(0, 200)
    table.rotations(200, 100)
    assert len(table.table) == 300
