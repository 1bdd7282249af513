"""Describe a model: its configuration, parameters by component, what each group of
weights is kept in while running (at the --dtype and --backend given) and its bytes, the
memory at each precision, rope settings and tokenizer. Decodes no weights: --config takes
a params.json / config.json alone (e.g. to see what Llama 3 70B would need before
downloading it)."""

from pathlib import Path

from ..errors import InputError
from ..info import BITS_PER_WEIGHT, COMPONENTS, parameter_counts, read_config_file, weight_bytes
from ..kv_cache import KV_DTYPES, kv_bytes_per_position
from ..memory import human_size
from .common import add_model_arguments, model_path


def add_arguments(parser) -> None:
    group = add_model_arguments(parser)
    group.add_argument("--config", type=Path, default=None,
                       help="a params.json or config.json alone, without weights "
                            "(instead of --model)")


def run(args) -> int:
    if args.config is not None:
        if args.model is not None:
            raise InputError("give --model or --config, not both")
        config, checkpoint, tokenizer, groups = read_config_file(args.config), None, None, []
    else:
        from ..checkpoint.detect import read_checkpoint
        from ..kernels import active_backend, set_backend
        from ..llama import quantisation_kept
        from ..precision import weight_groups
        from ..tokenizer import load_tokenizer

        checkpoint = read_checkpoint(model_path(args))  # memory-mapped: nothing is decoded
        config = checkpoint.config
        tokenizer = load_tokenizer(checkpoint, args.tokenizer)
        set_backend(args.backend)
        groups = weight_groups(checkpoint.tensors, args.dtype,
                               quantisation_kept(args.dtype, keep_quantized=None))
        args.backend = active_backend()
    print("\n".join(describe(config, checkpoint, tokenizer, groups, args)))
    return 0


def describe(config, checkpoint=None, tokenizer=None, groups=(), options=None) -> list:
    """The report's lines; `groups` (precision.weight_groups) and `options` (dtype,
    backend) describe the weights in memory."""
    c = config
    lines = [_row("source", f"{checkpoint.path} ({checkpoint.format})" if checkpoint
                  else c.source)]
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
    lines.append(_row("  total", f"{counts['total']:>15,}"))
    if groups:
        lines += ["", _in_memory_title(options)] + _in_memory(groups)
    lines += ["", "memory for the weights at each --dtype"]
    for dtype, bits in BITS_PER_WEIGHT.items():
        lines.append(_row(f"  {dtype}", f"{human_size(weight_bytes(c, dtype)):>10}  "
                                        f"({bits:g} bits per matrix weight)"))
    lines += ["", "kv cache (keys and values of every position, all layers; --kv-dtype)"]
    for kv_dtype in KV_DTYPES:
        per_token = kv_bytes_per_position(c, kv_dtype)
        lines.append(_row(f"  {kv_dtype}", f"{human_size(per_token):>10} per token, "
                                           f"{human_size(per_token * c.max_seq_len)} at the "
                                           f"full context of {c.max_seq_len:,} tokens"))
    lines += ["", _tokenizer_line(c, tokenizer)]
    return lines


def _in_memory_title(options) -> str:
    dtype = f"--dtype {options.dtype}" if options.dtype else "the default --dtype"
    return f"in memory at {dtype}, {options.backend} kernels (stored -> kept as)"


def _in_memory(groups) -> list:
    """One line per component and form: tensors, the file's type, the form, bytes."""
    form_width = max(len(g.form) for g in groups)
    lines = [_row("  " + g.component, f"{g.tensors:>3} x {g.stored:<8} -> "
                                      f"{g.form:<{form_width}}  {human_size(g.bytes):>10}")
             for g in groups]
    total = human_size(sum(g.bytes for g in groups))
    return lines + [_row("  total", f"{'':<{20 + form_width}}{total:>10}")]


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
