"""The Llama 3 model shapes the parity suite checks: real widths, fewer layers.

Hidden size, head counts, kv heads, head_dim (128; 64 for Llama 3.2 1B: 2048 / 32),
FFN width, rope theta and scaling are each model's own; only the depth is cut (2
layers), and for the two 8B shapes the vocabulary (4096 instead of 128256: two untied
128256 x 4096 matrices would be 4 GB of float32 per model). The tied Llama 3.2 shapes
keep the full 128256 vocabulary, so the Llama 3 special token ids are real there.
"""

from dataclasses import dataclass
from typing import Optional

FULL_VOCAB = 128256
REDUCED_VOCAB = 4096


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_factor: Optional[float]  # Llama 3.1 scaling factor; None for Llama 3.0
    tied: bool
    vocab_size: int
    n_layers: int = 2
    # Meta's params.json gets the FFN width through this rule (config.meta_ffn_dim).
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def max_seq_len(self) -> int:
        """Context length as the published configs give it."""
        return 8192 if self.rope_factor is None else 131072

    def hf_config_kwargs(self) -> dict:
        """transformers.LlamaConfig arguments (transformers 5 names)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_factor is not None:
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta,
                    "factor": self.rope_factor, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        return dict(hidden_size=self.dim, intermediate_size=self.ffn_dim,
                    num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                    num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
                    vocab_size=self.vocab_size, rms_norm_eps=self.norm_eps,
                    rope_parameters=rope, max_position_embeddings=self.max_seq_len,
                    tie_word_embeddings=self.tied, pad_token_id=None, **self.special_tokens())

    def special_tokens(self) -> dict:
        """Meta's published ids (Instruct's stop list) where the vocabulary holds them."""
        if self.vocab_size < FULL_VOCAB:
            return {"bos_token_id": None, "eos_token_id": None}
        return {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}

    def meta_params(self) -> dict:
        """params.json as Meta publishes it for this model (with our depth and vocab)."""
        params = {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads,
                  "n_kv_heads": self.n_kv_heads, "vocab_size": self.vocab_size,
                  "multiple_of": self.multiple_of,
                  "ffn_dim_multiplier": self.ffn_dim_multiplier, "norm_eps": self.norm_eps,
                  "rope_theta": self.rope_theta}
        if self.rope_factor is not None:
            params["use_scaled_rope"] = True
        return params


SHAPES = [
    Shape("llama-3.0-8b", dim=4096, n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_factor=None,
          tied=False, vocab_size=REDUCED_VOCAB, multiple_of=1024, ffn_dim_multiplier=1.3),
    Shape("llama-3.1-8b", dim=4096, n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_factor=8.0,
          tied=False, vocab_size=REDUCED_VOCAB, multiple_of=1024, ffn_dim_multiplier=1.3),
    Shape("llama-3.2-1b", dim=2048, n_heads=32, n_kv_heads=8, ffn_dim=8192, rope_factor=32.0,
          tied=True, vocab_size=FULL_VOCAB, multiple_of=256, ffn_dim_multiplier=1.5),
    Shape("llama-3.2-3b", dim=3072, n_heads=24, n_kv_heads=8, ffn_dim=8192, rope_factor=32.0,
          tied=True, vocab_size=FULL_VOCAB, multiple_of=256, ffn_dim_multiplier=1.0),
]
SHAPES_BY_NAME = {shape.name: shape for shape in SHAPES}

# Positions past 8192, where Llama 3.1 scaling changes the rotations: one small layer
# (a prompt of 8300 tokens stays quick) with the real head_dim 128, rope theta and
# scaling of Llama 3.1 (factor 8) and Llama 3.2 (factor 32).
LONG_CONTEXT_SHAPES = [
    Shape(f"long-context-factor-{factor:g}", dim=512, n_heads=4, n_kv_heads=2, ffn_dim=1024,
          rope_factor=factor, tied=False, vocab_size=REDUCED_VOCAB, n_layers=1)
    for factor in (8.0, 32.0)
]
