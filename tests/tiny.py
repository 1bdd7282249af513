"""Tiny random Llama 3 models for tests: canonical weights in Meta's layout."""

import numpy as np

from llama3_np.config import ModelConfig, RopeScaling
from llama3_np.schema import canonical_shapes

# Small, but every structural feature of Llama 3: GQA (4 heads share 2 kv heads),
# rope scaling, an FFN wider than dim, a vocabulary holding the Llama 3 special ids.
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, ffn_dim=160,
            norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling=RopeScaling(factor=8.0, original_context=64), max_seq_len=512)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def random_weights(config: ModelConfig, seed: int = 0) -> dict:
    """Canonical float32 weights, scaled so activations stay O(1) through the layers."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in canonical_shapes(config).items():
        if config.tie_embeddings and name == "output.weight":
            continue
        if len(shape) == 1:  # norm gains near 1
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            scale = 1.0 if name == "tok_embeddings.weight" else shape[1] ** -0.5
            weights[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    if config.tie_embeddings:
        weights["output.weight"] = weights["tok_embeddings.weight"]
    return weights
