"""The KV cache: the keys and values of every position a sequence has seen so far.

It belongs to whoever runs the sequence (one generation, one chat session, one
perplexity window), not to the model, so one loaded model serves several sequences
at once. Keys and values are kept in float32, or rounded to bfloat16 to halve the
cache (--kv-dtype bf16: the error this adds is measured in the README).
"""

import numpy as np

from .config import ModelConfig
from .errors import InputError
from .memory import available_bytes, human_size
from .formats.bf16 import bf16_bits_to_float32, float32_to_bf16_bits

KV_DTYPES = {"f32": np.float32, "bf16": np.uint16}  # --kv-dtype -> buffer dtype (bf16 bits)


def check_kv_dtype(kv_dtype: str) -> None:
    if kv_dtype not in KV_DTYPES:
        raise InputError(f"unknown KV cache dtype {kv_dtype!r}; choose one of "
                         f"{', '.join(KV_DTYPES)}")


def kv_bytes_per_position(config: ModelConfig, kv_dtype: str = "f32") -> int:
    """The keys and values one position adds to the cache, over all layers."""
    check_kv_dtype(kv_dtype)
    itemsize = np.dtype(KV_DTYPES[kv_dtype]).itemsize
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * itemsize


class KVCache:
    """Per layer, keys and values as (n_kv_heads, capacity, head_dim) buffers.

    `reserve` grows the buffers (checking first that the memory is there), so a
    decode step writes one row instead of concatenating; `length` counts the
    positions held."""

    def __init__(self, config: ModelConfig, kv_dtype: str = "f32", capacity: int = 0):
        check_kv_dtype(kv_dtype)
        self.config, self.kv_dtype = config, kv_dtype
        self.length = 0
        self.keys, self.values = [], []
        self._allocate(min(capacity, config.max_seq_len))

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return self.capacity * kv_bytes_per_position(self.config, self.kv_dtype)

    def reserve(self, end: int) -> None:
        """Make room for positions up to `end`: at least double the capacity so that
        one-token steps rarely grow it, but never past the context window."""
        if end > self.capacity:
            self._allocate(min(max(end, 2 * self.capacity), self.config.max_seq_len))

    def _allocate(self, capacity: int) -> None:
        c = self.config
        new_bytes = capacity * kv_bytes_per_position(c, self.kv_dtype)
        room = available_bytes()
        if room is not None and new_bytes > room:
            raise InputError(self._too_big(capacity, new_bytes, room))
        shape = (c.n_kv_heads, capacity, c.head_dim)
        try:
            grown = [np.zeros(shape, KV_DTYPES[self.kv_dtype]) for _ in range(2 * c.n_layers)]
        except MemoryError:
            raise InputError(self._too_big(capacity, new_bytes, room)) from None
        for new, old in zip(grown, self.keys + self.values):
            new[:, :old.shape[1]] = old  # all of it: a call may have stored past `length`
        self.keys, self.values = grown[:c.n_layers], grown[c.n_layers:]

    def _too_big(self, capacity: int, needed: int, room) -> str:
        sizes = {d: capacity * kv_bytes_per_position(self.config, d) for d in KV_DTYPES}
        fitting = [f"--kv-dtype {d} ({human_size(size)})" for d, size in sizes.items()
                   if d != self.kv_dtype and size < needed and (room is None or size <= room)]
        available = "less is" if room is None else f"only {human_size(room)} is"
        return (f"the KV cache for {capacity} positions needs {human_size(needed)} in "
                f"{self.kv_dtype}, but {available} available; use a shorter prompt or "
                "--max-tokens" + "".join(f", or {f}" for f in fitting))

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (seq, n_kv_heads, head_dim) at positions start, start + 1, ..."""
        end = start + len(k)
        self.reserve(end)
        if self.kv_dtype == "bf16":
            k, v = float32_to_bf16_bits(k), float32_to_bf16_bits(v)
        self.keys[layer][:, start:end] = k.transpose(1, 0, 2)
        self.values[layer][:, start:end] = v.transpose(1, 0, 2)

    def read(self, layer: int, begin: int, end: int) -> tuple:
        """float32 keys and values (n_kv_heads, end - begin, head_dim) of positions
        begin .. end - 1 (views of the buffers when they are float32)."""
        keys, values = self.keys[layer][:, begin:end], self.values[layer][:, begin:end]
        if self.kv_dtype == "bf16":
            return bf16_bits_to_float32(keys), bf16_bits_to_float32(values)
        return keys, values

    def buffers(self, layer: int) -> tuple:
        """The layer's keys and values (n_kv_heads, capacity, head_dim) as stored: float32,
        or bf16 bits (uint16); positions from `length` on hold nothing yet."""
        return self.keys[layer], self.values[layer]
