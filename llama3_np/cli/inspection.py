"""Run PROMPT through the model once and show each step of the forward pass, in the order
of the "Llama 3 from scratch" walk-through: every tensor's name, shape, dtype, statistics
and first values (at the last prompt position); then the prompt's tokens and the most
likely next tokens.

By default layer 0 and the last layer are shown in full and the layers in between by
their residual stream only; --layer and --step choose exactly what is shown.

    python run.py inspect "The capital of France is"
    python run.py inspect --step "*.probs" --layer 0 --head 2 "The capital of France is"
    python run.py inspect --list
    python run.py inspect --dump steps.npz --plot plots/ "The capital of France is"
"""

import sys
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..model import softmax
from ..trace import AXES, axis_sizes, step_axes, step_layer, token_label
from ..wording import count
from .common import add_model_arguments, load_model, model_path, read_prompt

WIDTH = 100  # the terminal width the table is laid out for
STAT_WIDTH = 10  # one "%.3g" number ("-1.23e-05") and a space


def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to run through the model ('-' reads standard input)")
    add_model_arguments(parser)
    group = parser.add_argument_group("inspection")
    group.add_argument("--layer", action="append", default=None, metavar="N",
                       help="show only these layers (repeatable, or a comma list; -1 is "
                            "the last layer)")
    group.add_argument("--step", action="append", default=None, metavar="GLOB",
                       help="show only steps whose name matches, e.g. '*.probs' "
                            "(repeatable; --list shows the names)")
    group.add_argument("--head", type=int, default=None, metavar="H",
                       help="show per-head tensors (q, k, v, scores, probs, ...) for query "
                            "head H only; k and v show the key/value head H reads")
    group.add_argument("--top", type=int, default=5, metavar="N",
                       help="how many next-token predictions to show (default 5)")
    group.add_argument("--list", action="store_true",
                       help="list every step's name and shape for the model, and exit")
    group.add_argument("--dump", type=Path, default=None, metavar="FILE.npz",
                       help="save every recorded tensor (all heads), keyed by step name")
    group.add_argument("--plot", type=Path, default=None, metavar="DIR",
                       help="write PNG pictures: attention per head (every layer, or the "
                            "--layer ones), RoPE, RMSNorm, logit lens (needs matplotlib)")


def run(args) -> int:
    if args.list:
        from ..checkpoint.detect import read_checkpoint  # the config alone: no weights read

        config = read_checkpoint(model_path(args)).config
        print_step_list(config, selected_steps(config, args))
        return 0
    prompt = read_prompt(args.prompt, 'python run.py inspect "The capital of France is" '
                                      "(or --list for the step names)")
    if args.plot is not None:
        from ..plots import require_matplotlib

        require_matplotlib()  # before the slow part, not after
    model = load_model(args)
    config = model.config
    recorded = selected_steps(config, args)
    head = _checked_head(args.head, config)
    top = _checked_top(args.top, config)
    tokens = model.encode_prompt(prompt)
    patterns = list(recorded)
    if args.plot is not None:
        from ..plots import PLOT_STEPS

        patterns += PLOT_STEPS
    with model.trace(*patterns) as trace:
        logits = model.forward(tokens)
    steps = trace.steps[-1]

    print_header(model, len(tokens), overview=_is_overview(args))
    print_steps(steps, shown_steps(config, recorded, args), step_axes(config), config, head)
    print_tokens(model.tokenizer, tokens)
    print_predictions(model.tokenizer, logits[-1], top)
    if args.dump is not None:
        saved = {name: steps[name] for name in dict.fromkeys(["tokens", *recorded])}
        dump(args.dump, saved)
        print(f"saved {count(len(saved), 'tensor')} to {args.dump}", file=sys.stderr)
    if args.plot is not None:
        from ..plots import write_plots

        paths = write_plots(model, trace, args.plot, _layers(args.layer, config.n_layers))
        print(f"wrote {count(len(paths), 'picture')} to {args.plot}", file=sys.stderr)
    return 0


