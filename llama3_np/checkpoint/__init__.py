"""Checkpoint readers: one per file format, all returning the same Checkpoint.

A Checkpoint holds the ModelConfig and the weights under Meta's canonical names
(`tok_embeddings.weight`, `layers.{i}.attention.wq.weight`, ..., `norm.weight`,
`output.weight`) in Meta's layout: q and k rows in adjacent (real, imag) pairs.
Tensors stay in storage precision (see llama3_np/formats/); the loader decides
what to keep in memory.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import ModelConfig
from ..errors import CheckpointError
from ..schema import iter_canonical_shapes

# Limits of what a real file holds, checked before any arithmetic on what a file claims:
# dimensions, strides and offsets are int64 in torch and ggml, and no weight has more
# than a handful of axes (ggml allows 4).
MAX_RANK = 8
_SIZE_LIMIT = 1 << 63


def is_size(value) -> bool:
    """A dimension, stride, offset or count as files hold them: an int in [0, 2**63)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _SIZE_LIMIT


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict  # canonical name -> ndarray or stored tensor
    path: Path
    format: str  # "meta", "hf" or "gguf"
    tokenizer_file: Optional[Path] = None  # tokenizer.model / tokenizer.json, if any
    metadata: dict = field(default_factory=dict)  # GGUF key/values (tokenizer lives here)


def select_canonical(stored: dict, config: ModelConfig, source, *,
                     stored_name: Callable[[str], str] = lambda name: name,
                     ignore: Callable[[str], bool] = lambda name: False,
                     config_name: str = "") -> dict:
    """The canonical tensors of a file, each checked against the config: the one home of
    "every tensor the model needs is there, in the shape the config implies, and nothing
    else is" (an unknown tensor means a model we would run wrongly, e.g. with biases).

    stored: the file's tensors under the file's own names; stored_name maps a canonical
    name to that naming, so messages name what the user's file holds; ignore(name) is
    true for stored tensors the model does without. config_name says where the config
    came from (default: its file name). Tied embeddings: output.weight is the embedding
    itself, never a copy."""
    config_name = config_name or Path(config.source).name or "the config"
    tensors, used = {}, set()
    for name, shape in iter_canonical_shapes(config):
        if name == "output.weight" and config.tie_embeddings:
            continue
        key = stored_name(name)
        if key not in stored:
            meta_name = f" ({name} in Meta's names)" if key != name else ""
            raise CheckpointError(f"{source} has no tensor '{key}'{meta_name}")
        tensor = stored[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{source}: tensor '{key}' has shape {tuple(tensor.shape)}, "
                                  f"but {config_name} implies {shape}")
        tensors[name] = tensor
        used.add(key)
    unknown = [key for key in stored if key not in used and not ignore(key)]
    if unknown:
        raise CheckpointError(f"{source}: tensor '{unknown[0]}' does not belong to a "
                              f"{config.n_layers}-layer Llama model")
    if config.tie_embeddings:
        tensors["output.weight"] = tensors["tok_embeddings.weight"]
    return tensors
