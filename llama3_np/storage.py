"""Moved to the formats package. model.py and kv_cache.py still import these names
from here; once they import them from .formats and .formats.bf16, delete this file."""

from .formats import take_rows
from .formats.bf16 import bf16_bits_to_float32, float32_to_bf16_bits

__all__ = ["take_rows", "bf16_bits_to_float32", "float32_to_bf16_bits"]
