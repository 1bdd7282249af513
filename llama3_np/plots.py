"""Pictures of a traced forward pass, as PNG files (matplotlib, Agg; optional).

    with model.trace(*PLOT_STEPS) as t:
        model.forward(model.encode_prompt("The capital of France is"))
    write_plots(model, t, "plots/")

Four kinds: attention probabilities per head (one figure per layer), the RoPE
frequencies with and without Llama 3.1 scaling, the embeddings before and after
layer 0's RMSNorm, and the logit lens (each layer's best guess at the next token).
"""

from pathlib import Path

import numpy as np

from .errors import InputError
from .rope import rope_frequencies
from .trace import Trace, logit_lens, token_label

# The steps write_plots reads; trace at least these.
PLOT_STEPS = ("embeddings", "layers.0.attention_norm", "layers.*.attention.probs",
              "layers.*.residual")
MAX_LENS_POSITIONS = 16  # more columns than this make the logit lens unreadable
MAX_TICK_LABELS = 40  # beyond this, token names on heatmap axes overlap


def require_matplotlib() -> None:
    """Fail early, with the fix in the message, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("drawing plots needs matplotlib, which is not installed: "
                         "pip install matplotlib") from None


def _figure(width: float, height: float, layout="constrained"):
    """An Agg-backed Figure, without pyplot's global state."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _token_ticks(axis, labels: list, which: str) -> None:
    ticks = list(range(len(labels))) if len(labels) <= MAX_TICK_LABELS else []
    names = [labels[i] for i in ticks]
    if which == "x":
        axis.set_xticks(ticks, names, rotation=90, fontsize=7)
    else:
        axis.set_yticks(ticks, names, fontsize=7)


def attention_figure(probs: np.ndarray, labels: list, layer: int):
    """A grid of heatmaps, one per head: row = query token, column = key position.

    probs is (n_heads, seq, total); labels name the total key positions (the queries
    are the last seq of them)."""
    n_heads, seq, total = probs.shape
    cols = int(np.ceil(np.sqrt(n_heads)))
    rows = int(np.ceil(n_heads / cols))
    cell = max(1.6, min(0.18 * total, 3.0))  # inches per head
    # A fixed layout sized to the longest token name: the automatic layout engines cost
    # several times the drawing itself, once per layer.
    label_room = 0.3 + 0.06 * max(map(len, labels)) if total <= MAX_TICK_LABELS else 0.3
    margins = dict(left=label_room, right=1.3, top=0.8, bottom=label_room)
    width = margins["left"] + cols * cell + margins["right"]
    height = margins["top"] + rows * cell + margins["bottom"]
    figure = _figure(width, height, layout=None)
    grid = dict(left=margins["left"] / width, right=1 - margins["right"] / width,
                bottom=margins["bottom"] / height, top=1 - margins["top"] / height,
                wspace=0.1, hspace=0.3)
    axes = figure.subplots(rows, cols, sharex=True, sharey=True, squeeze=False,
                           gridspec_kw=grid)
    _token_ticks(axes[0, 0], labels, "x")  # the axes are shared: this sets every head's
    _token_ticks(axes[0, 0], labels[total - seq:], "y")
    for h, axis in enumerate(axes.ravel()):
        if h >= n_heads:
            axis.set_axis_off()
            continue
        image = axis.imshow(probs[h], vmin=0, vmax=1, cmap="viridis", aspect="auto",
                            interpolation="nearest")
        axis.set_title(f"head {h}", fontsize=9)
        # Token names only on the outer edge of the grid (below the last head of a column).
        axis.tick_params(labelleft=h % cols == 0, labelbottom=h + cols >= n_heads,
                         labelsize=7)
        axis.tick_params(axis="x", labelrotation=90)
    colorbar_axis = figure.add_axes((1 - 1.0 / width, grid["bottom"], 0.15 / width,
                                     grid["top"] - grid["bottom"]))
    figure.colorbar(image, cax=colorbar_axis, label="attention probability")
    figure.suptitle(f"layer {layer}: attention probabilities (row: query, column: key)",
                    y=1 - 0.15 / height, va="top")
    return figure


