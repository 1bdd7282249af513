"""End-to-end throughput on the Llama 3.2 1B shape: llama3_np for each weight dtype and
kernel backend, beside PyTorch + transformers on the same checkpoint and thread count,
against the memory bandwidth measured in the same run. Writes benchmarks/RESULTS.md.

    python benchmarks/bench.py [--quick] [--threads 2] [--only bf16,torch] [--checkpoint DIR]

A random-weight bfloat16 HF checkpoint of the 1B shape (2.5 GB) is written to a
temporary directory and deleted afterwards (--checkpoint DIR keeps and reuses one).
Each row runs in its own process (bench_case.py). Decode speed is the median step of
greedy decoding after the prompt, so a neighbour's burst on a shared machine moves it
less than a mean would; "weights read" is the bytes of weights one step must read
times that rate. A decode step reads every weight once, so it cannot beat
bandwidth / bytes per token: the bound the targets refer to.

This is a benchmark, not a test: it asserts nothing, it reports PASS / MISS.
"""

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

SHAPE = "llama-3.2-1b"
FULL = {"prompt": 128, "decode": 32}
QUICK = {"prompt": 32, "decode": 8}
SAMPLING_VOCAB = 128256
BANDWIDTH_DRIFT = 0.10  # more change than this between the two measurements is noted


@dataclass(frozen=True)
class Case:
    engine: str  # "llama3_np" or "torch"
    dtype: str  # "f32", "bf16", "q8"
    backend: str = ""  # llama3_np's kernel backend

    @property
    def label(self) -> str:
        if self.engine == "torch":
            return f"PyTorch {self.dtype}"
        # float32 weights go to BLAS whatever the backend, so f32 is measured once.
        return f"llama3_np {self.dtype} ({'BLAS' if self.dtype == 'f32' else self.backend})"

    def matches(self, selector: str) -> bool:
        """"bf16", "numba", "torch", "bf16/numba": every part names a field of this case."""
        names = {self.engine, self.dtype, self.backend} | (
            {"pytorch"} if self.engine == "torch" else set())
        return all(part in names for part in selector.lower().split("/"))


CASES = [Case("llama3_np", "f32", "numpy"),
         Case("llama3_np", "bf16", "numpy"), Case("llama3_np", "bf16", "numba"),
         Case("llama3_np", "q8", "numpy"), Case("llama3_np", "q8", "numba"),
         Case("torch", "f32"), Case("torch", "bf16")]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"prompt {QUICK['prompt']} and {QUICK['decode']} decoded tokens "
                             f"instead of {FULL['prompt']} and {FULL['decode']}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="",
                        help="comma-separated rows to run, each a dtype, backend or engine "
                             "or several joined by '/': e.g. 'f32,bf16/numba,torch'")
    parser.add_argument("--checkpoint", type=Path,
                        help="reuse the checkpoint in DIR, or write it there and keep it")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def selected_cases(only: str) -> list:
    cases = CASES
    if importlib.util.find_spec("numba") is None:
        print("numba is not installed: skipping the numba rows", file=sys.stderr)
        cases = [c for c in cases if c.backend != "numba"]
    if importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: skipping the PyTorch rows", file=sys.stderr)
        cases = [c for c in cases if c.engine != "torch"]
    selectors = [s for s in only.split(",") if s.strip()]
    if selectors:
        cases = [c for c in cases if any(c.matches(s.strip()) for s in selectors)]
        if not cases:
            sys.exit(f"bench.py: --only {only!r} selects no row")
    return cases


def run_case(case: Case, checkpoint: Path, threads: int, tokens: dict) -> dict:
    """bench_case.py's measurement of one row, or {"error": ...} if it failed."""
    command = [sys.executable, str(HERE / "bench_case.py"), str(checkpoint),
               "--engine", case.engine, "--dtype", case.dtype, "--threads", str(threads),
               "--prompt", str(tokens["prompt"]), "--decode", str(tokens["decode"])]
    if case.backend:
        command += ["--backend", case.backend]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last_lines = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: " + " / ".join(last_lines)}
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    case: Case
    prefill_tps: float
    decode_tps: float
    weight_bytes: int  # read per decode step
    peak_rss: int
    load_seconds: float
    threads_in_use: dict

    @classmethod
    def from_measurement(cls, case: Case, m: dict) -> "Row":
        return cls(case, prefill_tps=m["prompt_tokens"] / min(m["prefill_seconds"]),
                   decode_tps=1 / statistics.median(m["decode_seconds"]),
                   weight_bytes=m["weight_bytes_per_token"], peak_rss=m["ru_maxrss"],
                   load_seconds=m["load_seconds"], threads_in_use=m["threads_in_use"])

    @property
    def read_gbps(self) -> float:
        return self.weight_bytes * self.decode_tps / 1e9

    def bound_tps(self, bandwidth_gbps: float) -> float:
        return bandwidth_gbps * 1e9 / self.weight_bytes


