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


# ---- the steps a forward pass hands to its trace ----------------------------------------
# Declared here, in walk-through order, so inspection knows every step's name and axes
# without running a model; tests/test_inspect.py holds model.py's trace calls to this list
# (names, order, shapes), so the two cannot drift apart.

# What each axis of a traced tensor runs along.
AXES = {
    "seq": "tokens fed in this forward call",
    "total": "positions attended: the KV cache so far plus this call's tokens",
    "dim": "model width",
    "n_heads": "query heads",
    "n_kv_heads": "key/value heads (each shared by n_heads / n_kv_heads query heads)",
    "head_dim": "width of one head",
    "ffn_dim": "feed-forward width",
    "vocab_size": "vocabulary",
}

_ROWS = ("seq", "dim")
_Q_HEADS, _KV_HEADS = ("seq", "n_heads", "head_dim"), ("seq", "n_kv_heads", "head_dim")
_SCORES = ("n_heads", "seq", "total")
_HIDDEN = ("seq", "ffn_dim")

BEFORE_LAYERS = (("tokens", ("seq",)), ("embeddings", _ROWS))
LAYER_STEPS = (  # each under "layers.{i}."
    ("attention_norm", _ROWS),
    ("attention.q", _Q_HEADS), ("attention.k", _KV_HEADS), ("attention.v", _KV_HEADS),
    ("attention.q_rotated", _Q_HEADS), ("attention.k_rotated", _KV_HEADS),
    ("attention.scores", _SCORES), ("attention.masked_scores", _SCORES),
    ("attention.probs", _SCORES),
    ("attention.heads_out", _Q_HEADS), ("attention.out", _ROWS),
    ("attention_residual", _ROWS),
    ("ffn_norm", _ROWS),
    ("ffn.gate", _HIDDEN), ("ffn.up", _HIDDEN), ("ffn.hidden", _HIDDEN), ("ffn.out", _ROWS),
    ("residual", _ROWS),
)
AFTER_LAYERS = (("norm", _ROWS), ("logits", ("seq", "vocab_size")))


def iter_step_axes(n_layers: int):
    """(step name, its axes) of every step of a forward pass, in walk-through order.
    (A forward call with last_only keeps one position in "norm" and "logits".)"""
    yield from BEFORE_LAYERS
    for i in range(n_layers):
        for name, axes in LAYER_STEPS:
            yield f"layers.{i}.{name}", axes
    yield from AFTER_LAYERS