def rope_figure(config, positions: int):
    """Left: each pair's rotation speed, log scale, plain and (if any) Llama 3.1-scaled.
    Right: the angle each pair is turned by at each of the first `positions` positions."""
    plain = rope_frequencies(config.head_dim, config.rope_theta)
    used = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    pairs = np.arange(len(plain))
    figure = _figure(12, 4.5)
    left, right = figure.subplots(1, 2)
    left.semilogy(pairs, plain, "o-", markersize=3,
                  label=f"theta {config.rope_theta:g}, no scaling")
    s = config.rope_scaling
    if s is None:
        left.set_title("RoPE frequencies (this model uses no Llama 3.1 scaling)")
    else:
        left.semilogy(pairs, used, "s-", markersize=3,
                      label=f"Llama 3.1 scaling, factor {s.factor:g}")
        # The scaling's thresholds are wavelengths: 2 pi / freq compared with the context.
        for factor, style in ((s.low_freq_factor, ":"), (s.high_freq_factor, "--")):
            wavelength = s.original_context / factor
            left.axhline(2 * np.pi / wavelength, color="grey", linestyle=style, linewidth=1,
                         label=f"wavelength {wavelength:g} tokens")
        left.set_title("RoPE frequencies: scaling slows the long wavelengths")
    left.set_xlabel("pair index j (dimensions 2j, 2j+1 of each head)")
    left.set_ylabel("radians per position (log)")
    left.legend(fontsize=8)
    angles = np.mod(np.outer(np.arange(positions, dtype=np.float32), used), 2 * np.pi)
    image = right.imshow(angles, aspect="auto", cmap="twilight", vmin=0, vmax=2 * np.pi,
                         interpolation="nearest")
    right.set_title("rotation angle of each pair at each position")
    right.set_xlabel("pair index j")
    right.set_ylabel("position")
    figure.colorbar(image, ax=right, label="angle (radians, mod 2 pi)")
    return figure


def norm_figure(embeddings: np.ndarray, normed: np.ndarray, labels: list):
    """The token embeddings (seq, dim) before and after layer 0's attention RMSNorm:
    heatmaps of the values, and each token's root-mean-square."""
    figure = _figure(12, 3 + 0.25 * len(labels))
    axes = figure.subplots(2, 2, height_ratios=[3, 2])
    for column, (title, x) in enumerate((("embedding", embeddings),
                                         ("after layer 0 attention RMSNorm", normed))):
        limit = float(np.max(np.abs(x))) or 1.0
        image = axes[0, column].imshow(x, aspect="auto", cmap="RdBu_r", vmin=-limit,
                                       vmax=limit, interpolation="nearest")
        axes[0, column].set_title(title)
        axes[0, column].set_xlabel("channel")
        _token_ticks(axes[0, column], labels, "y")
        figure.colorbar(image, ax=axes[0, column])
        rms = np.sqrt(np.mean(x * x, axis=-1))
        axes[1, column].bar(range(len(rms)), rms)
        axes[1, column].set_ylabel("RMS per token")
        axes[1, column].set_title(("the embedding rows' own scale" if column == 0 else
                                   "normalised to 1, then scaled by the learned gain"),
                                  fontsize=9)
        _token_ticks(axes[1, column], labels, "x")
    return figure


def logit_lens_figure(token_ids: np.ndarray, probs: np.ndarray, labels: list, tokenizer):
    """Layers x positions: colour = probability of that layer's best next token, whose
    text is written in the cell. labels name the positions (the input tokens)."""
    n_layers, seq = probs.shape
    label_room = 0.07 * max(map(len, labels))  # the input tokens, written vertically
    figure = _figure(2.0 + 1.1 * seq, max(4.0, 2.0 + label_room + 0.32 * n_layers))
    axis = figure.subplots()
    image = axis.imshow(probs, vmin=0, vmax=1, cmap="Blues", aspect="auto", origin="lower",
                        interpolation="nearest")
    for layer in range(n_layers):
        for pos in range(seq):
            text = token_label(tokenizer, token_ids[layer, pos], visible_spaces=True)[:10]
            axis.text(pos, layer, text, ha="center", va="center", fontsize=7,
                      color="white" if probs[layer, pos] > 0.6 else "black")
    axis.set_xticks(range(seq), labels, rotation=90, fontsize=8)
    axis.set_yticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=7)
    axis.set_xlabel("input token (the prediction is for the token after it)")
    axis.set_ylabel("layer")
    axis.set_title("logit lens: each layer's most likely next token")
    figure.colorbar(image, ax=axis, label="probability")
    return figure


def write_plots(model, trace: Trace, directory, layers=None) -> list:
    """All four kinds of picture for the latest forward call in `trace` (which must have
    recorded PLOT_STEPS and start at position 0), attention for `layers` (default all);
    returns the PNG paths written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the plot directory {directory}: {e.strerror}") from None
    recorded, config, tokenizer = trace.steps[-1], model.config, model.tokenizer
    labels = [token_label(tokenizer, t, visible_spaces=True) for t in recorded["tokens"]]
    lens = logit_lens(model, trace)
    shown = slice(-MAX_LENS_POSITIONS, None)
    drawings = {  # name -> how to draw it; drawn and saved one at a time to bound memory
        "logit_lens.png": lambda: logit_lens_figure(lens.token_ids[:, shown],
                                                    lens.probs[:, shown], labels[shown],
                                                    tokenizer),
        "rope.png": lambda: rope_figure(config, max(len(labels), 64)),
        "norm.png": lambda: norm_figure(recorded["embeddings"],
                                        recorded["layers.0.attention_norm"], labels),
    }
    for i in range(config.n_layers) if layers is None else layers:
        drawings[f"attention_layer{i:02d}.png"] = \
            lambda i=i: attention_figure(recorded[f"layers.{i}.attention.probs"], labels, i)
    paths = []
    for name, draw in drawings.items():
        draw().savefig(directory / name, dpi=100)
        paths.append(directory / name)
    return paths
