"""Describe a model: its configuration, parameters by component, memory at each precision,
rope settings and tokenizer. Reads no weights: --config takes a params.json / config.json
alone (e.g. to see what Llama 3 70B would need before downloading it)."""

from collections import Counter
from pathlib import Path

from ..info import BITS_PER_WEIGHT, COMPONENTS, parameter_counts, read_config_file, weight_bytes
from ..kv_cache import KV_DTYPES, kv_bytes_per_position
from ..memory import human_size
from ..storage import BF16, distinct
from .common import model_path


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=None,
                        help="checkpoint: a Meta or Hugging Face directory, or a .gguf file "
                             "(default: the demo model)")
    source.add_argument("--config", type=Path, default=None,
                        help="a params.json or config.json alone, without weights")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.model to describe instead of the one found with the model")


def run(args) -> int:
    if args.config is not None:
        config, checkpoint, tokenizer = read_config_file(args.config), None, None
    else:
        from ..checkpoint.detect import read_checkpoint
        from ..tokenizer import load_tokenizer

        checkpoint = read_checkpoint(model_path(args))  # memory-mapped: nothing is decoded
        config = checkpoint.config
        tokenizer = load_tokenizer(checkpoint, args.tokenizer)
    print("\n".join(describe(config, checkpoint, tokenizer)))
    return 0


def describe(config, checkpoint=None, tokenizer=None) -> list:
    """The report's lines."""
    c = config
    lines = [_row("source", f"{checkpoint.path} ({checkpoint.format})" if checkpoint
                  else c.source)]
    if checkpoint is not None:
        stored = Counter(_storage_kind(t) for t in distinct(checkpoint.tensors.values()))
        lines.append(_row("stored as", ", ".join(f"{kind} ({n} tensor{'s' * (n != 1)})"
                                                 for kind, n in stored.most_common())))
    lines += [
        _row("dim", c.dim),
        _row("layers", c.n_layers),
        _row("heads", f"{c.n_heads} query, {c.n_kv_heads} key/value ({c.n_rep} queries share "
                      f"each key/value head), head dim {c.head_dim}"),
        _row("ffn dim", c.ffn_dim),
        _row("vocabulary", f"{c.vocab_size:,}"),
        _row("context", f"{c.max_seq_len:,} tokens"),
        _row("norm eps", f"{c.norm_eps:g}"),
        _row("rope", _rope(c)),
        _row("embeddings", "tied (the output matrix is the embedding)" if c.tie_embeddings
             else "separate input and output matrices"),
        "",
        "parameters",
    ]
    counts = parameter_counts(c)
    for component in COMPONENTS:
        share = counts[component] / counts["total"]
        note = " (tied: the embedding)" if component == "output" and c.tie_embeddings else ""
        lines.append(_row("  " + component, f"{counts[component]:>15,}  {share:6.1%}{note}"))
    lines += [_row("  total", f"{counts['total']:>15,}"), "", "memory for the weights"]
    for dtype, bits in BITS_PER_WEIGHT.items():
        lines.append(_row(f"  {dtype}", f"{human_size(weight_bytes(c, dtype)):>10}  "
                                        f"({bits:g} bits per matrix weight)"))
    lines += ["", f"kv cache (keys and values of every position, all layers; --kv-dtype)"]
    for kv_dtype in KV_DTYPES:
        per_token = kv_bytes_per_position(c, kv_dtype)
        lines.append(_row(f"  {kv_dtype}", f"{human_size(per_token):>10} per token, "
                                           f"{human_size(per_token * c.max_seq_len)} at the "
                                           f"full context of {c.max_seq_len:,} tokens"))
    lines += ["", _tokenizer_line(c, tokenizer)]
    return lines


def _row(name: str, value) -> str:
    return f"{name:<14}{value}"


def _rope(c) -> str:
    text = f"theta {c.rope_theta:g}"
    s = c.rope_scaling
    if s is None:
        return text + ", no scaling"
    return (text + f", Llama 3.1 scaling: factor {s.factor:g}, low/high frequency factors "
                   f"{s.low_freq_factor:g}/{s.high_freq_factor:g}, original context "
                   f"{s.original_context:,}")


def _tokenizer_line(c, tokenizer) -> str:
    if tokenizer is None:
        return _row("tokenizer", f"{c.vocab_size:,} ids (the config's vocabulary; no "
                                 "tokenizer read)")
    specials = len(tokenizer.special_tokens)
    chat = tokenizer.chat_format or "none"
    return _row("tokenizer", f"{tokenizer.n_vocab:,} tokens ({specials} special), chat format "
                             f"{chat}, bos {tokenizer.bos_id}, stop ids "
                             f"{', '.join(map(str, tokenizer.stop_ids))}")


def _storage_kind(tensor) -> str:
    if isinstance(tensor, BF16):
        return "bf16"
    return getattr(tensor, "ggml_type", None) or str(tensor.dtype)
