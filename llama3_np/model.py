"""The Llama 3 forward pass, step by step, in the order of the "from scratch" walk-through.

    tokens -> embedding -> [ RMSNorm -> q,k,v split by head -> complex RoPE on q,k
           -> q.k^T / sqrt(d) -> causal mask -> softmax -> .v -> output projection
           -> residual -> RMSNorm -> SwiGLU -> residual ] x n_layers
           -> RMSNorm -> output projection -> logits

Every weight matmul goes through kernels.linear (the one place precision and backend
are decided); with numba, RMSNorm and a decoded token's attention run as compiled loops
of the same arithmetic (kernels_steps.py); every named step is handed to `self.trace`,
which does nothing unless an inspection is running in this thread (see trace.py).
"""

import functools
import threading

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .formats import take_rows
from .kernels import compiled_steps, linear
from .kv_cache import KVCache
from .rope import RotaryTable, apply_rope, rope_frequencies
from .tiled_attention import plain_attention_fits, tiled_attention


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Scale each vector to unit root-mean-square, then by a learned per-channel gain.
    (The numba backend runs the same arithmetic as one loop: kernels_steps.py.)"""
    steps = compiled_steps()
    if steps is not None and x.ndim == 2 and x.dtype == np.float32:
        return steps.rms_norm(x, weight, eps)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) = x / (1 + e^-x); exp overflows to inf for x < -88, which correctly
    gives -0. (In place: prefill's (seq, ffn_dim) temporaries are the largest here.)"""
    with np.errstate(over="ignore"):
        denominator = np.negative(x)
        np.exp(denominator, out=denominator)
        denominator += np.float32(1)
        return np.divide(x, denominator, out=denominator)


