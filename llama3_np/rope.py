"""Rotary position embedding as complex numbers, with Llama 3.1's frequency scaling.

Each head vector is read as head_dim/2 complex numbers (adjacent real, imag pairs,
Meta's layout); position p turns pair j by the angle p * freq_j.
"""

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only a type: config.py imports this module (for GGUF's rope scaling)
    from .config import RopeScaling


def rope_frequencies(head_dim: int, theta: float, scaling: "RopeScaling" = None) -> np.ndarray:
    """The head_dim/2 rotation speeds, fastest first: theta ** (-2j / head_dim).

    The references compute this in float32 with a correctly rounded power; NumPy's
    float32 power differs by an ulp on some CPUs (AVX-512), and position * freq
    magnifies that. So the power is taken in float64 and rounded once: the same bits
    as the references, on every CPU."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    freqs = np.float32(1.0) / powers
    return freqs if scaling is None else scale_frequencies(freqs, scaling)


def scale_frequencies(freqs: np.ndarray, s: "RopeScaling") -> np.ndarray:
    """Llama 3.1: slow down frequencies whose wavelength exceeds the original context.

    wavelength < original/high_freq_factor -> unchanged (local detail);
    wavelength > original/low_freq_factor  -> freq / factor (long range);
    in between a linear blend, so the context stretches without a seam."""
    wavelength = np.float32(2 * np.pi) / freqs
    long_range = freqs / np.float32(s.factor)
    blend = (np.float32(s.original_context) / wavelength - np.float32(s.low_freq_factor)) / \
        np.float32(s.high_freq_factor - s.low_freq_factor)
    blended = (1 - blend) * long_range + blend * freqs
    scaled = np.where(wavelength > s.original_context / s.low_freq_factor, long_range, freqs)
    in_between = (wavelength >= s.original_context / s.high_freq_factor) & \
        (wavelength <= s.original_context / s.low_freq_factor)
    return np.where(in_between, blended, scaled).astype(np.float32)


class RotaryTable:
    """Unit complex numbers e^(i * position * freq), computed once and grown on demand
    (doubling, up to max_positions when given: the context window)."""

    def __init__(self, freqs: np.ndarray, max_positions: int = None):
        self.freqs, self.max_positions = freqs, max_positions
        self.table = np.empty((0, len(freqs)), dtype=np.complex64)

    def rotations(self, start: int, length: int) -> np.ndarray:
        """(length, head_dim/2) rotations for positions start .. start+length-1."""
        end, table = start + length, self.table  # one read: other threads may grow it
        if end > len(table):
            size = max(end, 2 * len(table))
            if self.max_positions is not None:
                size = max(end, min(size, self.max_positions))
            positions = np.arange(size, dtype=np.float32)
            angles = np.outer(positions, self.freqs)  # float32, as the references compute it
            # cos and sin in float64, rounded once: float32 SIMD versions differ by CPU.
            angles = angles.astype(np.float64)
            table = (np.cos(angles) + 1j * np.sin(angles)).astype(np.complex64)
            if len(table) > len(self.table):
                self.table = table
        return table[start:end]


def apply_rope(x: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Rotate (seq, heads, head_dim) by (seq, head_dim/2): view pairs as complex, multiply."""
    pairs = np.ascontiguousarray(x).view(np.complex64)  # (seq, heads, head_dim/2)
    return (pairs * rotations[:, None, :]).view(np.float32)
