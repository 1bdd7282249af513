"""Llama 3 8B in 24 GiB: load a bf16 8B checkpoint with dtype="bf16" and generate a few
tokens (twice: the first run faults the memory-mapped weights in), reporting peak
memory and speed. Writes its section of benchmarks/RESULTS.md.

    python benchmarks/big_model.py [--dir DIR] [--keep] [--tokens 8] [--threads 2]

Writes a random-weight Llama-3-8B-shaped HF checkpoint (16 GB of bf16 safetensors in 4
shards, generated a few MB at a time) into DIR (default: a new temporary directory),
then loads it the way a user would. The weights should stay bfloat16 and memory-mapped:
the check below lists every weight tensor's in-memory form and whether it is backed by
the file or by a private copy. The checkpoint is deleted at the end unless --keep
(a complete checkpoint already in DIR is reused and kept).
"""

import argparse
import mmap
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

SHAPE = "llama-3-8b"
PROMPT = "The capital of France is"
MEMORY_LIMIT = 24 * 2**30
_GIB = 2**30


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write (or find) the checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--tokens", type=int, default=8, help="tokens to generate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba"))
    args = parser.parse_args()
    if args.threads < 1 or args.tokens < 2:
        parser.error("--threads must be at least 1 and --tokens at least 2 (the first token "
                     "comes out of the prefill; decode speed needs a second)")
    return args