# ---- choosing steps ----------------------------------------------------------------------

def _layers(values, n_layers: int):
    """The layer indices named by --layer (None when not given); -1 is the last layer."""
    if values is None:
        return None
    layers = []
    for text in ",".join(values).split(","):
        try:
            layer = int(text)
        except ValueError:
            raise InputError(f"--layer wants layer numbers, got {text!r}") from None
        if not -n_layers <= layer < n_layers:
            raise InputError(f"--layer {layer}: the model has {count(n_layers, 'layer')} "
                             f"(0 to {n_layers - 1})")
        layers.append(layer % n_layers)
    return sorted(set(layers))


def selected_steps(config, args) -> list:
    """The step names --layer and --step select, in walk-through order (all without them).
    Steps outside the layers (tokens, embeddings, norm, logits) are not affected by --layer."""
    layers = _layers(args.layer, config.n_layers)
    names = list(step_axes(config))
    if args.step:
        names = [n for n in names if any(fnmatchcase(n, glob) for glob in args.step)]
    if layers is not None:
        names = [n for n in names if step_layer(n) is None or step_layer(n) in layers]
    if not names:
        raise InputError(f"--step {' '.join(args.step)} matches no step of this model "
                         "(`python run.py inspect --list` shows them)")
    return names


def _is_overview(args) -> bool:
    return args.layer is None and not args.step


def shown_steps(config, recorded: list, args) -> list:
    """What to print: everything selected; but with neither --layer nor --step, the layers
    between the first and the last only by their residual stream, to fit a screen."""
    if not _is_overview(args):
        return recorded
    full = (None, 0, config.n_layers - 1)
    return [n for n in recorded if step_layer(n) in full or n.endswith(".residual")]


def _checked_head(head, config):
    if head is not None and not 0 <= head < config.n_heads:
        raise InputError(f"--head {head}: the model has {config.n_heads} query heads "
                         f"(0 to {config.n_heads - 1})")
    return head


def _checked_top(top: int, config) -> int:
    if not 1 <= top <= config.vocab_size:
        raise InputError(f"--top must be between 1 and the vocabulary size "
                         f"{config.vocab_size}, got {top}")
    return top


