"""Long prompts on the Llama 3.2 1B shape: prefill time, memory beyond the weights, and
a decode step at that context, llama3_np beside PyTorch + transformers (fp32, SDPA) on
the same checkpoint. Writes its section of benchmarks/RESULTS.md.

    python benchmarks/long_context.py [--layers 1] [--lengths 512,2048,8192,32768]
                                      [--threads 2] [--no-torch] [--no-full-context]

The checkpoint is the 1B shape cut to --layers layers (default 1: a 32k-token prefill
costs minutes per layer on 2 cores, and every layer costs the same), random bf16
weights, run in float32 by both engines. Each length runs llama3_np, PyTorch and
llama3_np again, each in its own process (bench_case.py), so drifts in the machine's
speed show as a difference between the two llama3_np rows. Memory is the peak resident
size during the prefill and decode, above what was resident after loading.

Then, with --full-context (the default), the whole 16-layer 1B model in bf16 with a
bf16 KV cache reserved for all 131,072 positions and filled to 131,000: three decode
steps there, and the process's peak resident memory.

This is a benchmark, not a test: it reports PASS / MISS against the targets.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHAPE = "llama-3.2-1b"
GIB = 1 << 30
SLACK = 1.5 * GIB  # target: peak <= weights + KV cache + this
PREFILL_RATIO = 1.5  # target: our prefill time per token <= this x PyTorch's
FULL_CONTEXT = 131072
DECODE_AT = 131000


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--lengths", default="512,2048,8192,32768")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode", type=int, default=3, help="decode steps after each prompt")
    parser.add_argument("--no-torch", action="store_true", help="llama3_np rows only")
    parser.add_argument("--no-full-context", action="store_true",
                        help="skip the decode steps at position 131,000")
    parser.add_argument("--dir", type=Path, default=None,
                        help="keep the checkpoints here (default: a temporary directory)")
    parser.add_argument("--decode-at-full-context", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def bench_case(checkpoint: Path, engine: str, prompt: int, args) -> dict:
    command = [sys.executable, str(HERE / "bench_case.py"), str(checkpoint), "--engine", engine,
               "--threads", str(args.threads), "--prompt", str(prompt),
               "--decode", str(args.decode), "--prefill-repeats", "1"]
    if engine == "llama3_np":
        command += ["--backend", "numba"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": " / ".join(done.stderr.strip().splitlines()[-2:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def kv_cache_bytes(config, positions: int, kv_dtype: str = "f32") -> int:
    from llama3_np.kv_cache import kv_bytes_per_position

    return positions * kv_bytes_per_position(config, kv_dtype)


def length_rows(checkpoint: Path, config, length: int, args) -> list:
    engines = ["llama3_np"] + ([] if args.no_torch else ["torch", "llama3_np"])
    rows = []
    for engine in engines:
        print(f"  {engine} at {length} tokens ...", file=sys.stderr, flush=True)
        m = bench_case(checkpoint, engine, length, args)
        if "error" in m:
            rows.append({"engine": engine, "length": length, "error": m["error"]})
            continue
        above_load = m["VmHWM"] - m["resident_after_load"]
        rows.append({"engine": engine, "length": length,
                     "prefill_ms_per_token": 1e3 * m["prefill_seconds"][0] / length,
                     "decode_ms": 1e3 * statistics.median(m["decode_seconds"]),
                     "resident_after_load": m["resident_after_load"],
                     "peak_above_load": above_load,
                     "kv_bytes": kv_cache_bytes(config, length + args.decode)})
    return rows


def decode_at_full_context(checkpoint: Path, threads: int) -> dict:
    """In this process: bf16 weights, a bf16 KV cache for every position, filled (its
    pages touched, as a real prefill would) to DECODE_AT; three timed decode steps."""
    from llama3_np.threads import configure_threads

    configure_threads(threads)
    import numpy as np

    import llama3_np

    model = llama3_np.load(checkpoint, dtype="bf16", kv_dtype="bf16")
    cache = model.new_cache(FULL_CONTEXT)
    rng = np.random.default_rng(0)
    for buffer in cache.keys + cache.values:  # random bf16 values of size ~1
        buffer[:, :DECODE_AT] = rng.integers(0x3C00, 0x3F80, buffer[:, :DECODE_AT].shape,
                                             dtype=np.uint16)
    cache.length = DECODE_AT
    seconds = []
    for position in range(DECODE_AT, DECODE_AT + 3):
        start = time.perf_counter()
        model.forward([1], position, last_only=True, cache=cache)
        seconds.append(time.perf_counter() - start)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    weights = sum(t.nbytes for t in {id(t): t for t in model.weights.values()}.values())
    return {"decode_seconds": seconds, "peak": int(status["VmHWM"].split()[0]) * 1024,
            "weights": weights, "kv_bytes": cache.nbytes}


def full_context_run(root: Path, threads: int, log):
    """decode_at_full_context in a process of its own (its peak memory is the run's)."""
    from make_checkpoint import is_complete, write_random_checkpoint

    whole = root / SHAPE
    if not is_complete(whole, SHAPE):
        write_random_checkpoint(whole, SHAPE, log=log)
    log(f"decode at position {DECODE_AT} of the whole model ...")
    done = subprocess.run([sys.executable, __file__, "--threads", str(threads),
                           "--decode-at-full-context", str(whole)], capture_output=True, text=True)
    if done.returncode != 0:
        log("  failed: " + " / ".join(done.stderr.strip().splitlines()[-2:]))
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, machine: dict, config, rows: list, full: dict) -> str:
    from results import machine_markdown, markdown_table

    from llama3_np.memory import human_size

    parts = ["## Long prompts (benchmarks/long_context.py)", machine_markdown(machine),
             f"Llama 3.2 1B shape cut to {args.layers} layer(s) (dim 2048, 32/8 heads, "
             f"ffn 8192, vocabulary 128,256), random bf16 weights run in float32 by both "
             f"engines, {args.threads} threads; llama3_np on its numba backend, PyTorch "
             "with transformers' SDPA attention. Rows in the order they ran."]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["length"], r["engine"], "failed: " + r["error"][:80], "", "", ""])
            continue
        table.append([f"{r['length']:,}", r["engine"], f"{r['prefill_ms_per_token']:.2f}",
                      f"{r['decode_ms']:.0f}", human_size(r["peak_above_load"]),
                      human_size(r["kv_bytes"])])
    parts.append(markdown_table(["prompt", "engine", "prefill ms/token", "decode ms/step",
                                 "peak above loaded weights", "of which KV cache (f32)"], table))
    parts.append("\n".join(targets(rows)))
    if full:
        parts.append(
            f"Decode at position {DECODE_AT:,} of the full 16-layer 1B model, bf16 weights "
            f"({human_size(full['weights'])}) and a bf16 KV cache reserved for "
            f"{FULL_CONTEXT:,} positions ({human_size(full['kv_bytes'])}): "
            f"{statistics.median(full['decode_seconds']) * 1e3:.0f} ms a step (median of 3), "
            f"peak resident {human_size(full['peak'])} of the machine's 24 GiB.")
    return "\n\n".join(parts)


