"""What the weights are kept in, said out loud: for each group of tensors, how the file
stores them, the form they take in memory and its bytes; and the one line run.py prints.

A GGUF file's Q8_0 / Q4 matrices keep their quantisation by default where a kernel
multiplies them, and an explicit --dtype converts everything, so the same command can
run different arithmetic; nothing about that may be silent.
"""

from dataclasses import dataclass

from .formats.bf16 import BF16
from .formats.convert import conversion, new_bytes
from .formats.gguf_blocks import Q4_KINDS
from .info import COMPONENTS, component_of
from .memory import human_size


@dataclass
class Group:
    component: str  # info.COMPONENTS: "embedding", "attention q", ..., "norms", "output"
    stored: str  # as the file has it: "Q4_1", "bf16", "float32", ...
    form: str  # in memory: "Q4_1 kept (4-bit kernel)", "q8 (from bf16)", "f32", ...
    tensors: int
    bytes: int
    matrices: bool  # norm gains are vectors, always float32


def stored_kind(tensor) -> str:
    """How a checkpoint stores a tensor: a GGUF type name, "bf16" or a NumPy dtype."""
    if isinstance(tensor, BF16):
        return "bf16"
    return getattr(tensor, "ggml_type", None) or str(tensor.dtype)


def memory_form(tensor, dtype, keep_quantized: bool) -> tuple:
    """(form, bytes) of `tensor` in memory once formats.convert.to_dtype(tensor, dtype,
    keep_quantized=...) has made it what the kernels multiply."""
    stored = stored_kind(tensor)
    made = conversion(tensor, dtype, keep_quantized)
    if made == "kept":
        return f"{stored} as stored", tensor.nbytes
    if made in Q4_KINDS:
        form = f"{made} kept (4-bit kernel)"
    elif made == "Q8_0":
        form = "Q8_0 kept (q8 kernel)" if dtype is None else "q8 (Q8_0's values, re-laid)"
    else:
        form = f"{made} (from {stored})"
    return form, new_bytes(tensor, dtype, keep_quantized)


def weight_groups(tensors: dict, dtype, keep_quantized: bool) -> list:
    """One Group per component and in-memory form, in the order a forward pass meets them;
    a tensor shared by two names (tied embeddings) counts once."""
    groups, seen = {}, set()
    for name, tensor in tensors.items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        form, size = memory_form(tensor, dtype, keep_quantized)
        key = (component_of(name), form)
        group = groups.get(key) or Group(key[0], stored_kind(tensor), form, 0, 0,
                                         len(tensor.shape) == 2)
        group.tensors += 1
        group.bytes += size
        groups[key] = group
    return sorted(groups.values(), key=lambda g: COMPONENTS.index(g.component))


def summary(groups: list) -> str:
    """"weights: Q4_1 kept (4-bit kernel), Q8_0 kept (q8 kernel); 97.3 MiB": the matrices'
    forms, the most bytes first (norm gains are float32 at every dtype)."""
    by_form = {}
    for group in groups:
        if group.matrices:
            by_form[group.form] = by_form.get(group.form, 0) + group.bytes
    forms = sorted(by_form, key=by_form.get, reverse=True)
    total = sum(group.bytes for group in groups)
    return f"weights: {', '.join(forms)}; {human_size(total)}"