def sampling_costs(repeats: int = 30) -> dict:
    """Median milliseconds per sampled token over a Llama 3 sized vocabulary."""
    import numpy as np

    from llama3_np.sampling import Sampler

    logits = 3 * np.random.default_rng(0).standard_normal(SAMPLING_VOCAB, dtype=np.float32)
    samplers = {"greedy": Sampler(0), "temperature 0.8": Sampler(0.8, seed=0),
                "temperature 0.8, top-k 40": Sampler(0.8, top_k=40, seed=0),
                "temperature 0.8, top-p 0.9": Sampler(0.8, top_p=0.9, seed=0)}
    costs = {}
    for name, sampler in samplers.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sampler(logits)
            times.append(time.perf_counter() - start)
        costs[name] = 1e3 * statistics.median(times)
    return costs


def fastest(rows: list, engine: str, dtype: str, speed=lambda r: r.decode_tps):
    """The row of engine and dtype (over backends) with the highest speed(row), or None."""
    return max((r for r in rows if r.case.engine == engine and r.case.dtype == dtype),
               key=speed, default=None)


def targets(rows: list, bandwidth: float, prompt_tokens: int) -> list:
    """(target, measured, result, evidence) for each target whose rows were measured.

    A MISS that the memory bandwidth forces (the bound is below what is required)
    says so, with the numbers, as its evidence."""
    out = []

    def check(name: str, measured: float, required: float, bound_tps: float = None):
        evidence = ""
        if measured < required and bound_tps is not None and bound_tps < required:
            evidence = (f"impossible here: the bandwidth bound is {bound_tps:.2f} tok/s "
                        f"({bandwidth:.1f} GB/s / bytes per token), below the "
                        f"{required:.2f} required")
        out.append((name, f"{measured:.2f} tok/s (needs >= {required:.2f})",
                    "PASS" if measured >= required else "MISS", evidence))

    for dtype in ("f32", "bf16"):
        mine, torch = fastest(rows, "llama3_np", dtype), fastest(rows, "torch", dtype)
        if mine and torch:
            check(f"decode {dtype} >= 2x PyTorch {dtype}: {mine.case.label}",
                  mine.decode_tps, 2 * torch.decode_tps, mine.bound_tps(bandwidth))
    f32 = fastest(rows, "llama3_np", "f32")
    if f32:
        check("decode f32 >= 85% of the f32 bandwidth bound", f32.decode_tps,
              0.85 * f32.bound_tps(bandwidth))
    q8 = fastest(rows, "llama3_np", "q8")
    if q8:
        check(f"decode q8 >= 25 tok/s: {q8.case.label}", q8.decode_tps, 25.0,
              q8.bound_tps(bandwidth))
    torch_bf16 = fastest(rows, "torch", "bf16")
    for dtype in ("f32", "bf16", "q8"):
        mine = fastest(rows, "llama3_np", dtype, speed=lambda r: r.prefill_tps)
        if mine and torch_bf16:
            check(f"prefill {prompt_tokens} >= PyTorch bf16: {mine.case.label}",
                  mine.prefill_tps, torch_bf16.prefill_tps)
    return out


def bandwidth_drift_note(bandwidths: list) -> str:
    """A warning when the GEMV bandwidth before and after the rows differs by more than
    BANDWIDTH_DRIFT: on a shared host, neighbours take memory bandwidth without showing
    in the load average, and every row measured them too."""
    rates = [b["gemv"] for b in bandwidths]
    drift = max(rates) / min(rates) - 1
    if drift <= BANDWIDTH_DRIFT:
        return ""
    return (f" The bandwidth moved by {100 * drift:.0f}% during the run: the memory is "
            "shared with other machines, so compare rows with care and re-run when it is quiet.")


