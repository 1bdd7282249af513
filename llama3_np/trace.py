"""Recording the forward pass's named intermediate tensors, for inspection.

The model hands every step to `model.trace(name, tensor)`; normally that is
model.NoTrace, which does nothing. A Trace, while active, records copies of the
tensors whose names match its patterns, one dict per forward call:

    cache = transformer.new_cache()
    with Trace(transformer, "layers.0.*") as t:   # or llama.trace("layers.0.*")
        transformer.forward(tokens, cache=cache)   # prefill: t.steps[0]
        transformer.forward([next_token], len(tokens), cache=cache)  # decode: t.steps[1]
    t["layers.0.attention.probs"]                  # from the latest call that has it

While a trace is active, a long prompt is not split into chunks and every layer
whose scores or probs are recorded takes the plain attention path, so what is
recorded is exactly the walk-through's tensors. Before such a call, check_room
refuses (with the filter to add) when the recorded tensors would not fit in memory.

The names, their walk-through order and each tensor's axes are declared beside the
model, in schema.py (step_axes reads them); tests hold model.py's trace calls to them.
"""

import dataclasses
import math
from fnmatch import fnmatchcase
from functools import lru_cache

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .kernels import linear
from .model import NoTrace, rms_norm, softmax
from .schema import AXES, iter_step_axes


class Trace(NoTrace):
    active = True

    def __init__(self, model, *patterns: str):
        self.model = model
        self.patterns = patterns or ("*",)
        self.steps = []  # one {name: tensor} per forward call
        self._wanted = {}  # name -> whether a pattern matches; names repeat every call

    def wants(self, *names: str) -> bool:
        """Whether any of `names` is recorded."""
        return any(self._wants(name) for name in names)

    def _wants(self, name: str) -> bool:
        wanted = self._wanted.get(name)
        if wanted is None:
            # The tokens are always kept: every other tensor is read against them.
            wanted = name == "tokens" or any(fnmatchcase(name, p) for p in self.patterns)
            self._wanted[name] = wanted
        return wanted

    def __call__(self, name: str, tensor: np.ndarray) -> None:
        """The model's hook: keep a copy of `tensor` if `name` is wanted."""
        if name == "tokens":  # every forward call starts here
            self.steps.append({})
        if self._wants(name):
            self.steps[-1][name] = np.array(tensor, copy=True)

    def check_room(self, config: ModelConfig, seq: int, total: int) -> None:
        """Refuse a forward call whose recorded tensors would not fit in memory, before
        it starts, naming the filters that record less."""
        from .memory import available_bytes, human_size

        wanted = [name for name in step_names(config) if self._wants(name)]
        needed = 4 * sum(math.prod(step_shape(config, name, seq, total)) for name in wanted)
        room = available_bytes()
        if room is not None and needed > room:
            raise InputError(
                f"recording {len(wanted)} steps of a {seq}-token call needs "
                f"{human_size(needed)}, but only {human_size(room)} is available; record "
                "fewer layers or steps (inspect --layer N or --step GLOB, e.g. '*.residual'; "
                "model.trace('layers.0.*')) or use a shorter prompt")

    def __enter__(self) -> "Trace":
        self._previous = self.model.trace
        self.model.trace = self
        return self

    def __exit__(self, *exc) -> None:
        self.model.trace = self._previous

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor from the latest forward call that recorded `name`."""
        for step in reversed(self.steps):
            if name in step:
                return step[name]
        raise KeyError(f"no tensor named '{name}' was recorded (patterns {self.patterns})")

    def __contains__(self, name: str) -> bool:
        return any(name in step for step in self.steps)

    def names(self) -> list:
        seen = {}
        for step in self.steps:
            seen.update(dict.fromkeys(step))
        return list(seen)


# ---- the steps a config's forward pass records -------------------------------------------

def step_axes(config: ModelConfig) -> dict:
    """{step name: its axes}, in walk-through order, for a model shaped like `config`;
    e.g. "layers.0.attention.scores": ("n_heads", "seq", "total"). See schema.AXES.
    (A forward call with last_only keeps one position in "norm" and "logits".)"""
    return dict(_step_axes(config.n_layers))


@lru_cache(maxsize=8)
def _step_axes(n_layers: int) -> tuple:
    return tuple(iter_step_axes(n_layers))


def step_names(config: ModelConfig) -> list:
    """Every name the forward pass of a model shaped like `config` hands to its trace."""
    return list(step_axes(config))


def axis_sizes(config: ModelConfig, seq=None, total=None) -> dict:
    """{axis name: size}; seq and total depend on the call, so they default to their names."""
    sizes = {name: getattr(config, name) for name in AXES if hasattr(config, name)}
    return {**sizes, "seq": "seq" if seq is None else seq,
            "total": "total" if total is None else total}


def step_shape(config: ModelConfig, name: str, seq=None, total=None) -> tuple:
    """The shape step `name` has in a call of `seq` tokens attending `total` positions."""
    sizes = axis_sizes(config, seq, total)
    return tuple(sizes[axis] for axis in step_axes(config)[name])


def step_layer(name: str):
    """The layer index in "layers.{i}.…", or None for steps outside the layers."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" and len(parts) > 2 else None


VISIBLE_SPACE = "\u2423"  # ␣, the open box: a space that can be seen


def token_label(tokenizer, token_id: int, visible_spaces: bool = False) -> str:
    """One token's text with control characters escaped; a token ending inside a UTF-8
    character shows U+FFFD for its partial bytes. With visible_spaces, spaces are drawn
    as ␣ (for pictures, where no quotes show that " the" starts with one)."""
    text = tokenizer.token_bytes(int(token_id)).decode("utf-8", errors="replace")
    label = repr(text)[1:-1]
    return label.replace(" ", VISIBLE_SPACE) if visible_spaces else label


# ---- the logit lens ----------------------------------------------------------------------

@dataclasses.dataclass
class LogitLens:
    """What each layer's residual stream would predict if the model stopped there."""

    token_ids: np.ndarray  # (n_layers, seq) int64: the most likely next token
    probs: np.ndarray  # (n_layers, seq) float32: its probability


def logit_lens(model, trace: Trace, step: int = -1) -> LogitLens:
    """Read every layer's residual through the final RMSNorm and output projection.

    `model` is a Transformer or a Llama; `trace` must have recorded "layers.*.residual"
    in forward call `step`. The last layer's row is the model's own prediction."""
    transformer = getattr(model, "model", model)
    c, w = transformer.config, transformer.weights
    recorded = trace.steps[step]
    ids, probs = [], []
    for i in range(c.n_layers):
        name = f"layers.{i}.residual"
        if name not in recorded:
            raise KeyError(f"the logit lens needs '{name}': trace 'layers.*.residual'")
        p = softmax(linear(rms_norm(recorded[name], w["norm.weight"], c.norm_eps),
                           w["output.weight"]))  # (seq, vocab)
        top = np.argmax(p, axis=-1)
        ids.append(top)
        probs.append(np.take_along_axis(p, top[:, None], axis=-1)[:, 0])
    return LogitLens(np.array(ids, dtype=np.int64), np.array(probs, dtype=np.float32))
