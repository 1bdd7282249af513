"""C malloc settings that keep a prompt's temporaries in the process between layers.

Each layer of a prompt allocates and frees arrays of megabytes ((seq, ffn_dim) float32:
4 MiB at 128 tokens of Llama 3.2 1B). glibc's malloc hands memory at the top of its heap
back to the kernel once more than M_TRIM_THRESHOLD of it is free, and maps blocks above
M_MMAP_THRESHOLD afresh for every allocation: either way the next layer page-faults the
same memory in again. glibc moves both thresholds by what the process freed before, so
the same prompt ran at two speeds by the loader's history. The 1B, 128 tokens, 2 threads
on a Zen 5: bf16 from a Hugging Face folder 0.54-0.69 s with 70,000-109,000 page faults a
forward (the heap grew and shrank 199 times in one), from the same weights' GGUF file
0.42-0.43 s with none; Q8_0 from its GGUF file (int8 activations) 0.48-0.56 s with
72,000-78,000. With the thresholds set here: none, 0.44-0.50 and 0.38-0.42 s. What it
costs: memory freed at the heap's top stays mapped, and a 32k-token prompt of one 1B
layer (512-token chunks) peaked 374 MiB above the weights against 326 (8k: 115 against
127).
"""

import ctypes
import functools
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)
_MMAP_THRESHOLD = 32 << 20  # the most glibc takes: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept for the next layer


@functools.cache
def keep_freed_memory() -> bool:
    """Set both thresholds, once a process, where the C library is glibc (it then stops
    moving them); False where it is not, or refused."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
