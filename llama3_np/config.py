"""ModelConfig: the numbers that fix a Llama 3 model's shape, from any checkpoint format.

Built from Meta's params.json, Hugging Face's config.json (+ generation_config.json)
or GGUF metadata; every builder ends in the same validation, so a config that
contradicts itself is refused before any weight is read.
"""

from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError

# Llama 3 tokenizer ids (Meta's tokenizer.model; the same in every HF snapshot).
BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128001
END_OF_MESSAGE = 128008  # <|eom_id|>: a tool call ends the turn
END_OF_TURN = 128009  # <|eot_id|>
LLAMA3_STOP_IDS = (END_OF_TEXT, END_OF_MESSAGE, END_OF_TURN)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency scaling: long wavelengths are slowed down by `factor`."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


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
        if not self.head_dim and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        self.validate()

    def validate(self) -> None:
        where = f" in {self.source}" if self.source else ""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim",
                     "max_seq_len", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer{where}, got {value!r}")
        if self.n_heads * self.head_dim != self.dim:
            raise ConfigError(f"n_heads ({self.n_heads}) x head_dim ({self.head_dim}) "
                              f"!= dim ({self.dim}){where}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE{where}, got {self.head_dim}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) is not a multiple of "
                              f"n_kv_heads ({self.n_kv_heads}){where}")
        if not (self.norm_eps > 0):
            raise ConfigError(f"norm_eps must be positive{where}, got {self.norm_eps!r}")
        if not (self.rope_theta > 0):
            raise ConfigError(f"rope_theta must be positive{where}, got {self.rope_theta!r}")
        s = self.rope_scaling
        if s is not None and not (s.factor >= 1 and s.high_freq_factor > s.low_freq_factor > 0
                                  and s.original_context > 0):
            raise ConfigError(f"rope scaling parameters are inconsistent{where}: {s}")
        for token in (self.bos_id, *self.stop_ids):
            if token is not None and not 0 <= token < self.vocab_size:
                raise ConfigError(f"special token id {token} is outside the vocabulary "
                                  f"(size {self.vocab_size}){where}")

    @property
    def n_rep(self) -> int:
        """Query heads that share one key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """Meta's FFN width rule: 2/3 of 4*dim, times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _need(d: dict, key: str, source: str):
    if key not in d:
        raise ConfigError(f"{source} has no '{key}'")
    return d[key]


def from_meta_params(params: dict, source: str = "params.json", *,
                     tie_embeddings: bool = False) -> ModelConfig:
    """Meta's params.json. It names no context length nor scaling factor, so both follow
    the model family: `use_scaled_rope` marks Llama 3.1+ (131072 context); the factor
    is 32 for the Llama 3.2 1B/3B widths (2048, 3072) and 8 otherwise, as Meta's
    published configs say, unless params.json gives `rope_scaling_factor` itself."""
    dim = _need(params, "dim", source)
    n_heads = _need(params, "n_heads", source)
    scaled = bool(params.get("use_scaled_rope", False))
    scaling = None
    if scaled:
        factor = params.get("rope_scaling_factor") or (32.0 if dim in (2048, 3072) else 8.0)
        scaling = RopeScaling(factor=float(factor))
    vocab = _need(params, "vocab_size", source)
    if vocab == -1:
        raise ConfigError(f"{source}: vocab_size is -1 (a Llama 2 era params.json); set it "
                          "to the tokenizer's size, 128256 for Llama 3")
    return ModelConfig(
        dim=dim,
        n_layers=_need(params, "n_layers", source),
        n_heads=n_heads,
        n_kv_heads=params.get("n_kv_heads") or n_heads,
        vocab_size=vocab,
        ffn_dim=meta_ffn_dim(dim, params.get("multiple_of", 256),
                             params.get("ffn_dim_multiplier")),
        norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 500000.0)),
        rope_scaling=scaling,
        tie_embeddings=tie_embeddings,
        max_seq_len=int(params.get("max_seq_len") or (131072 if scaled else 8192)),
        source=source,
    )


def _token_ids(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def from_hf_config(config: dict, generation_config: Optional[dict] = None,
                   source: str = "config.json") -> ModelConfig:
    """Hugging Face config.json; stop tokens from generation_config.json when present.

    Rope scaling sits in `rope_scaling` (transformers 4) or `rope_parameters`
    (transformers 5, which also holds rope_theta)."""
    arch = config.get("model_type")
    if arch not in (None, "llama"):
        raise ConfigError(f"{source}: model_type '{arch}' is not a Llama model")
    dim = _need(config, "hidden_size", source)
    n_heads = _need(config, "num_attention_heads", source)
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"{source}: rope type '{rope_type}' is not supported "
                          "(only Llama 3's 'llama3' scaling or none)")
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(_need(rope, "factor", source + " rope scaling")),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_context=int(rope.get("original_max_position_embeddings", 8192)),
        )
    theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    stops = _token_ids((generation_config or {}).get("eos_token_id")) or \
        _token_ids(config.get("eos_token_id"))
    return ModelConfig(
        dim=dim,
        n_layers=_need(config, "num_hidden_layers", source),
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=_need(config, "vocab_size", source),
        ffn_dim=_need(config, "intermediate_size", source),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=float(theta),
        rope_scaling=scaling,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_seq_len=int(config.get("max_position_embeddings", 8192)),
        bos_id=config.get("bos_token_id"),
        stop_ids=stops,
        head_dim=config.get("head_dim") or dim // n_heads,
        source=source,
    )
