"""Checkpoint readers: one per file format, all returning the same Checkpoint.

A Checkpoint holds the ModelConfig and the weights under Meta's canonical names
(`tok_embeddings.weight`, `layers.{i}.attention.wq.weight`, ..., `norm.weight`,
`output.weight`) in Meta's layout: q and k rows in adjacent (real, imag) pairs.
Tensors stay in storage precision (see llama3_np/storage.py); the loader decides
what to keep in memory.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ModelConfig


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict  # canonical name -> ndarray or stored tensor
    path: Path
    format: str  # "meta", "hf" or "gguf"
    tokenizer_file: Optional[Path] = None  # tokenizer.model / tokenizer.json, if any
    metadata: dict = field(default_factory=dict)  # GGUF key/values (tokenizer lives here)


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


def canonical_shapes(config: ModelConfig) -> dict:
    """The shape each canonical tensor must have (row-major: out_features first)."""
    c = config
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {"tok_embeddings.weight": (c.vocab_size, c.dim), "norm.weight": (c.dim,),
              "output.weight": (c.vocab_size, c.dim)}
    per_layer = {
        "attention_norm.weight": (c.dim,), "ffn_norm.weight": (c.dim,),
        "attention.wq.weight": (q_out, c.dim), "attention.wk.weight": (kv_out, c.dim),
        "attention.wv.weight": (kv_out, c.dim), "attention.wo.weight": (c.dim, q_out),
        "feed_forward.w1.weight": (c.ffn_dim, c.dim), "feed_forward.w2.weight": (c.dim, c.ffn_dim),
        "feed_forward.w3.weight": (c.ffn_dim, c.dim),
    }
    for i in range(c.n_layers):
        shapes.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes
