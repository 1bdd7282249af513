"""ModelConfig: the numbers that fix a Llama 3 model's shape, from any checkpoint format.

Built from Meta's params.json, Hugging Face's config.json (+ generation_config.json)
or GGUF metadata; every builder ends in the same validation, so a config that
contradicts itself is refused before any weight is read.
"""

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import ConfigError, excerpt
from .rope import rope_frequencies

# Llama 3 tokenizer ids (Meta's tokenizer.model; the same in every HF snapshot).
BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128001
END_OF_MESSAGE = 128008  # <|eom_id|>: a tool call ends the turn
END_OF_TURN = 128009  # <|eot_id|>
LLAMA3_STOP_IDS = (END_OF_TEXT, END_OF_MESSAGE, END_OF_TURN)


@dataclass(frozen=True)
class RopeScaling:  # rope.py's scale_frequencies applies it
    """Llama 3.1 frequency scaling: long wavelengths are slowed down by `factor`."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


# Far beyond any real model (Llama 3.1 405B: dim 16384, 126 layers, 128 heads, ffn 53248;
# vocabularies reach ~256k; Llama 4 Scout's context is 10M), so only a corrupt or hostile
# config meets them; everything sized from a config (the cache, the rope table, parameter
# counts) stays finite and quick.
LIMITS = {"dim": 1 << 16, "n_layers": 1 << 10, "n_heads": 1 << 10, "n_kv_heads": 1 << 10,
          "vocab_size": 1 << 21, "ffn_dim": 1 << 18, "max_seq_len": 1 << 24,
          "head_dim": 1 << 12, "original_context": 1 << 24, "factor": 1 << 16}


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: Optional[RopeScaling] = None
    tie_embeddings: bool = False
    max_seq_len: int = 8192
    bos_id: Optional[int] = BEGIN_OF_TEXT
    stop_ids: tuple = LLAMA3_STOP_IDS
    head_dim: int = 0  # 0: dim // n_heads
    source: str = field(default="", compare=False)  # the file it came from, for messages

    def __post_init__(self):
        if not self.head_dim and _is_int(self.n_heads) and self.n_heads > 0 and _is_int(self.dim):
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        self.validate()

    def validate(self) -> None:
        where = f" in {self.source}" if self.source else ""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim",
                     "max_seq_len", "head_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer{where}, "
                                  f"got {excerpt(value)}")
            _check_limit(name, value, where)
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number{where}, "
                                  f"got {excerpt(value)}")
        if self.n_heads * self.head_dim != self.dim:
            raise ConfigError(f"n_heads ({self.n_heads}) x head_dim ({self.head_dim}) "
                              f"!= dim ({self.dim}){where}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE{where}, got {self.head_dim}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) is not a multiple of "
                              f"n_kv_heads ({self.n_kv_heads}){where}")
        s = self.rope_scaling
        if s is not None and not (
                all(_is_number(v) and math.isfinite(v)
                    for v in (s.factor, s.low_freq_factor, s.high_freq_factor))
                and s.factor >= 1 and s.high_freq_factor > s.low_freq_factor > 0
                and _is_int(s.original_context) and s.original_context > 0):
            raise ConfigError(f"rope scaling parameters are inconsistent{where}: {s}")
        if s is not None:
            _check_limit("rope scaling original_context", s.original_context, where)
            _check_limit("rope scaling factor", s.factor, where)
        for token in (self.bos_id, *self.stop_ids):
            if token is not None and not (_is_int(token) and 0 <= token < self.vocab_size):
                raise ConfigError(f"special token id {token} is outside the vocabulary "
                                  f"(size {self.vocab_size}){where}")

    @property
    def n_rep(self) -> int:
        """Query heads that share one key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def _check_limit(name: str, value, where: str) -> None:
    limit = LIMITS[name.split()[-1]]
    if value > limit:
        raise ConfigError(f"{name} {excerpt(value)} is beyond any real model (at most "
                          f"{limit}){where}")


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """Meta's FFN width rule: 2/3 of 4*dim, times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_REQUIRED = object()
_KIND_CHECKS = {int: _is_int, float: _is_number}  # bool is not a number; an int is a float


def config_value(values: dict, key: str, kind: type, *, source: str, default=_REQUIRED,
                 error: type = ConfigError):
    """values[key] if it is of `kind` (int, float, str, bool, list or dict), as that kind;
    `default` when absent (a JSON null counts as absent); otherwise `error` naming the key
    and `source`. The one type check for params.json, config.json and GGUF metadata, so
    "dim": "4096" is refused by name rather than failing somewhere later."""
    value = values.get(key)
    if value is None:
        if default is _REQUIRED:
            raise error(f"{source} has no '{key}'")
        return default
    if not _KIND_CHECKS.get(kind, lambda v: isinstance(v, kind))(value):
        raise error(f"{source}: '{key}' should be {kind.__name__}, got {excerpt(value)}")
    return float(value) if kind is float else value


def from_meta_params(params: dict, source: str = "params.json", *,
                     tie_embeddings: bool = False) -> ModelConfig:
    """Meta's params.json. It names no context length nor scaling factor, so both follow
    the model family: `use_scaled_rope` marks Llama 3.1+ (131072 context); the factor
    is 32 for the Llama 3.2 1B/3B widths (2048, 3072) and 8 otherwise, as Meta's
    published configs say, unless params.json gives `rope_scaling_factor` itself."""
    def value(key, kind, default=_REQUIRED):
        return config_value(params, key, kind, source=source, default=default)

    dim = value("dim", int)
    n_heads = value("n_heads", int)
    scaled = value("use_scaled_rope", bool, False)
    scaling = None
    if scaled:
        factor = value("rope_scaling_factor", float, 32.0 if dim in (2048, 3072) else 8.0)
        scaling = RopeScaling(factor=factor)
    vocab = value("vocab_size", int)
    if vocab == -1:
        raise ConfigError(f"{source}: vocab_size is -1 (a Llama 2 era params.json); set it "
                          "to the tokenizer's size, 128256 for Llama 3")
    multiple_of = value("multiple_of", int, 256)
    multiplier = value("ffn_dim_multiplier", float, None)
    if multiple_of <= 0 or dim <= 0 or not (multiplier is None or 0 < multiplier < math.inf):
        raise ConfigError(f"{source}: dim ({dim}), multiple_of ({multiple_of}) and "
                          f"ffn_dim_multiplier ({multiplier}) must be positive and finite")
    try:
        ffn_dim = meta_ffn_dim(dim, multiple_of, multiplier)
    except OverflowError:  # the rule goes through a float
        raise ConfigError(f"{source}: dim {dim} is too large") from None
    return ModelConfig(
        dim=dim,
        n_layers=value("n_layers", int),
        n_heads=n_heads,
        n_kv_heads=value("n_kv_heads", int, n_heads),
        vocab_size=vocab,
        ffn_dim=ffn_dim,
        norm_eps=value("norm_eps", float, 1e-5),
        rope_theta=value("rope_theta", float, 500000.0),
        rope_scaling=scaling,
        tie_embeddings=tie_embeddings,
        max_seq_len=value("max_seq_len", int, 131072 if scaled else 8192),
        source=source,
    )


def _token_ids(values: dict, key: str, source: str) -> tuple:
    """A token id or a list of them (HF's eos_token_id is either), as a tuple of ints."""
    value = values.get(key)
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(_is_int(token) for token in ids):
        raise ConfigError(f"{source}: '{key}' should be a token id or a list of them, "
                          f"got {excerpt(value)}")
    return tuple(ids)


def from_hf_config(config: dict, generation_config: Optional[dict] = None,
                   source: str = "config.json") -> ModelConfig:
    """Hugging Face config.json; stop tokens from generation_config.json when present.

    Rope scaling sits in `rope_scaling` (transformers 4) or `rope_parameters`
    (transformers 5, which also holds rope_theta)."""
    def value(key, kind, default=_REQUIRED):
        return config_value(config, key, kind, source=source, default=default)

    def rope_value(key, kind, default=_REQUIRED):
        return config_value(rope, key, kind, source=source + " rope scaling", default=default)

    arch = value("model_type", str, None)
    if arch not in (None, "llama"):
        raise ConfigError(f"{source}: model_type '{arch}' is not a Llama model")
    n_heads = value("num_attention_heads", int)
    rope = value("rope_scaling", dict, None) or value("rope_parameters", dict, {})
    rope_type = rope_value("rope_type", str, rope_value("type", str, "default"))
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"{source}: rope type '{rope_type}' is not supported "
                          "(only Llama 3's 'llama3' scaling or none)")
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=rope_value("factor", float),
            low_freq_factor=rope_value("low_freq_factor", float, 1.0),
            high_freq_factor=rope_value("high_freq_factor", float, 4.0),
            original_context=rope_value("original_max_position_embeddings", int, 8192),
        )
    theta = value("rope_theta", float, rope_value("rope_theta", float, 10000.0))
    generation_source = str(Path(source).with_name("generation_config.json"))
    stops = _token_ids(generation_config or {}, "eos_token_id", generation_source) or \
        _token_ids(config, "eos_token_id", source)
    return ModelConfig(
        dim=value("hidden_size", int),
        n_layers=value("num_hidden_layers", int),
        n_heads=n_heads,
        n_kv_heads=value("num_key_value_heads", int, n_heads),
        vocab_size=value("vocab_size", int),
        ffn_dim=value("intermediate_size", int),
        norm_eps=value("rms_norm_eps", float, 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=value("tie_word_embeddings", bool, False),
        max_seq_len=value("max_position_embeddings", int, 8192),
        bos_id=value("bos_token_id", int, None),
        stop_ids=stops,
        head_dim=value("head_dim", int, 0),  # 0: dim // n_heads
        source=source,
    )


def from_gguf_metadata(metadata: dict, source: str, *, embedding_rows: int = 0,
                       tie_embeddings: bool = False, rope_divisors=None) -> ModelConfig:
    """GGUF's llama.* and tokenizer.ggml.* metadata. What the metadata leaves to the tensors
    the reader passes in: the embedding's rows (the vocabulary size when no key gives it),
    whether output.weight is absent (tied embeddings) and the rope_freqs tensor as float32
    (Llama 3.1's rope scaling, see _gguf_rope_scaling)."""
    def value(key, kind, default=_REQUIRED):
        return config_value(metadata, key, kind, source=source, default=default)

    vocab = value("llama.vocab_size", int, 0) or \
        len(value("tokenizer.ggml.tokens", list, [])) or embedding_rows
    stops = [value(f"tokenizer.ggml.{kind}_token_id", int, None) for kind in ("eos", "eot", "eom")]
    n_heads = value("llama.attention.head_count", int)
    config = ModelConfig(
        dim=value("llama.embedding_length", int),
        n_layers=value("llama.block_count", int),
        n_heads=n_heads,
        n_kv_heads=value("llama.attention.head_count_kv", int, n_heads),
        vocab_size=vocab,
        ffn_dim=value("llama.feed_forward_length", int),
        norm_eps=value("llama.attention.layer_norm_rms_epsilon", float, 1e-5),
        rope_theta=value("llama.rope.freq_base", float, 10000.0),
        tie_embeddings=tie_embeddings,
        max_seq_len=value("llama.context_length", int),
        bos_id=value("tokenizer.ggml.bos_token_id", int, None),
        stop_ids=tuple(dict.fromkeys(s for s in stops if s is not None)),  # unique, in order
        head_dim=value("llama.attention.key_length", int, 0),  # 0: dim / heads
        source=source,
    )
    for key in ("llama.attention.value_length", "llama.rope.dimension_count"):
        if value(key, int, config.head_dim) != config.head_dim:
            raise ConfigError(f"{source}: {key} = {metadata[key]} differs from the head size "
                              f"{config.head_dim} (not a Llama 3 model)")
    kind = value("llama.rope.scaling.type", str, "none")
    factor = value("llama.rope.scaling.factor", float, 1.0)
    if kind not in ("none", "linear") or (kind == "linear" and factor != 1.0):
        raise ConfigError(f"{source}: rope scaling '{kind}' (factor {factor}) is not supported; "
                          "only Llama 3.1's scaling (a rope_freqs tensor) or none")
    if rope_divisors is None:
        return config
    original_context = value("llama.rope.scaling.original_context_length", int, 8192)
    return replace(config, rope_scaling=_gguf_rope_scaling(rope_divisors, original_context,
                                                           config))


def _gguf_rope_scaling(divisors, original_context: int, config: ModelConfig):
    """Llama 3.1 scaling, from llama.cpp's rope_freqs tensor.

    convert_hf_to_gguf.py does not write the scaling parameters; it writes the divisor
    each frequency gets (1 for short wavelengths, `factor` for long ones, a blend in
    between). The largest divisor is the factor; the other parameters are Llama 3's
    (low 1, high 4, original context 8192 unless the metadata says otherwise), and the
    divisors they imply (rope.py's own formula, not a second copy of it) must match the
    stored ones, or the file is refused."""
    half = config.head_dim // 2
    if divisors.shape != (half,):
        raise ConfigError(f"{config.source}: rope_freqs has shape {divisors.shape}, expected "
                          f"({half},) for head size {config.head_dim}")
    if np.all(divisors == 1):
        return None
    scaling = RopeScaling(factor=float(divisors.max()), original_context=original_context)
    plain = rope_frequencies(config.head_dim, config.rope_theta)
    with np.errstate(all="ignore"):  # damaged divisors (inf, NaN) are refused just below
        implied = plain / rope_frequencies(config.head_dim, config.rope_theta, scaling)
    # rtol: the converter computes the blend in float32 in another order (a few ulp);
    # any other factor or context moves some divisor by far more than 1e-4.
    if not np.allclose(divisors, implied, rtol=1e-4, atol=0):
        raise ConfigError(f"{config.source}: rope_freqs does not match Llama 3.1 scaling with "
                          f"factor {scaling.factor}, low/high frequency factors 1/4 and "
                          f"original context {scaling.original_context}")
    return scaling
