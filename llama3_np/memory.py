"""Will the weights fit? The memory this machine has free, checked before loading.

Converting weights (bf16 on disk to f32 in memory, say) makes private copies. When
they do not fit, Linux does not fail an allocation: it kills the process part-way
through loading, without a word. So load() first adds up what the conversion will
allocate and refuses with the numbers and the --dtype that would fit. Weights used as
they are stored (memory-mapped) need no new memory: the kernel can drop and re-read
their pages.
"""

from pathlib import Path

from .errors import InputError
from .formats.convert import DTYPES, check_dtype, new_bytes


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


def available_bytes():
    """Memory this process can still take without swapping: the kernel's MemAvailable,
    or less where a cgroup (a container's memory limit) leaves less; None if unknown."""
    known = [n for n in (meminfo_bytes("MemAvailable"), cgroup_room()) if n is not None]
    return min(known) if known else None


# cgroup v2 and v1 files: limit, usage, and the memory.stat line of reclaimable page cache
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROCESS_CGROUPS = Path("/proc/self/cgroup")


def cgroup_room():
    """limit - (usage - inactive page cache) of this process's memory cgroup, as
    container tools count its working set; None without a memory limit."""
    try:
        lines = PROCESS_CGROUPS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "0::/path" (v2) or "4:memory:/path" (v1)
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        version = 2 if controllers == "" else 1 if "memory" in controllers.split(",") else None
        if version is None:
            continue
        folder = CGROUP_ROOT / ("memory" if version == 1 else "") / path.lstrip("/")
        limit_file, usage_file, inactive_key = _CGROUP_FILES[version]
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= _NO_LIMIT:
                continue
            usage = int((folder / usage_file).read_text())
            stat = dict(entry.split() for entry in
                        (folder / "memory.stat").read_text().splitlines())
            return max(0, int(limit) - usage + int(stat.get(inactive_key, 0)))
        except (OSError, ValueError):
            continue
    return None


def check_weights_fit(tensors, dtype, source: str, keep_quantized: bool = True) -> None:
    """Refuse (InputError) to convert `tensors` into `dtype` (as formats.convert.to_dtype
    does, with keep_quantized; None: the default forms) when the new memory that takes
    exceeds what this process has available; do nothing where that is unknown. Only the
    weights are counted: the KV cache and activations of a long context come on top."""
    check_dtype(dtype)
    available = available_bytes()
    if available is None:
        return
    needs = {d: sum(new_bytes(t, d, keep_quantized) for t in tensors) for d in (None, *DTYPES)}
    if needs[dtype] <= available:
        return
    fitting = [f"--dtype {d} ({human_size(needs[d])})" for d in DTYPES if needs[d] <= available]
    smallest = min(DTYPES, key=needs.get)
    advice = ("use " + " or ".join(fitting) if fitting else
              f"no --dtype fits (the smallest, {smallest}, needs {human_size(needs[smallest])})")
    asked = dtype or "the default precision"
    raise InputError(f"{source}: keeping the weights in {asked} needs {human_size(needs[dtype])} "
                     f"of new memory, but only {human_size(available)} is available; {advice}")
