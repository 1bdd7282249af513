"""The model's contract: every tensor a Llama 3 model needs, under Meta's names, and its shape.

Readers check a file against it (checkpoint.select_canonical), info counts parameters
with it, tests and benchmarks build random checkpoints from it. It depends on the
config alone: the readers stand on it, never the other way round.
"""

from .config import ModelConfig


def canonical_names(n_layers: int, tie_embeddings: bool = False) -> list:
    """Every tensor a Llama 3 model needs, in Meta's names."""
    names = ["tok_embeddings.weight", "norm.weight"]
    if not tie_embeddings:
        names.append("output.weight")
    for i in range(n_layers):
        p = f"layers.{i}."
        names += [p + "attention_norm.weight", p + "ffn_norm.weight"]
        names += [p + f"attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")]
        names += [p + f"feed_forward.{w}.weight" for w in ("w1", "w2", "w3")]
    return names


def iter_canonical_shapes(config: ModelConfig):
    """(name, shape) of every canonical tensor, output.weight included, layer by layer
    (row-major: out_features first). A generator, so a reader checking a file against
    a corrupt layer count (10**9) stops at the first missing layer."""
    c = config
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    yield "tok_embeddings.weight", (c.vocab_size, c.dim)
    yield "norm.weight", (c.dim,)
    yield "output.weight", (c.vocab_size, c.dim)
    per_layer = {
        "attention_norm.weight": (c.dim,), "ffn_norm.weight": (c.dim,),
        "attention.wq.weight": (q_out, c.dim), "attention.wk.weight": (kv_out, c.dim),
        "attention.wv.weight": (kv_out, c.dim), "attention.wo.weight": (c.dim, q_out),
        "feed_forward.w1.weight": (c.ffn_dim, c.dim), "feed_forward.w2.weight": (c.dim, c.ffn_dim),
        "feed_forward.w3.weight": (c.ffn_dim, c.dim),
    }
    for i in range(c.n_layers):
        for name, shape in per_layer.items():
            yield f"layers.{i}.{name}", shape


def canonical_shapes(config: ModelConfig) -> dict:
    """The shape each canonical tensor must have (row-major: out_features first)."""
    return dict(iter_canonical_shapes(config))
