"""The Llama 3 forward pass, step by step, in the order of the "from scratch" walk-through.

    tokens -> embedding -> [ RMSNorm -> q,k,v split by head -> complex RoPE on q,k
           -> q.k^T / sqrt(d) -> causal mask -> softmax -> .v -> output projection
           -> residual -> RMSNorm -> SwiGLU -> residual ] x n_layers
           -> RMSNorm -> output projection -> logits

Every matmul goes through kernels.linear (the one place precision and backend are
decided); every named step is handed to `self.trace`, which does nothing unless an
inspection is running (see trace.py).
"""

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .kernels import linear
from .rope import RotaryTable, apply_rope, rope_frequencies
from .storage import take_rows


def _no_trace(name: str, tensor: np.ndarray) -> None:
    pass


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Scale each vector to unit root-mean-square, then by a learned per-channel gain."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * weight


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x); exp overflows to inf for x < -88, which correctly gives -0."""
    with np.errstate(over="ignore"):
        return x / (np.float32(1) + np.exp(-x))


def causal_mask(start_pos: int, seq: int) -> np.ndarray:
    """(seq, start_pos + seq): 0 where a query may look (itself and every position
    before it), -inf at the positions ahead of it."""
    query_pos = start_pos + np.arange(seq)[:, None]
    ahead = np.arange(start_pos + seq)[None, :] > query_pos
    return np.where(ahead, np.float32(-np.inf), np.float32(0))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax; -inf entries (masked) become exactly 0."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


class KVCache:
    """Keys and values of every position seen so far, one buffer per layer.

    Buffers are (n_kv_heads, capacity, head_dim), preallocated and doubled when
    full, so a decode step writes one row instead of concatenating."""

    def __init__(self, config: ModelConfig, capacity: int = 256):
        self.config = config
        self.length = 0  # positions held
        shape = (config.n_kv_heads, min(capacity, config.max_seq_len), config.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(config.n_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(config.n_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def reserve(self, end: int) -> None:
        if end <= self.capacity:
            return
        new_capacity = min(max(end, 2 * self.capacity), self.config.max_seq_len)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = np.zeros((old.shape[0], new_capacity, old.shape[2]), np.float32)
                grown[:, : self.length] = old[:, : self.length]
                buffers[i] = grown

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray):
        """Write k, v (seq, n_kv_heads, head_dim) at positions start..; return all so far."""
        end = start + len(k)
        self.keys[layer][:, start:end] = k.transpose(1, 0, 2)
        self.values[layer][:, start:end] = v.transpose(1, 0, 2)
        return self.keys[layer][:, :end], self.values[layer][:, :end]


class Transformer:
    def __init__(self, config: ModelConfig, weights: dict):
        self.config = config
        self.weights = weights
        self.rotary = RotaryTable(
            rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling))
        self.cache = KVCache(config)
        self.trace = _no_trace

    def forward(self, tokens, start_pos: int = 0, last_only: bool = False) -> np.ndarray:
        """Logits (seq, vocab) for `tokens` placed at positions start_pos.. .

        Positions before start_pos come from the KV cache, so a prompt is prefilled
        in one call and then generation feeds one token per call. With last_only,
        only the last position's logits are computed (all that sampling needs)."""
        c, w, trace = self.config, self.weights, self.trace
        tokens = np.asarray(tokens, dtype=np.int64)
        self.check_positions(len(tokens), start_pos)
        self.cache.reserve(start_pos + len(tokens))
        rotations = self.rotary.rotations(start_pos, len(tokens))
        mask = causal_mask(start_pos, len(tokens))  # the same for every layer
        trace("tokens", tokens)

        x = take_rows(w["tok_embeddings.weight"], tokens)  # (seq, dim)
        trace("embeddings", x)
        for i in range(c.n_layers):
            x = self.transformer_block(i, x, start_pos, rotations, mask)
        self.cache.length = start_pos + len(tokens)

        if last_only:
            x = x[-1:]
        x = rms_norm(x, w["norm.weight"], c.norm_eps)
        trace("norm", x)
        logits = linear(x, w["output.weight"])  # (seq, vocab)
        trace("logits", logits)
        return logits

    def check_positions(self, n_tokens: int, start_pos: int) -> None:
        if n_tokens == 0:
            raise InputError("forward() needs at least one token")
        if not 0 <= start_pos <= self.cache.length:
            raise InputError(f"start_pos {start_pos} leaves a gap: the cache holds "
                             f"{self.cache.length} positions")
        if start_pos + n_tokens > self.config.max_seq_len:
            raise InputError(f"{start_pos + n_tokens} positions exceed the context window "
                             f"of {self.config.max_seq_len} tokens")

    def transformer_block(self, i: int, x, start_pos: int, rotations, mask) -> np.ndarray:
        c, w, trace, p = self.config, self.weights, self.trace, f"layers.{i}."
        seq = len(x)

        # Attention: each query position looks at itself and everything before it.
        x_norm = rms_norm(x, w[p + "attention_norm.weight"], c.norm_eps)
        trace(p + "attention_norm", x_norm)
        q = linear(x_norm, w[p + "attention.wq.weight"]).reshape(seq, c.n_heads, c.head_dim)
        k = linear(x_norm, w[p + "attention.wk.weight"]).reshape(seq, c.n_kv_heads, c.head_dim)
        v = linear(x_norm, w[p + "attention.wv.weight"]).reshape(seq, c.n_kv_heads, c.head_dim)
        trace(p + "attention.q", q)
        trace(p + "attention.k", k)
        trace(p + "attention.v", v)

        q = apply_rope(q, rotations)
        k = apply_rope(k, rotations)
        trace(p + "attention.q_rotated", q)
        trace(p + "attention.k_rotated", k)
        keys, values = self.cache.store(i, start_pos, k, v)  # (n_kv_heads, total, head_dim)
        total = keys.shape[1]

        # Grouped-query attention: n_rep consecutive query heads share one kv head, so
        # group the queries by kv head instead of copying keys and values n_rep times.
        q = q.transpose(1, 0, 2).reshape(c.n_kv_heads, c.n_rep * seq, c.head_dim)
        scores = (q @ keys.transpose(0, 2, 1)) / np.float32(np.sqrt(c.head_dim))
        scores = scores.reshape(c.n_heads, seq, total)
        trace(p + "attention.scores", scores)

        masked = scores + mask  # -inf ahead of each query: softmax gives those keys 0
        trace(p + "attention.masked_scores", masked)
        probs = softmax(masked)  # (n_heads, seq, total)
        trace(p + "attention.probs", probs)

        heads_out = probs.reshape(c.n_kv_heads, c.n_rep * seq, total) @ values
        heads_out = heads_out.reshape(c.n_heads, seq, c.head_dim).transpose(1, 0, 2)
        trace(p + "attention.heads_out", heads_out)  # (seq, n_heads, head_dim)
        attention_out = linear(heads_out.reshape(seq, c.dim), w[p + "attention.wo.weight"])
        trace(p + "attention.out", attention_out)
        x = x + attention_out
        trace(p + "attention_residual", x)

        # Feed-forward: SwiGLU, a gated expansion to ffn_dim and back.
        x_norm = rms_norm(x, w[p + "ffn_norm.weight"], c.norm_eps)
        trace(p + "ffn_norm", x_norm)
        gate = linear(x_norm, w[p + "feed_forward.w1.weight"])
        up = linear(x_norm, w[p + "feed_forward.w3.weight"])
        trace(p + "ffn.gate", gate)
        trace(p + "ffn.up", up)
        hidden = silu(gate) * up
        trace(p + "ffn.hidden", hidden)
        ffn_out = linear(hidden, w[p + "feed_forward.w2.weight"])
        trace(p + "ffn.out", ffn_out)
        x = x + ffn_out
        trace(p + "residual", x)
        return x
