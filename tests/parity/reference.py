"""A torch reference that follows Meta's llama3 model.py (llama-models, reference_impl).

Same arithmetic, same order: precompute_freqs_cis with apply_scaling and torch.polar,
RoPE through torch.view_as_complex on (real, imag) pairs, repeat_kv, scores / sqrt(d)
plus an additive -inf mask, softmax in float32, a preallocated KV cache written at
start_pos. Only what a single process needs is kept (plain matmuls instead of
fairscale's parallel layers, batch size 1), and every step is handed to `trace` under
llama3_np's step names and layout, for the tensors transformers' modules do not expose
(q and k after RoPE in Meta's layout, the raw and masked scores).
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F


def apply_scaling(freqs: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Meta's Llama 3.1 frequency scaling; the factor is 8 in 3.1's code, 32 for 3.2."""
    low_freq_factor, high_freq_factor = 1, 4
    old_context_len = 8192  # original llama3 length
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * torch.pi / freqs
    new_freqs = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    return torch.where((wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen),
                       (1 - smooth) * new_freqs / scale_factor + smooth * new_freqs, new_freqs)


def rope_frequencies(head_dim: int, theta: float, scale_factor: Optional[float]) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: (head_dim // 2)].float() / head_dim))
    return freqs if scale_factor is None else apply_scaling(freqs, scale_factor)


def precompute_freqs_cis(head_dim: int, end: int, theta: float,
                         scale_factor: Optional[float]) -> torch.Tensor:
    freqs = rope_frequencies(head_dim, theta, scale_factor)
    t = torch.arange(end, dtype=torch.float32)
    freqs = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(freqs), freqs)  # complex64, (end, head_dim/2)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x (seq, heads, head_dim) rotated by freqs_cis (seq, head_dim/2)."""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_ * freqs_cis[:, None, :]).flatten(2).type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(seq, n_kv_heads, head_dim) -> (seq, n_kv_heads * n_rep, head_dim), kv head h // n_rep."""
    seq, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :].expand(seq, n_kv_heads, n_rep, head_dim).reshape(
        seq, n_kv_heads * n_rep, head_dim)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


def _no_trace(name: str, tensor: torch.Tensor) -> None:
    pass


class MetaReference:
    """Meta's Transformer over canonical torch weights (Meta's names and q/k layout).

    `scale_factor` is None for Llama 3.0 (no scaling), else the rope scaling factor.
    `max_positions` sizes the KV cache and rotation table (Meta: max_seq_len and twice
    that); a rotation depends only on its position, not on the table's length."""

    def __init__(self, weights: dict, *, n_layers: int, n_heads: int, n_kv_heads: int,
                 norm_eps: float, rope_theta: float, scale_factor: Optional[float],
                 max_positions: int):
        self.w = weights
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self.dim = weights["tok_embeddings.weight"].shape[1]
        self.head_dim = self.dim // n_heads
        self.n_rep = n_heads // n_kv_heads
        self.norm_eps = norm_eps
        self.freqs_cis = precompute_freqs_cis(self.head_dim, max_positions, rope_theta,
                                              scale_factor)
        cache_shape = (max_positions, n_kv_heads, self.head_dim)
        self.cache_k = [torch.zeros(cache_shape) for _ in range(n_layers)]
        self.cache_v = [torch.zeros(cache_shape) for _ in range(n_layers)]
        self.trace = _no_trace

    @torch.inference_mode()
    def forward(self, tokens, start_pos: int = 0) -> torch.Tensor:
        """float32 logits (seq, vocab) for tokens at positions start_pos.. ."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        seqlen = len(tokens)
        h = F.embedding(tokens, self.w["tok_embeddings.weight"])
        self.trace("embeddings", h)
        freqs_cis = self.freqs_cis[start_pos: start_pos + seqlen]
        mask = None
        if seqlen > 1:
            mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)
            # Row i is position start_pos + i: it sees every cached position.
            mask = torch.hstack([torch.zeros((seqlen, start_pos)), mask]).type_as(h)
        for i in range(self.n_layers):
            h = self.block(i, h, start_pos, freqs_cis, mask)
        h = rms_norm(h, self.w["norm.weight"], self.norm_eps)
        self.trace("norm", h)
        logits = F.linear(h, self.w["output.weight"]).float()
        self.trace("logits", logits)
        return logits

    def block(self, i: int, x, start_pos: int, freqs_cis, mask) -> torch.Tensor:
        w, trace, p = self.w, self.trace, f"layers.{i}."
        seqlen = len(x)
        x_norm = rms_norm(x, w[p + "attention_norm.weight"], self.norm_eps)
        trace(p + "attention_norm", x_norm)
        xq = F.linear(x_norm, w[p + "attention.wq.weight"])
        xk = F.linear(x_norm, w[p + "attention.wk.weight"])
        xv = F.linear(x_norm, w[p + "attention.wv.weight"])
        xq = xq.view(seqlen, self.n_heads, self.head_dim)
        xk = xk.view(seqlen, self.n_kv_heads, self.head_dim)
        xv = xv.view(seqlen, self.n_kv_heads, self.head_dim)
        trace(p + "attention.q", xq)
        trace(p + "attention.k", xk)
        trace(p + "attention.v", xv)
        xq, xk = apply_rotary_emb(xq, freqs_cis), apply_rotary_emb(xk, freqs_cis)
        trace(p + "attention.q_rotated", xq)
        trace(p + "attention.k_rotated", xk)

        self.cache_k[i][start_pos: start_pos + seqlen] = xk
        self.cache_v[i][start_pos: start_pos + seqlen] = xv
        keys = repeat_kv(self.cache_k[i][: start_pos + seqlen], self.n_rep)
        values = repeat_kv(self.cache_v[i][: start_pos + seqlen], self.n_rep)

        xq, keys, values = xq.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1)
        scores = torch.matmul(xq, keys.transpose(1, 2)) / math.sqrt(self.head_dim)
        trace(p + "attention.scores", scores)  # (n_heads, seqlen, cache_len + seqlen)
        if mask is not None:
            scores = scores + mask
        trace(p + "attention.masked_scores", scores)
        probs = F.softmax(scores.float(), dim=-1).type_as(xq)
        trace(p + "attention.probs", probs)
        heads_out = torch.matmul(probs, values).transpose(0, 1)  # (seqlen, n_heads, head_dim)
        trace(p + "attention.heads_out", heads_out)
        attention_out = F.linear(heads_out.reshape(seqlen, -1), w[p + "attention.wo.weight"])
        trace(p + "attention.out", attention_out)
        h = x + attention_out
        trace(p + "attention_residual", h)

        h_norm = rms_norm(h, w[p + "ffn_norm.weight"], self.norm_eps)
        trace(p + "ffn_norm", h_norm)
        gate = F.linear(h_norm, w[p + "feed_forward.w1.weight"])
        up = F.linear(h_norm, w[p + "feed_forward.w3.weight"])
        trace(p + "ffn.gate", gate)
        trace(p + "ffn.up", up)
        hidden = F.silu(gate) * up
        trace(p + "ffn.hidden", hidden)
        ffn_out = F.linear(hidden, w[p + "feed_forward.w2.weight"])
        trace(p + "ffn.out", ffn_out)
        out = h + ffn_out
        trace(p + "residual", out)
        return out