def targets(rows: list) -> list:
    lines = []
    ours = [r for r in rows if r["engine"] == "llama3_np" and "error" not in r]
    for r in ours:
        if r["length"] >= 32768:
            ok = r["peak_above_load"] <= r["kv_bytes"] + SLACK
            lines.append(f"- {'PASS' if ok else 'MISS'}: {r['length']:,} tokens, peak above "
                         f"the loaded weights {r['peak_above_load'] / GIB:.2f} GiB <= KV cache "
                         f"{r['kv_bytes'] / GIB:.2f} + 1.5 GiB")
    for length in sorted({r["length"] for r in rows if r["length"] >= 8192}):
        theirs = [r for r in rows if r["engine"] == "torch" and r["length"] == length
                  and "error" not in r]
        mine = [r for r in ours if r["length"] == length]
        if theirs and mine:
            best = min(r["prefill_ms_per_token"] for r in mine)
            ratio = best / theirs[0]["prefill_ms_per_token"]
            lines.append(f"- {'PASS' if ratio <= PREFILL_RATIO else 'MISS'}: {length:,} tokens, "
                         f"prefill time per token {ratio:.2f}x PyTorch SDPA's (target <= "
                         f"{PREFILL_RATIO}x; the faster llama3_np row)")
    return lines


def main():
    args = parse_args()
    if args.decode_at_full_context:  # the child process of the full-context run
        print(json.dumps(decode_at_full_context(args.decode_at_full_context, args.threads)))
        return
    from machine import describe_machine
    from make_checkpoint import is_complete, write_random_checkpoint
    from results import write_section

    from llama3_np.config import from_hf_config

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    root = args.dir or Path(tempfile.mkdtemp(prefix="llama3np-long-"))
    try:
        cut = root / f"{SHAPE}-{args.layers}-layers"
        if not is_complete(cut, SHAPE, args.layers):
            write_random_checkpoint(cut, SHAPE, n_layers=args.layers, log=log)
        config = from_hf_config(json.loads((cut / "config.json").read_text()))
        machine = describe_machine()
        rows = []
        for length in [int(n) for n in args.lengths.split(",")]:
            log(f"{length} tokens")
            rows += length_rows(cut, config, length, args)
        full = None if args.no_full_context else full_context_run(root, args.threads, log)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    markdown = report(args, machine, config, rows, full)
    print(markdown)
    write_section("long_context.py", markdown)


if __name__ == "__main__":
    main()
