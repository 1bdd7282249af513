"""Non-finite logits are refused, not sampled: a checkpoint with one Inf or a NaN gives
NaN logits, and then token 0 forever, no tokens at all, or `perplexity nan`.

Every forward call whose logits are sampled or scored goes through checked_forward (or
check_finite, for perplexity's chunks): one pass over the logits (microseconds against
a forward pass). Only when it finds NaN or inf is the same call run again under a trace
hook, to name the first step of the walk-through where a non-finite value appears.
(inspect shows the logits as they are: NaN there is information.)
"""

import numpy as np

from .errors import NonFiniteError
from .trace import Trace


def checked_forward(model, tokens, start_pos: int = 0, **options) -> np.ndarray:
    """model.forward(tokens, start_pos, **options), or NonFiniteError if the logits hold
    NaN or inf. `model` is a Transformer or a Llama."""
    with np.errstate(all="ignore"):  # overflow and NaN are reported below, once, by name
        logits = model.forward(tokens, start_pos, **options)
    check_finite(logits, model, tokens, start_pos, **options)
    return logits


def check_finite(logits: np.ndarray, model, tokens, start_pos: int = 0, **options) -> None:
    """NonFiniteError if `logits`, of model.forward(tokens, start_pos, **options), hold
    NaN or inf, naming the first step where a non-finite value appears."""
    if np.isfinite(logits).all():
        return
    first = first_non_finite_step(model, tokens, start_pos, **options)
    where = f"; the first non-finite value is in {first}" if first else ""
    positions = f"{start_pos}..{start_pos + len(tokens) - 1}" if len(tokens) > 1 else start_pos
    raise NonFiniteError(f"the model computed NaN or infinite logits at position {positions}"
                         f"{where}: the weights hold NaN or inf values, or overflow float32")


class _FirstNonFinite(Trace):
    """A trace that keeps no tensors, only the name of the first non-finite one. As it
    keeps nothing, the call it watches runs as an untraced one does: in chunks, with
    tiled attention where the plain one would be large."""

    active = False

    def __init__(self, transformer):
        super().__init__(transformer)
        self.first = None

    def __call__(self, name: str, tensor: np.ndarray) -> None:
        if self.first is None and _non_finite(name, tensor):
            self.first = name

    def wants(self, *names: str) -> bool:
        return False

    def check_room(self, config, seq: int, total: int) -> None:
        pass


def _non_finite(name: str, tensor: np.ndarray) -> bool:
    if name.endswith("masked_scores"):  # the causal mask is -inf by design
        return bool(np.isnan(tensor).any() or np.isposinf(tensor).any())
    return not np.isfinite(tensor).all()


def first_non_finite_step(model, tokens, start_pos: int = 0, **options):
    """The name of the first traced step with a non-finite value when `model` runs this
    call again (None if it stays finite). Running it again rewrites the same KV-cache
    positions with the same values."""
    transformer = getattr(model, "model", model)  # a Llama's Transformer, or itself
    with _FirstNonFinite(transformer) as finder, np.errstate(all="ignore"):
        for _ in transformer.forward_chunks(tokens, start_pos, **options):
            pass  # chunk by chunk: a long window's logits are never all held at once
    return finder.first
