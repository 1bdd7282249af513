"""Will the weights fit? The memory this machine has free, checked before loading.

Converting weights (bf16 on disk to f32 in memory, say) makes private copies. When
they do not fit, Linux does not fail an allocation: it kills the process part-way
through loading, without a word. So load() first adds up what the conversion will
allocate and refuses with the numbers and the --dtype that would fit. Weights used as
they are stored (memory-mapped) need no new memory: the kernel can drop and re-read
their pages.
"""

from .errors import InputError
from .quantize import DTYPES, new_bytes


def human_size(n_bytes: float) -> str:
    """1536 -> "1.5 KiB"; bytes, KiB, MiB or GiB, whichever keeps the number below 1024."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes:.0f} B"
        n_bytes /= 1024


def meminfo_bytes(name: str):
    """A field of /proc/meminfo ("MemTotal", "MemAvailable", ...) in bytes, or None
    where the system has no /proc/meminfo or the field is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return int(value.split()[0]) * 1024  # the file counts in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_weights_fit(tensors, dtype: str, source: str, gguf_kernels: bool = True) -> None:
    """Refuse (InputError) to convert `tensors` into `dtype` (as quantize.to_dtype does,
    with gguf_kernels) when the new memory that takes exceeds what the machine has
    available; do nothing where that is unknown."""
    available = meminfo_bytes("MemAvailable")
    if available is None:
        return
    needs = {d: sum(new_bytes(t, d, gguf_kernels) for t in tensors) for d in DTYPES}
    if needs[dtype] <= available:
        return
    fitting = [f"--dtype {d} ({human_size(needs[d])})" for d in DTYPES if needs[d] <= available]
    smallest = min(DTYPES, key=needs.get)
    advice = ("use " + " or ".join(fitting) if fitting else
              f"no --dtype fits (the smallest, {smallest}, needs {human_size(needs[smallest])})")
    raise InputError(f"{source}: keeping the weights in {dtype} needs {human_size(needs[dtype])} "
                     f"of new memory, but only {human_size(available)} is available; {advice}")
