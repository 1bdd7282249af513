"""Parameter arithmetic: how many weights a ModelConfig implies, and what they weigh.

Everything here follows from the config alone (the tensor shapes come from
schema.canonical_shapes), so it works for a params.json / config.json without
any weights: Llama 3 8B has 8,030,261,248 parameters, Llama 3.2 1B 1,235,814,400.
"""

import math
from dataclasses import replace
from pathlib import Path

from .config import ModelConfig, from_hf_config, from_meta_params
from .errors import ConfigError
from .files import read_json_object
from .formats.convert import BYTES_PER_WEIGHT
from .schema import canonical_shapes

# Components in the order a forward pass meets them.
COMPONENTS = ("embedding", "attention q", "attention k", "attention v", "attention o",
              "ffn gate", "ffn up", "ffn down", "norms", "output")
_COMPONENT_OF = {  # canonical name (without "layers.{i}.") -> component
    "tok_embeddings.weight": "embedding", "output.weight": "output",
    "attention.wq.weight": "attention q", "attention.wk.weight": "attention k",
    "attention.wv.weight": "attention v", "attention.wo.weight": "attention o",
    "feed_forward.w1.weight": "ffn gate", "feed_forward.w3.weight": "ffn up",
    "feed_forward.w2.weight": "ffn down",
    "attention_norm.weight": "norms", "ffn_norm.weight": "norms", "norm.weight": "norms",
}

# Bits each weight of a matrix takes in memory at each --dtype (formats/convert.py).
BITS_PER_WEIGHT = {dtype: 8 * size for dtype, size in BYTES_PER_WEIGHT.items()}
NORM_BITS = 32.0  # norm gains (vectors) stay float32 at every dtype


def parameter_counts(config: ModelConfig) -> dict:
    """Parameters per component (COMPONENTS order) and their "total"; with tied
    embeddings the output matrix is the embedding, counted once (output: 0). Arithmetic:
    one layer's shapes times the layer count, not one entry per layer."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, shape in canonical_shapes(replace(config, n_layers=1)).items():
        component = component_of(name)
        if component == "output" and config.tie_embeddings:
            continue
        copies = config.n_layers if name.startswith("layers.") else 1
        counts[component] += copies * math.prod(shape)
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


def component_of(name: str) -> str:
    # "layers.3.attention.wq.weight" -> "attention.wq.weight"; top-level names as they are.
    key = name.split(".", 2)[2] if name.startswith("layers.") else name
    return _COMPONENT_OF[key]


def weight_bytes(config: ModelConfig, dtype: str) -> int:
    """Bytes the weights take in memory when kept in `dtype` ("f32", "bf16", "q8")."""
    if dtype not in BITS_PER_WEIGHT:
        raise ConfigError(f"unknown dtype {dtype!r} (known: {', '.join(BITS_PER_WEIGHT)})")
    counts = parameter_counts(config)
    norms = counts["norms"]
    matrices = counts["total"] - norms
    return int(round((matrices * BITS_PER_WEIGHT[dtype] + norms * NORM_BITS) / 8))


def read_config_file(path) -> ModelConfig:
    """A ModelConfig from Meta's params.json or Hugging Face's config.json alone.

    params.json does not say whether the embeddings are tied; Meta ties them in the
    Llama 3.2 1B and 3B models only, recognised by their widths (2048, 3072)."""
    path = Path(path)
    doc = read_json_object(path, ConfigError)
    if "hidden_size" in doc:
        generation = path.with_name("generation_config.json")
        extra = read_json_object(generation, ConfigError) if generation.exists() else None
        return from_hf_config(doc, extra, source=str(path))
    if "dim" in doc:
        tied = doc.get("dim") in (2048, 3072) and bool(doc.get("use_scaled_rope"))
        return from_meta_params(doc, source=str(path), tie_embeddings=tied)
    raise ConfigError(f"{path} is neither a Meta params.json (no 'dim') nor a Hugging Face "
                      "config.json (no 'hidden_size')")