def memory_status() -> dict:
    """This process's memory from /proc/self/status and getrusage, in bytes: resident
    now (anonymous = private copies, file = mapped pages of the checkpoint) and peak."""
    with open("/proc/self/status") as f:
        status = {key: value.split() for key, value in (line.split(":", 1) for line in f)}
    kib = {key: int(status[key][0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {**kib, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def is_file_backed(array) -> bool:
    """True when the array's memory belongs to a memory-mapped file, not a private copy."""
    while array is not None:
        if isinstance(array, mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def weight_forms(weights: dict) -> dict:
    """(in-memory form, file-backed?) -> [tensor count, bytes], each tensor once."""
    import numpy as np

    from llama3_np.formats import distinct
    from llama3_np.formats.bf16 import BF16

    forms = {}
    for tensor in distinct(weights.values()):
        data = tensor.bits if isinstance(tensor, BF16) else tensor
        kind = "BF16 (uint16 bits)" if isinstance(tensor, BF16) else (
            f"{data.dtype} ndarray" if isinstance(data, np.ndarray) else type(tensor).__name__)
        backed = is_file_backed(data) if isinstance(data, np.ndarray) else False
        entry = forms.setdefault((kind, backed), [0, 0])
        entry[0] += 1
        entry[1] += getattr(data, "nbytes", 0)
    return forms


def write_checkpoint(directory: Path) -> None:
    """The random 8B checkpoint in directory, after checking the disk has room for it."""
    from make_checkpoint import checkpoint_bytes, write_random_checkpoint

    directory.mkdir(parents=True, exist_ok=True)
    needed, free = checkpoint_bytes(SHAPE), shutil.disk_usage(directory).free
    if free < needed * 1.05:
        sys.exit(f"big_model.py: {directory} has {free / 1e9:.1f} GB free; the checkpoint "
                 f"needs {needed / 1e9:.1f} GB (choose another place with --dir)")
    write_random_checkpoint(directory, SHAPE, log=lambda m: print(m, file=sys.stderr))


def measure(directory: Path, args) -> dict:
    import llama3_np
    from bench_case import weight_bytes_per_token
    from llama3_np import kernels

    start = time.perf_counter()
    model = llama3_np.load(directory, dtype="bf16", backend=args.backend)
    kernels.set_threads(args.threads)
    kernels.warmup()
    load_seconds = time.perf_counter() - start
    after_load = memory_status()
    # The first generation faults the mapped weights in from the page cache (or disk);
    # the second shows the steady state.
    runs = [model.generate(PROMPT, max_tokens=args.tokens, stop_ids=()).stats
            for _ in range(2)]
    return {"load_seconds": load_seconds, "after_load": after_load,
            "after_decode": memory_status(), "runs": runs,
            "forms": weight_forms(model.weights),
            "read_per_token": weight_bytes_per_token(model.weights),
            "backend": kernels.active_backend()}


def report(args, m: dict, bandwidth: float, machine: dict) -> str:
    from results import machine_markdown, markdown_table

    runs, peak = m["runs"], m["after_decode"]
    bound = bandwidth * 1e9 / m["read_per_token"]
    speed_rows = [[when, f"{r.prefill_tps:.2f}", f"{r.decode_tps:.2f}",
                   f"{r.decode_tps * m['read_per_token'] / 1e9:.1f}"]
                  for when, r in zip(("first (weights faulted in)", "second"), runs)]
    memory_rows = [[when, *(f"{s[k] / _GIB:.2f}" for k in
                            ("VmRSS", "RssAnon", "RssFile", "VmHWM", "ru_maxrss"))]
                   for when, s in (("after load", m["after_load"]),
                                   ("after both generations", peak))]
    forms = [[kind, "memory-mapped file" if backed else "private copy (anonymous memory)",
              count, f"{nbytes / _GIB:.2f}"]
             for (kind, backed), (count, nbytes) in sorted(m["forms"].items())]
    peak_gib = max(peak["VmHWM"], peak["ru_maxrss"]) / _GIB
    verdict = "PASS" if peak_gib < MEMORY_LIMIT / _GIB else "MISS"
    return "\n\n".join([
        "## Llama 3 8B in 24 GiB (benchmarks/big_model.py)",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/big_model.py --tokens "
        f"{args.tokens} --threads {args.threads}`: random bf16 weights of the Llama 3 8B shape "
        "(dim 4096, 32 layers, 32/8 heads, ffn 14336, vocab 128256, separate output), "
        f"16 GB in 4 safetensors shards, loaded with `llama3_np.load(dtype=\"bf16\")`, "
        f"backend {m['backend']}; prompt {PROMPT!r} ({runs[0].prompt_tokens} tokens), "
        f"{runs[0].generated_tokens} tokens generated greedily, twice.",
        machine_markdown(machine),
        markdown_table(["load s", "peak RSS GiB", "under 24 GiB", "bandwidth bound tok/s"],
                       [[f"{m['load_seconds']:.1f}", f"{peak_gib:.2f}", verdict,
                         f"{bound:.2f} ({bandwidth:.1f} GB/s / "
                         f"{m['read_per_token'] / 1e9:.1f} GB per token)"]]),
        markdown_table(["generation", f"prefill {runs[0].prompt_tokens} tok/s", "decode tok/s",
                        "weights read GB/s"], speed_rows),
        "Memory (GiB; RssFile counts the checkpoint's pages mapped in, which the kernel can "
        "drop and re-read, RssAnon the private copies):",
        markdown_table(["when", "VmRSS", "RssAnon", "RssFile", "VmHWM", "ru_maxrss"],
                       memory_rows),
        "Weights in memory:",
        markdown_table(["form", "backed by", "tensors", "GiB"], forms),
    ])


def main():
    args = parse_args()
    configure_threads(args.threads)
    from machine import best_read_gbps, describe_machine, load_average, memory_bandwidth
    from make_checkpoint import is_complete
    from results import write_section

    machine = {**describe_machine(), "load average at start": load_average()}
    bandwidth = best_read_gbps([memory_bandwidth()])
    directory = args.dir or Path(tempfile.mkdtemp(prefix="llama3np-8b-"))
    reused = is_complete(directory, SHAPE)
    try:
        if reused:
            print(f"reusing the checkpoint in {directory}", file=sys.stderr)
        else:
            write_checkpoint(directory)
        measured = measure(directory, args)
    finally:
        if not (reused or args.keep):
            shutil.rmtree(directory, ignore_errors=True)
            print(f"deleted {directory}", file=sys.stderr)
    markdown = report(args, measured, bandwidth, machine)
    print(markdown)
    write_section("big_model.py", markdown)


if __name__ == "__main__":
    main()