@functools.lru_cache(maxsize=1)  # every layer of a forward call asks for the same one
def causal_mask(start_pos: int, seq: int) -> np.ndarray:
    """(seq, start_pos + seq): 0 where a query may look (itself and every position
    before it), -inf at the positions ahead of it. Read-only: the layers share it."""
    query_pos = start_pos + np.arange(seq)[:, None]
    ahead = np.arange(start_pos + seq)[None, :] > query_pos
    mask = np.where(ahead, np.float32(-np.inf), np.float32(0))
    mask.flags.writeable = False
    return mask


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax; -inf entries (masked) become exactly 0. (In place, as silu.)"""
    e = x - x.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


class NoTrace:
    """The default trace: records nothing and costs nothing (see trace.Trace)."""

    active = False

    def __call__(self, name: str, tensor: np.ndarray) -> None:
        pass

    def many(self, prefix: str, **tensors) -> None:
        for name, tensor in tensors.items():
            self(f"{prefix}.{name}", tensor)

    def wants(self, *names: str) -> bool:
        return False

    def check_room(self, config: ModelConfig, seq: int, total: int) -> None:
        pass


NO_TRACE = NoTrace()


# Tokens per pass through the whole model when prefilling a long prompt (llama.cpp's
# micro-batch): keeps activations bounded (512 x ffn_dim floats) while BLAS still
# multiplies big blocks at full speed.
PREFILL_CHUNK = 512


def group_queries(q: np.ndarray, n_kv_heads: int) -> np.ndarray:
    """(seq, n_heads, head_dim) -> (n_kv_heads, n_rep * seq, head_dim).

    Grouped-query attention: n_rep = n_heads / n_kv_heads consecutive query heads share
    one kv head. Meta's code copies each kv head n_rep times (repeat_kv); stacking each
    group's queries instead lets one matmul per kv head serve the whole group, no copy."""
    seq, n_heads, head_dim = q.shape
    return q.transpose(1, 0, 2).reshape(n_kv_heads, n_heads // n_kv_heads * seq, head_dim)


def ungroup_heads(out: np.ndarray, seq: int) -> np.ndarray:
    """group_queries' inverse: (n_kv_heads, n_rep * seq, head_dim) -> (seq, n_heads, head_dim)."""
    return out.reshape(-1, seq, out.shape[-1]).transpose(1, 0, 2)


class Transformer:
    """The weights and the forward pass; the KV cache belongs to the caller, so threads
    may share one Transformer (each with its own trace hook, too)."""

    def __init__(self, config: ModelConfig, weights: dict):
        self.config = config
        self.weights = weights
        self.rotary = RotaryTable(
            rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling),
            config.max_seq_len)
        self._per_thread = threading.local()

    @property
    def trace(self):
        """This thread's trace hook (NO_TRACE unless a trace.Trace is active in it)."""
        return getattr(self._per_thread, "trace", NO_TRACE)

    @trace.setter
    def trace(self, hook) -> None:
        self._per_thread.trace = hook

    def new_cache(self, kv_dtype: str = "f32", capacity: int = 0) -> KVCache:
        return KVCache(self.config, kv_dtype, capacity)

    def forward(self, tokens, start_pos: int = None, last_only: bool = False,
                cache: KVCache = None) -> np.ndarray:
        """Logits (seq, vocab) for `tokens` placed at positions start_pos.. .

        `cache` holds the keys and values of the positions before start_pos and takes
        this call's: a prompt is prefilled in one call, then each generated token is fed
        in its own call with the same cache. start_pos defaults to where the cache ends
        (a smaller one rewinds: later positions are overwritten). Without a cache the
        tokens are a whole sequence. With last_only, only the last position's logits are
        computed (all that sampling needs)."""
        chunks = list(self.forward_chunks(tokens, start_pos, cache, last_only))
        return chunks[-1] if last_only else np.concatenate(chunks)

    def forward_chunks(self, tokens, start_pos: int = None, cache: KVCache = None,
                       last_only: bool = False):
        """forward(), one chunk of PREFILL_CHUNK tokens at a time, yielding each chunk's
        logits (with last_only: only the last chunk's last row), so neither activations
        nor logits grow with the prompt. A trace sees the whole call as one chunk."""
        tokens = self.checked_tokens(tokens)
        cache, start_pos = self.checked_cache(cache, start_pos, len(tokens))
        self.trace.check_room(self.config, len(tokens), start_pos + len(tokens))
        step = len(tokens) if self.trace.active else PREFILL_CHUNK
        for begin in range(0, len(tokens), step):
            last_chunk = begin + step >= len(tokens)
            if last_only and not last_chunk:
                self.run_layers(tokens[begin:begin + step], start_pos + begin, cache)
            else:
                yield self.logits(tokens[begin:begin + step], start_pos + begin, cache,
                                  last_only)

    def logits(self, tokens, start_pos: int, cache: KVCache, last_only: bool) -> np.ndarray:
        c, w = self.config, self.weights
        x = self.run_layers(tokens, start_pos, cache)
        if last_only:
            x = x[-1:]
        x = rms_norm(x, w["norm.weight"], c.norm_eps)  # (seq, dim)
        self.trace("norm", x)
        logits = linear(x, w["output.weight"])  # (seq, vocab)
        self.trace("logits", logits)
        return logits

    def run_layers(self, tokens, start_pos: int, cache: KVCache) -> np.ndarray:
        """The token embeddings, through every transformer block: (seq, dim)."""
        self.trace("tokens", tokens)
        rotations = self.rotary.rotations(start_pos, len(tokens))  # (seq, head_dim / 2)
        x = take_rows(self.weights["tok_embeddings.weight"], tokens)  # (seq, dim)
        self.trace("embeddings", x)
        for i in range(self.config.n_layers):
            x = self.transformer_block(i, x, start_pos, rotations, cache)
        cache.length = start_pos + len(tokens)
        return x

    def checked_tokens(self, tokens) -> np.ndarray:
        """Token ids as a 1-D int64 array, each inside the vocabulary (a negative id would
        silently read the embedding from the end)."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise InputError(f"forward() wants a list of token ids, got an array of shape "
                             f"{ids.shape} and dtype {ids.dtype}")
        if ids.size == 0:
            raise InputError("forward() needs at least one token")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0]
            raise InputError(f"token id {bad} is outside the vocabulary "
                             f"(size {self.config.vocab_size})")
        return ids.astype(np.int64, copy=False)

    def checked_cache(self, cache, start_pos, n_tokens: int) -> tuple:
        """(`cache`, or a new one for a whole sequence, with room for this call's tokens;
        start_pos, where the cache ends when None)."""
        if cache is None:
            if start_pos not in (None, 0):
                raise InputError(f"start_pos {start_pos} needs the KV cache that holds the "
                                 "positions before it: pass cache=")
            cache = self.new_cache(capacity=n_tokens)
        c, theirs = self.config, cache.config
        if (theirs.n_layers, theirs.n_kv_heads, theirs.head_dim) != \
                (c.n_layers, c.n_kv_heads, c.head_dim):
            raise InputError(f"this KV cache belongs to a model of another shape "
                             f"({theirs.n_layers} layers, {theirs.n_kv_heads} kv heads of "
                             f"{theirs.head_dim}; this model: {c.n_layers}, {c.n_kv_heads} "
                             f"of {c.head_dim})")
        start_pos = cache.length if start_pos is None else start_pos
        if not 0 <= start_pos <= cache.length:
            raise InputError(f"start_pos {start_pos} leaves a gap: the cache holds "
                             f"{cache.length} positions")
        if start_pos + n_tokens > c.max_seq_len:
            raise InputError(f"{start_pos + n_tokens} positions exceed the context window "
                             f"of {c.max_seq_len} tokens")
        cache.reserve(start_pos + n_tokens)
        return cache, start_pos

    def transformer_block(self, i: int, x, start_pos: int, rotations, cache) -> np.ndarray:
        c, w, p = self.config, self.weights, f"layers.{i}."
        x = x + self.attention(i, rms_norm(x, w[p + "attention_norm.weight"], c.norm_eps),
                               start_pos, rotations, cache)
        self.trace(p + "attention_residual", x)
        x = x + self.feed_forward(i, rms_norm(x, w[p + "ffn_norm.weight"], c.norm_eps))
        self.trace(p + "residual", x)
        return x

    def attention(self, i: int, x, start_pos: int, rotations, cache) -> np.ndarray:
        """Each position looks at itself and every position before it."""
        c, w, trace, p = self.config, self.weights, self.trace, f"layers.{i}.attention"
        seq = len(x)
        trace(f"layers.{i}.attention_norm", x)  # the block's RMSNorm: (seq, dim)
        q = linear(x, w[p + ".wq.weight"]).reshape(seq, c.n_heads, c.head_dim)
        k = linear(x, w[p + ".wk.weight"]).reshape(seq, c.n_kv_heads, c.head_dim)
        v = linear(x, w[p + ".wv.weight"]).reshape(seq, c.n_kv_heads, c.head_dim)
        trace.many(p, q=q, k=k, v=v)

        q = apply_rope(q, rotations)  # (seq, n_heads, head_dim)
        k = apply_rope(k, rotations)  # (seq, n_kv_heads, head_dim)
        trace.many(p, q_rotated=q, k_rotated=k)
        cache.store(i, start_pos, k, v)
        total = start_pos + seq  # positions attended: the cached ones and these

        q = group_queries(q, c.n_kv_heads)  # (n_kv_heads, n_rep * seq, head_dim)
        recorded = trace.wants(p + ".scores", p + ".masked_scores", p + ".probs")
        steps = compiled_steps()  # decoding a token: the steps below as one compiled loop
        if seq == 1 and steps is not None and steps.attends(cache, total) and not recorded:
            out = steps.one_query_attention(q, cache, i, total)
        elif recorded or plain_attention_fits(c.n_heads, c.n_kv_heads, c.head_dim, seq,
                                               total):
            keys, values = cache.read(i, 0, total)  # (n_kv_heads, total, head_dim)
            scores = (q @ keys.transpose(0, 2, 1)) / np.float32(np.sqrt(c.head_dim))
            scores = scores.reshape(c.n_heads, seq, total)
            masked = scores + causal_mask(start_pos, seq)  # -inf ahead: softmax gives 0
            probs = softmax(masked)  # (n_heads, seq, total)
            trace.many(p, scores=scores, masked_scores=masked, probs=probs)
            out = probs.reshape(c.n_kv_heads, -1, total) @ values
        else:  # the same, key tile by key tile, when all scores at once would be large
            out = tiled_attention(q, cache, i, start_pos, seq)
        heads_out = ungroup_heads(out, seq)  # (seq, n_heads, head_dim)
        trace(p + ".heads_out", heads_out)
        out = linear(heads_out.reshape(seq, c.dim), w[p + ".wo.weight"])  # (seq, dim)
        trace(p + ".out", out)
        return out

    def feed_forward(self, i: int, x) -> np.ndarray:
        """SwiGLU: a gated expansion to ffn_dim and back."""
        w, trace, p = self.weights, self.trace, f"layers.{i}."
        trace(p + "ffn_norm", x)  # the block's RMSNorm: (seq, dim)
        gate = linear(x, w[p + "feed_forward.w1.weight"])  # (seq, ffn_dim)
        up = linear(x, w[p + "feed_forward.w3.weight"])  # (seq, ffn_dim)
        hidden = silu(gate) * up  # (seq, ffn_dim)
        trace.many(p + "ffn", gate=gate, up=up, hidden=hidden)
        out = linear(hidden, w[p + "feed_forward.w2.weight"])  # (seq, dim)
        trace(p + "ffn.out", out)
        return out