def head_slice(tensor: np.ndarray, axes: tuple, head: int, n_rep: int) -> np.ndarray:
    """One head of a per-head tensor; key/value tensors give the kv head query `head` reads."""
    if "n_heads" in axes:
        return np.take(tensor, head, axis=axes.index("n_heads"))
    if "n_kv_heads" in axes:
        return np.take(tensor, head // n_rep, axis=axes.index("n_kv_heads"))
    return tensor


# ---- printing ----------------------------------------------------------------------------

def _number(x) -> str:
    return f"{x:.3g}"


def statistics(tensor: np.ndarray) -> tuple:
    """mean, std over the finite entries (masked scores hold -inf); min, max over all."""
    finite = tensor[np.isfinite(tensor)]
    if finite.size == 0:
        return np.nan, np.nan, tensor.min(), tensor.max()
    return finite.mean(), finite.std(), tensor.min(), tensor.max()


def first_values(tensor: np.ndarray, axes: tuple, room: int) -> str:
    """As many leading values at the last position (the one that predicts) as fit in
    `room` characters, "[...]" included."""
    if "seq" in axes:
        tensor = np.take(tensor, -1, axis=axes.index("seq"))
    flat = tensor.ravel()
    text = "["
    for i, value in enumerate(flat):
        piece = _number(value) + (", " if i + 1 < flat.size else "]")
        if len(text) + len(piece) > room - len("...]"):
            return text + "...]"
        text += piece
    return text


def print_header(model, n_tokens: int, overview: bool) -> None:
    c = model.config
    print(f"model  {Path(model.source).name or 'model'}")
    print(f"shape  {count(c.n_layers, 'layer')}, dim {c.dim}, {c.n_heads} query / {c.n_kv_heads} "
          f"key-value heads of {c.head_dim}, ffn {c.ffn_dim}, vocabulary {c.vocab_size}")
    print(model.precision)
    print(f"\n{count(n_tokens, 'prompt token')}. Under each step: its first values at the last "
          "position.")
    if overview and c.n_layers > 2:
        print(f"Layers 1-{c.n_layers - 2} by their residual stream only "
              "(--layer N shows every step of layer N).")


def print_steps(steps: dict, names: list, axes: dict, config, head) -> None:
    if head is not None:
        kv = head // config.n_rep
        print(f"per-head steps show query head {head}; k and v show key-value head {kv}, "
              f"which query heads {kv * config.n_rep}-{(kv + 1) * config.n_rep - 1} share")
    shown = {n: steps[n] if head is None else head_slice(steps[n], axes[n], head, config.n_rep)
             for n in names}
    name_width = max(len("step"), *map(len, names))
    shape_width = max(len("shape"), *(len(str(t.shape)) for t in shown.values()))
    columns = (f"{'step':<{name_width}}  {'shape':<{shape_width}}  {'dtype':<7}"
               + "".join(f"{title:>{STAT_WIDTH}}" for title in ("mean", "std", "min", "max")))
    print()
    print(columns)
    previous_layer = None
    for name, tensor in shown.items():
        layer = step_layer(name)
        if layer is not None and previous_layer is not None and layer > previous_layer + 1:
            print(f"... (layers {previous_layer + 1}-{layer - 1} not shown)")
        previous_layer = layer if layer is not None else previous_layer
        stats = "".join(f"{_number(s):>{STAT_WIDTH}}" for s in statistics(tensor))
        print(f"{name:<{name_width}}  {str(tensor.shape):<{shape_width}}  "
              f"{str(tensor.dtype):<7}{stats}")
        print("    " + first_values(tensor, _sliced_axes(axes[name], head), WIDTH - 4))


def _sliced_axes(axes: tuple, head) -> tuple:
    if head is None:
        return axes
    return tuple(a for a in axes if a not in ("n_heads", "n_kv_heads"))


def print_tokens(tokenizer, tokens: list) -> None:
    print(f"\nthe prompt as {count(len(tokens), 'token')} (id:'text'):")
    line = ""
    for token in tokens:
        piece = f"{token}:'{token_label(tokenizer, token)}'"
        if line and len(line) + 2 + len(piece) > WIDTH:
            print(line)
            line = ""
        line = f"{line}  {piece}"
    print(line)


def print_predictions(tokenizer, logits: np.ndarray, top: int) -> None:
    probs = softmax(logits)
    best = np.argsort(-probs, kind="stable")[:top]
    print(f"\ntop {top} next tokens:")
    for rank, token in enumerate(best, 1):
        text = f"'{token_label(tokenizer, token)}'"
        print(f"  {rank:>3}. {text:<24} {probs[token]:8.4f}   (id {token})")


def print_step_list(config, names: list) -> None:
    axes = step_axes(config)
    sizes = axis_sizes(config)  # seq and total stay names: they depend on the call
    shapes = {n: "(" + ", ".join(str(sizes[a]) for a in axes[n])
              + ("," if len(axes[n]) == 1 else "") + ")" for n in names}
    name_width = max(map(len, names))
    shape_width = max(map(len, shapes.values()))
    print(f"{'step':<{name_width}}  {'shape':<{shape_width}}  axes")
    for name in names:
        print(f"{name:<{name_width}}  {shapes[name]:<{shape_width}}  {', '.join(axes[name])}")
    print()
    for axis, meaning in AXES.items():
        size = "" if axis in ("seq", "total") else f" = {sizes[axis]}"
        print(f"{axis + size:>17}: {meaning}")


def dump(path: Path, tensors: dict) -> None:
    try:
        with open(path, "wb") as file:  # a file object: savez adds no ".npz" to the name
            np.savez(file, **tensors)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