def results_markdown(args, tokens, machine_description, loads, bandwidths, bandwidth, rows,
                     failures, target_rows, sampling) -> str:
    from machine import BANDWIDTH_BUFFER_BYTES, QUIET_LOAD
    from results import machine_markdown, markdown_table

    table = markdown_table(
        ["engine, weights (backend)", f"prefill {tokens['prompt']} tok/s", "decode tok/s",
         "decode ms/token", "weights read GB/s", "% of bandwidth", "bound tok/s",
         "peak RSS GB", "load s", "threads seen"],
        [[r.case.label, f"{r.prefill_tps:.1f}", f"{r.decode_tps:.2f}",
          f"{1e3 / r.decode_tps:.0f}", f"{r.read_gbps:.1f}",
          f"{100 * r.read_gbps / bandwidth:.0f}%", f"{r.bound_tps(bandwidth):.2f}",
          f"{r.peak_rss / 1e9:.1f}", f"{r.load_seconds:.0f}",
          ", ".join(f"{k} {v}" for k, v in r.threads_in_use.items())] for r in rows])
    bandwidth_table = markdown_table(
        ["when", "np.sum, 1 thread (read)",
         f"BLAS f32 GEMV, {args.threads} thread{'s' * (args.threads > 1)} (read)",
         "np.copyto, 1 thread (read + write)"],
        [[when, f"{b['sum']:.1f} GB/s", f"{b['gemv']:.1f} GB/s", f"{b['copy']:.1f} GB/s"]
         for when, b in zip(("before the rows", "after the rows"), bandwidths)])
    parts = [
        "## End-to-end: Llama 3.2 1B shape (benchmarks/bench.py)",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/bench.py"
        f"{' --quick' if args.quick else ''} --threads {args.threads}"
        f"{' --only ' + args.only if args.only else ''}`: random bf16 weights (dim 2048, 16 "
        f"layers, 32/8 heads, ffn 8192, vocab 128256, tied), prompt {tokens['prompt']} random "
        f"tokens, then {tokens['decode']} greedy decode steps (decode tok/s = 1 / median step).",
        machine_markdown(machine_description),
        f"Load average {loads[0]:.2f} before the run ({loads[1]:.2f} at the end, which counts "
        "this benchmark's own threads)"
        + (": other programs were competing for the cores, so these numbers measure them "
           "too; re-run on a quiet machine." if loads[0] > QUIET_LOAD else "."),
        f"### Memory bandwidth ({BANDWIDTH_BUFFER_BYTES >> 20} MiB buffers)",
        bandwidth_table,
        f"Bound used below: {bandwidth:.1f} GB/s, the best read rate above. Bound tok/s = "
        "that / bytes of weights one decode step reads." + bandwidth_drift_note(bandwidths),
        "### Throughput", table]
    if failures:
        parts.append("Rows that failed: " + "; ".join(f"{c.label}: {e}" for c, e in failures))
    if target_rows:
        parts += ["### Targets (ratios within this run)",
                  markdown_table(["target", "measured", "result", "evidence"], target_rows)]
    parts += ["### Per-token sampling cost (vocabulary 128256)",
              markdown_table(["sampler", "ms / token"],
                             [[name, f"{ms:.2f}"] for name, ms in sampling.items()])]
    return "\n\n".join(parts)


def main():
    args = parse_args()
    configure_threads(args.threads)
    from machine import best_read_gbps, describe_machine, load_average, memory_bandwidth
    from make_checkpoint import is_complete, write_random_checkpoint
    from results import write_section

    cases = selected_cases(args.only)
    tokens = QUICK if args.quick else FULL
    machine_description = describe_machine()
    loads = [load_average()]
    bandwidths = [memory_bandwidth()]
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    checkpoint = args.checkpoint or Path(tempfile.mkdtemp(prefix="llama3np-bench-"))
    try:
        if not is_complete(checkpoint, SHAPE):
            write_random_checkpoint(checkpoint, SHAPE, log=log)
        rows, failures = [], []
        for case in cases:
            log(f"running {case.label} ...")
            measured = run_case(case, checkpoint, args.threads, tokens)
            if "error" in measured:
                failures.append((case, measured["error"]))
                log(f"  failed: {measured['error']}")
                continue
            rows.append(Row.from_measurement(case, measured))
            log(f"  prefill {rows[-1].prefill_tps:.1f} tok/s, decode {rows[-1].decode_tps:.2f} "
                f"tok/s ({rows[-1].read_gbps:.1f} GB/s of weights)")
    finally:
        if args.checkpoint is None:
            shutil.rmtree(checkpoint, ignore_errors=True)
    loads.append(load_average())
    bandwidths.append(memory_bandwidth())
    bandwidth = best_read_gbps(bandwidths)
    markdown = results_markdown(args, tokens, machine_description, loads, bandwidths, bandwidth,
                                rows, failures, targets(rows, bandwidth, tokens["prompt"]),
                                sampling_costs())
    print(markdown)
    write_section("bench.py", markdown)


if __name__ == "__main__":
    main()
