"""End-to-end throughput on the Llama 3.2 1B shape and on the demo model: llama3_np beside
llama.cpp on the same GGUF files and PyTorch + transformers on the same checkpoint, with the
memory bandwidth measured in the same run. Writes benchmarks/RESULTS.md.

    python benchmarks/bench.py [--quick] [--threads 2] [--only bf16,torch] [--checkpoint DIR]
                               [--llama-bench PATH] [--llama-bench-also PATH] [--numpy-rows]

A random-weight bfloat16 HF checkpoint of the 1B shape (2.5 GB) is written to a temporary
directory and deleted afterwards (--checkpoint DIR keeps and reuses one, with its GGUF
files). to_gguf.py writes it as F32 and BF16 GGUF files and llama.cpp's llama-quantize
(found beside llama-bench) makes the Q8_0, Q4_0 and Q4_K ones (every matrix in that type).
llama3_np reads each GGUF file as stored (F32 as float32, BF16 as bf16, Q8_0 as q8, Q4_0
and Q4_K kept 4-bit), the numba backend unless --numpy-rows adds NumPy's, with float32
activations and again with the lower-precision ones a type allows (LOW_PRECISION_X).
Engines are interleaved for each weight type: llama3_np, llama.cpp, llama3_np again, so a
change of the machine's speed during the run shows as a difference between our two rows.

Each llama3_np / PyTorch row runs in its own process (bench_case.py). Decode speed is the
median step of greedy decoding after the prompt; prefill the faster of two. llama.cpp's
rows come from `llama-bench -p PROMPT -n DECODE -r 3` (its own warm-up, then three runs;
prefill the best run, decode the median; its decode starts from an empty context and its
KV cache is f16, which at ~150 positions changes a 1B step by well under 1%). A decode
step reads every weight once, so it cannot beat bandwidth / bytes per token: the bound.
Our rows also time their decode steps outside the matmuls (bench_case.py), and a decode
target that misses says what the matmuls would need to meet it.

This is a benchmark, not a test: it asserts nothing, it reports PASS / MISS.
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

SHAPE = "llama-3.2-1b"
DEMO_MODEL = HERE.parent / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FULL = {"prompt": 128, "decode": 32, "demo_decode": 64}
QUICK = {"prompt": 32, "decode": 8, "demo_decode": 16}
SAMPLING_VOCAB = 128256
BANDWIDTH_DRIFT = 0.10  # more change than this between the two measurements is noted
GGUF_TYPES = ("F32", "BF16", "Q8_0", "Q4_0", "Q4_K")
# The dtype llama3_np loads each GGUF type as: the file's own precision.
STORED_AS = {"F32": "f32", "BF16": "bf16", "Q8_0": "q8", "Q4_0": "stored", "Q4_K": "stored",
             "Q4_1": "stored"}
LLAMA_CPP_TARGET = {"decode": 0.95, "prefill": 0.8}  # issue 14: ours / llama.cpp
# Weight types whose kernels can also take activations in a lower precision (float32 x
# is the default): int8 for the q8 / 4-bit decode kernels, bf16 for the bf16 prefill
# GEMMs. Those run both ways, as backends "numba" and "numba-int8" / "numba-bf16".
LOW_PRECISION_X = {"Q8_0": "int8", "Q4_0": "int8", "Q4_K": "int8", "Q4_1": "int8",
                   "BF16": "bf16"}


@dataclass(frozen=True)
class Case:
    engine: str  # "llama3_np", "llama.cpp" or "torch"
    weights: str  # a GGUF type (llama3_np, llama.cpp) or "f32" / "bf16" (PyTorch)
    backend: str = ""  # llama3_np's kernel backend; for llama.cpp, a second build's name
    model: str = "1b"  # "1b" (the benchmark checkpoint) or "demo" (SmolLM2 Q4_1)
    threads: int = 0  # 0: --threads

    @property
    def label(self) -> str:
        if self.engine == "torch":
            return f"PyTorch {self.weights}"
        name = f"{self.engine} {self.weights}"
        if self.backend and (self.engine, self.weights) != ("llama3_np", "F32"):
            name += f" ({self.backend})"  # llama3_np's F32 always goes to BLAS
        return name + (f", {self.threads} thread{'s' * (self.threads > 1)}"
                       if self.threads else "")

    def matches(self, selector: str) -> bool:
        """"bf16", "numba", "torch", "demo", "q4_0/llama.cpp": every part names a field."""
        names = {self.engine, self.weights.lower(), self.backend, self.model,
                 *self.backend.split("-")} | ({"pytorch"} if self.engine == "torch" else set())
        return all(part in names for part in selector.lower().split("/"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"prompt {QUICK['prompt']} and {QUICK['decode']} decoded tokens "
                             f"instead of {FULL['prompt']} and {FULL['decode']}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="",
                        help="comma-separated rows to run, each a weight type, backend, engine "
                             "or model, or several joined by '/': e.g. 'f32,q4_0/llama.cpp,demo'")
    parser.add_argument("--checkpoint", type=Path,
                        help="reuse the checkpoint (and its GGUF files) in DIR, or write them "
                             "there and keep them")
    add_llama_bench_option(parser)
    parser.add_argument("--llama-bench-also", type=Path, action="append", default=[],
                        metavar="PATH", help="another llama.cpp build's llama-bench, run "
                        "beside the first for reference (e.g. one built without AMX); "
                        "named by its build folder; repeatable")
    parser.add_argument("--numpy-rows", action="store_true",
                        help="also run llama3_np's NumPy backend (slow: no fused kernels)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    for path in filter(None, [args.llama_bench, *args.llama_bench_also]):
        if not path.is_file():
            parser.error(f"llama-bench {path}: no such file")
    if args.llama_bench_also and args.llama_bench is None:
        parser.error("--llama-bench-also needs --llama-bench (the build the targets use)")
    return args


def add_llama_bench_option(parser) -> None:
    """--llama-bench PATH (the scripts that run llama.cpp beside llama3_np share it)."""
    parser.add_argument("--llama-bench", type=Path, default=default_llama_bench(),
                        help="llama.cpp's llama-bench binary (default: $LLAMA_BENCH, or "
                             "llama-bench on the PATH); without it llama.cpp is skipped")


def llama_cpp_builds(args) -> dict:
    """Build name ("" for --llama-bench, the reference) -> its llama-bench binary."""
    if args.llama_bench is None:
        return {}
    return {"": args.llama_bench, **{build_name(p): p for p in args.llama_bench_also}}


def build_name(llama_bench: Path) -> str:
    """A llama-bench binary's build folder: build-noamx/bin/llama-bench -> "build-noamx"."""
    parts = llama_bench.resolve().parts
    return parts[-3] if len(parts) >= 3 and parts[-2] == "bin" else str(llama_bench)


def default_llama_bench():
    found = os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")
    return Path(found) if found else None


def all_cases(threads: int, builds: list, numpy_rows: bool) -> list:
    """Every row, in run order: for each weight type llama3_np, llama.cpp (each build),
    llama3_np again; PyTorch; then the demo model the same way at 1 thread and at
    `threads`."""
    def interleaved(weights: str, model: str = "1b", n: int = 0) -> list:
        backends = ["numba"] + ([f"numba-{LOW_PRECISION_X[weights]}"]
                                if weights in LOW_PRECISION_X else [])
        ours = [Case("llama3_np", weights, backend, model, n) for backend in backends]
        theirs = [Case("llama.cpp", weights, build, model, n) for build in builds]
        return [*ours, *theirs, *reversed(ours)] if theirs else ours

    cases = []
    for ggml_type in GGUF_TYPES:
        cases += interleaved(ggml_type)
        if numpy_rows and ggml_type != "F32":
            cases.append(Case("llama3_np", ggml_type, "numpy"))
    cases += [Case("torch", "f32"), Case("torch", "bf16")]
    for n in sorted({1, threads}):
        cases += interleaved("Q4_1", "demo", n)
    return cases


def selected_cases(args) -> list:
    builds = list(llama_cpp_builds(args))
    if not builds:
        print("no llama-bench (give --llama-bench PATH or set LLAMA_BENCH): skipping the "
              "llama.cpp rows", file=sys.stderr)
    cases = all_cases(args.threads, builds, args.numpy_rows)
    if importlib.util.find_spec("numba") is None:
        print("numba is not installed: the llama3_np rows use NumPy", file=sys.stderr)
        cases = list(dict.fromkeys(Case(c.engine, c.weights, "numpy", c.model, c.threads)
                                   if c.backend.startswith("numba") else c for c in cases))
    if importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: skipping the PyTorch rows", file=sys.stderr)
        cases = [c for c in cases if c.engine != "torch"]
    if not DEMO_MODEL.exists():
        print(f"{DEMO_MODEL} is missing (bash weights/fetch.sh): skipping the demo rows",
              file=sys.stderr)
        cases = [c for c in cases if c.model != "demo"]
    selectors = [s.strip() for s in args.only.split(",") if s.strip()]
    if selectors:
        cases = [c for c in cases if any(c.matches(s) for s in selectors)]
        if not cases:
            sys.exit(f"bench.py: --only {args.only!r} selects no row")
    return cases


def decode_steps(case: Case, tokens: dict) -> int:
    return tokens["demo_decode" if case.model == "demo" else "decode"]


def run_case(case: Case, weights: Path, threads: int, tokens: dict) -> dict:
    """bench_case.py's measurement of one row, or {"error": ...} if it failed."""
    decode = decode_steps(case, tokens)
    dtype = STORED_AS.get(case.weights, case.weights)
    command = [sys.executable, str(HERE / "bench_case.py"), str(weights),
               "--engine", case.engine, "--dtype", dtype,
               "--threads", str(case.threads or threads),
               "--prompt", str(tokens["prompt"]), "--decode", str(decode)]
    backend, _, activations = case.backend.partition("-")
    if backend:
        command += ["--backend", backend]
    if activations:
        command.append(f"--{activations}-activations")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last_lines = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: " + " / ".join(last_lines)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_llama_bench(binary: Path, gguf: Path, threads: int, tokens: dict, case: Case) -> dict:
    """llama-bench's prefill and decode runs, in bench_case.py's terms."""
    decode = decode_steps(case, tokens)
    command = [str(binary), "-m", str(gguf), "-p", str(tokens["prompt"]), "-n", str(decode),
               "-r", "3", "-t", str(threads), "-o", "json"]
    exit_code, out, err, peak_rss = run_measuring_memory(command)
    if exit_code != 0:
        return {"error": f"exit code {exit_code}: " + " / ".join(err.strip().splitlines()[-3:])}
    runs = json.loads(out)
    prefill = next(r for r in runs if r["n_prompt"] and not r["n_gen"])
    generate = next(r for r in runs if r["n_gen"] and not r["n_prompt"])
    return {"prompt_tokens": tokens["prompt"],
            "prefill_seconds": [ns / 1e9 for ns in prefill["samples_ns"]],
            # llama-bench times whole runs: a run's time per token stands for a step.
            "decode_seconds": [ns / 1e9 / decode for ns in generate["samples_ns"]],
            "weight_bytes_per_token": prefill["model_size"], "peak_rss": peak_rss,
            "load_seconds": float("nan"),
            "threads_in_use": {"llama.cpp": prefill["n_threads"]},
            "build": f"{prefill['build_commit']} ({prefill['build_number']})"}


# Runs a command and reports its peak RSS (KiB) on stderr's last line. Linux starts a
# process's ru_maxrss at its parent's peak when the parent spawns it with vfork (as
# Python's subprocess does), so this small process stands between: the command's
# ru_maxrss starts from this one's few MB, not from the benchmark's gigabytes.
_PEAK_RSS_OF = ("import resource, subprocess, sys\n"
                "code = subprocess.call(sys.argv[1:])\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
                "sys.exit(code)\n")


def run_measuring_memory(command: list) -> tuple:
    """(exit code, stdout, stderr, peak RSS in bytes) of a command."""
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS_OF, *command],
                          capture_output=True, text=True)
    *err, peak_kib = done.stderr.rstrip("\n").split("\n")
    return done.returncode, done.stdout, "\n".join(err), int(peak_kib) * 1024


@dataclass
class Row:
    case: Case
    prefill_tps: float
    decode_tps: float
    weight_bytes: int  # read per decode step
    peak_rss: int
    load_seconds: float
    threads_in_use: dict
    # llama3_np: a decode step's time outside the matmuls (bench_case.replayed_matmuls)
    outside_matmuls_seconds: Optional[float] = None

    @classmethod
    def from_measurement(cls, case: Case, m: dict) -> "Row":
        outside = m.get("outside_matmuls_seconds")
        return cls(case, prefill_tps=m["prompt_tokens"] / min(m["prefill_seconds"]),
                   decode_tps=1 / statistics.median(m["decode_seconds"]),
                   weight_bytes=m["weight_bytes_per_token"], peak_rss=m["peak_rss"],
                   load_seconds=m["load_seconds"], threads_in_use=m["threads_in_use"],
                   outside_matmuls_seconds=statistics.median(outside) if outside else None)

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


def rows_of(rows: list, engine: str, weights: str, model: str = "1b", threads: int = 0) -> list:
    return [r for r in rows if (r.case.engine, r.case.weights, r.case.model, r.case.threads)
            == (engine, weights, model, threads)]


def fastest(rows: list, engine: str, weights: str, speed=lambda r: r.decode_tps):
    """The 1B row of engine and weights (over backends and repeats) with the highest
    speed(row), or None."""
    return max(rows_of(rows, engine, weights), key=speed, default=None)


def mean(rows: list, speed) -> float:
    return statistics.fmean(speed(r) for r in rows)


def against_llama_cpp(rows: list, reference_only: bool = False) -> list:
    """(ours, theirs, our rows, their rows) for each llama.cpp build / weight type / model /
    thread count both engines ran, once per llama3_np backend with fused kernels (numba,
    numba-int8), our rows being the runs before and after llama.cpp's; reference_only:
    the --llama-bench build's only."""
    pairs = []
    for theirs in dict.fromkeys(r.case for r in rows if r.case.engine == "llama.cpp"
                                and not (reference_only and r.case.backend)):
        mine = [r for r in rows_of(rows, "llama3_np", theirs.weights, theirs.model,
                                   theirs.threads) if r.case.backend != "numpy"]
        for ours in dict.fromkeys(r.case for r in mine):
            pairs.append((ours, theirs, [r for r in mine if r.case == ours],
                          [r for r in rows if r.case == theirs]))
    return pairs


def what_decode_needs(ours: list, required_tps: float) -> str:
    """What our rows (one case, timed outside the matmuls too) would need to decode at
    required_tps: the Python and NumPy between the matmuls overlap no matmul, so the
    matmuls get what is left of the token's time; "" without that timing."""
    if any(r.outside_matmuls_seconds is None for r in ours):
        return ""
    outside = statistics.fmean(r.outside_matmuls_seconds for r in ours)
    allowed, weights = 1 / required_tps, ours[0].weight_bytes
    if outside >= allowed:
        return (f"out of reach of this design: a token spends {1e3 * outside:.2f} ms outside "
                f"the matmuls, at least the whole token the target allows "
                f"({1e3 * allowed:.2f} ms)")
    matmuls_now = statistics.fmean(1 / r.decode_tps - r.outside_matmuls_seconds for r in ours)
    now = (f"now {1e3 * matmuls_now:.2f} ms, {weights / matmuls_now / 1e9:.1f} GB/s"
           if matmuls_now > 0 else "now not measurable: the timings overlap")
    return (f"a token spends {1e3 * outside:.2f} ms outside the matmuls, so in the "
            f"{1e3 * allowed:.2f} ms the target allows they would have to read its "
            f"{weights / 1e6:.0f} MB of weights in {1e3 * (allowed - outside):.2f} ms "
            f"({weights / (allowed - outside) / 1e9:.1f} GB/s; {now})")


def float32_prefill_evidence(rows: list, required_tps: float, low_x: str) -> str:
    """Why bf16 or quantised weights times float32 x can miss a prefill target: that is
    float32 arithmetic, which float32 weights (nothing to decode) did not reach in this
    run either; llama.cpp takes x in low_x for those weights, as the numba-low_x row does."""
    f32 = fastest(rows, "llama3_np", "F32", speed=lambda r: r.prefill_tps)
    if f32 is None or f32.prefill_tps >= required_tps:
        return ""
    return (f"float32 arithmetic (x as it is): F32 weights, with nothing to decode, "
            f"prefilled at {f32.prefill_tps:.2f} tok/s in this run, below the "
            f"{required_tps:.2f} required; llama.cpp takes x in {low_x} for these weights, "
            f"as the (numba-{low_x}) row does")


def targets(rows: list, bandwidth: float, prompt_tokens: int) -> list:
    """(target, measured, result, evidence) for each target whose rows were measured.

    A MISS that the memory bandwidth forces (the bound is below what is required)
    says so, with the numbers, as its evidence; a decode MISS against llama.cpp says what
    the matmuls would need (what_decode_needs)."""
    from machine import l3_cache_bytes

    out = []

    def check(name: str, measured: float, required: float, bound_tps: float = None,
              unit: str = "tok/s", why_bound: str = "impossible here",
              fits_in_cache: bool = False, why_missed: str = ""):
        evidence = why_missed if measured < required else ""
        if measured < required and bound_tps is not None and bound_tps < required \
                and not fits_in_cache:
            evidence = (f"{why_bound}: the bandwidth bound is {bound_tps:.2f} tok/s "
                        f"({bandwidth:.1f} GB/s / bytes per token), below the "
                        f"{required:.2f} required")
        out.append((name, f"{measured:.2f} {unit} (needs >= {required:.2f})",
                    "PASS" if measured >= required else "MISS", evidence))

    # Issue 14: llama3_np / llama.cpp on the same GGUF file, within this run.
    for case, _, ours, theirs in against_llama_cpp(rows, reference_only=True):
        where = case.weights
        if case.model == "demo":
            where += f" demo model, {case.threads} thread{'s' * (case.threads > 1)}"
        if case.weights != "F32":  # F32 always goes to BLAS, whatever the backend
            where += f" ({case.backend})"
        share = 1.0 if case.model == "demo" else LLAMA_CPP_TARGET["decode"]
        decode = mean(ours, lambda r: r.decode_tps)
        required = share * mean(theirs, lambda r: r.decode_tps)
        check(f"decode {where} >= {share:g}x llama.cpp", decode, required,
              ours[0].bound_tps(bandwidth),
              # Weights that fit in the L3 cache are not read from memory: no such bound.
              fits_in_cache=ours[0].weight_bytes < l3_cache_bytes(),
              why_bound=f"impossible in our {case.weights} form, which reads "
                        f"{ours[0].weight_bytes / 1e9:.2f} GB a token against llama.cpp's "
                        f"{theirs[0].weight_bytes / 1e9:.2f}",
              why_missed=what_decode_needs(ours, required))
        if case.model == "1b":
            share = LLAMA_CPP_TARGET["prefill"]
            required = share * mean(theirs, lambda r: r.prefill_tps)
            low_x = LOW_PRECISION_X.get(case.weights)
            float32_x = low_x is not None and low_x not in case.backend.split("-")
            check(f"prefill {prompt_tokens} {where} >= {share:g}x llama.cpp",
                  mean(ours, lambda r: r.prefill_tps), required,
                  why_missed=float32_prefill_evidence(rows, required, low_x) if float32_x
                  else "")
    torch_bf16 = fastest(rows, "torch", "bf16", speed=lambda r: r.prefill_tps)
    for weights in GGUF_TYPES:
        mine = fastest(rows, "llama3_np", weights, speed=lambda r: r.prefill_tps)
        if mine and torch_bf16:
            check(f"prefill {prompt_tokens} >= PyTorch bf16: {mine.case.label}",
                  mine.prefill_tps, torch_bf16.prefill_tps)
    # Issue 6's, kept to show they still hold.
    for weights, torch_weights in (("F32", "f32"), ("BF16", "bf16")):
        mine, torch = fastest(rows, "llama3_np", weights), fastest(rows, "torch", torch_weights)
        if mine and torch:
            check(f"decode {weights} >= 2x PyTorch {torch_weights}: {mine.case.label}",
                  mine.decode_tps, 2 * torch.decode_tps, mine.bound_tps(bandwidth))
    f32 = fastest(rows, "llama3_np", "F32")
    if f32:
        check("decode F32 >= 85% of the f32 bandwidth bound", f32.decode_tps,
              0.85 * f32.bound_tps(bandwidth))
    return out


def comparison_table(rows: list, prompt_tokens: int) -> str:
    """llama3_np beside llama.cpp: each of our runs, llama.cpp's, and the ratio of means."""
    from results import markdown_table

    def runs(group: list, speed) -> str:
        return " / ".join(f"{speed(r):.1f}" for r in group)

    lines = []
    for case, theirs_case, ours, theirs in against_llama_cpp(rows):
        ratio = lambda speed: mean(ours, speed) / mean(theirs, speed)  # noqa: E731
        decode, prefill = (lambda r: r.decode_tps), (lambda r: r.prefill_tps)
        lines.append([f"{case.label} / {theirs_case.label}", runs(ours, decode),
                      runs(theirs, decode), f"{ratio(decode):.2f}", runs(ours, prefill),
                      runs(theirs, prefill), f"{ratio(prefill):.2f}",
                      f"{ours[0].weight_bytes / 1e9:.2f} / {theirs[0].weight_bytes / 1e9:.2f}"])
    return markdown_table(
        ["llama3_np / llama.cpp", "decode tok/s: ours (before / after)", "llama.cpp",
         "ratio", f"prefill {prompt_tokens} tok/s: ours", "llama.cpp", "ratio",
         "GB read a token: ours / llama.cpp"], lines)


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


def decode_bound(probes_gbps: float, rows: list) -> tuple:
    """(GB/s, where it comes from in words): the read rate the bounds come from. The
    bandwidth probes' best, or the fastest decode of an engine whose weights are too big
    for the L3 cache when it read faster than that (the probes then underestimate this
    machine's memory, and a bound below what an engine did would call possible targets
    impossible)."""
    from machine import l3_cache_bytes

    from_memory = [r for r in rows if r.weight_bytes >= l3_cache_bytes()]
    fastest = max(from_memory, key=lambda r: r.read_gbps, default=None)
    if fastest is None or fastest.read_gbps <= probes_gbps:
        return probes_gbps, "the best read rate above"
    return fastest.read_gbps, (f"the rate at which {fastest.case.label} read its weights, "
                               "above every read rate measured above (which therefore "
                               "underestimate this machine's memory)")


def results_markdown(args, tokens, machine_description, loads, bandwidths, bound, rows,
                     failures, target_rows, sampling, llama_cpp_build) -> str:
    from machine import BANDWIDTH_BUFFER_BYTES, QUIET_LOAD
    from results import machine_markdown, markdown_table

    bandwidth, source = bound
    table = markdown_table(
        ["engine, weights (backend)", f"prefill {tokens['prompt']} tok/s", "decode tok/s",
         "decode ms/token", "outside matmuls ms", "weights read GB/s",
         "% of bandwidth", "bound tok/s", "peak RSS GB", "load s", "threads seen"],
        [[r.case.label, f"{r.prefill_tps:.1f}", f"{r.decode_tps:.2f}",
          f"{1e3 / r.decode_tps:.1f}",
          "-" if r.outside_matmuls_seconds is None
          else f"{1e3 * r.outside_matmuls_seconds:.1f}",
          f"{r.read_gbps:.1f}",
          f"{100 * r.read_gbps / bandwidth:.0f}%", f"{r.bound_tps(bandwidth):.2f}",
          f"{r.peak_rss / 1e9:.1f}", "-" if r.load_seconds != r.load_seconds
          else f"{r.load_seconds:.0f}",
          ", ".join(f"{k} {v}" for k, v in r.threads_in_use.items())] for r in rows])
    bandwidth_table = markdown_table(
        ["when", "np.sum, 1 thread (read)",
         f"BLAS f32 GEMV, {args.threads} thread{'s' * (args.threads > 1)} (read)",
         "np.copyto, 1 thread (read + write)"],
        [[when, f"{b['sum']:.1f} GB/s", f"{b['gemv']:.1f} GB/s", f"{b['copy']:.1f} GB/s"]
         for when, b in zip(("before the rows", "after the rows"), bandwidths)])
    parts = [
        "## End-to-end: Llama 3.2 1B shape and the demo model (benchmarks/bench.py)",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/bench.py"
        f"{' --quick' if args.quick else ''} --threads {args.threads}"
        f"{' --only ' + args.only if args.only else ''}`: random bf16 weights (dim 2048, 16 "
        f"layers, 32/8 heads, ffn 8192, vocab 128256, tied), written as GGUF F32 and BF16 "
        f"and quantised by llama-quantize --pure; the demo model is {DEMO_MODEL.name}. Prompt "
        f"{tokens['prompt']} random tokens, then {tokens['decode']} greedy decode steps "
        f"({tokens['demo_decode']} on the demo model; decode tok/s = 1 / median step).",
        machine_markdown({**machine_description,
                          "llama.cpp": llama_cpp_build or "not run (no llama-bench given)"}),
        f"Load average {loads[0]:.2f} before the run ({loads[1]:.2f} at the end, which counts "
        "this benchmark's own threads)"
        + (": other programs were competing for the cores, so these numbers measure them "
           "too; re-run on a quiet machine." if loads[0] > QUIET_LOAD else "."),
        f"### Memory bandwidth ({BANDWIDTH_BUFFER_BYTES >> 20} MiB buffers)",
        bandwidth_table,
        f"Bound used below: {bandwidth:.1f} GB/s, {source}. "
        "Bound tok/s = that / bytes of weights one decode step reads."
        + bandwidth_drift_note(bandwidths),
        "### Throughput (in run order)", table,
        "Outside matmuls: the same decode steps (llama3_np, same positions) with every "
        "matmul's product looked up instead of computed (bench_case.replayed_matmuls): "
        "norms, RoPE, attention, SwiGLU, the KV cache and the Python between them."]
    if against_llama_cpp(rows):
        parts += ["### llama3_np / llama.cpp on the same file", comparison_table(
            rows, tokens["prompt"])]
    if failures:
        parts.append("Rows that failed: " + "; ".join(f"{c.label}: {e}" for c, e in failures))
    if target_rows:
        parts += ["### Targets (ratios within this run)",
                  markdown_table(["target", "measured", "result", "evidence"], target_rows)]
    parts += ["### Per-token sampling cost (vocabulary 128256)",
              markdown_table(["sampler", "ms / token"],
                             [[name, f"{ms:.2f}"] for name, ms in sampling.items()])]
    return "\n\n".join(parts)


def weights_file(case: Case, checkpoint: Path, quantizer, log):
    """The file a row reads: the HF checkpoint (PyTorch), the demo model, or the
    checkpoint's GGUF file of the row's type, written on first use; None when that type
    needs llama-quantize and there is none."""
    from to_gguf import QUANTISED_TYPES, gguf_file

    if case.engine == "torch":
        return checkpoint
    if case.model == "demo":
        return DEMO_MODEL
    if case.weights in QUANTISED_TYPES and not (quantizer and quantizer.is_file()):
        return None
    log(f"GGUF {case.weights} ...")
    return gguf_file(checkpoint, checkpoint / "gguf", case.weights, quantizer)


def section_name(args) -> str:
    """RESULTS.md's section for this run: a partial or quick run gets its own, so that it
    never replaces the full table (a later run of the same selection replaces it)."""
    return "bench.py" + " --quick" * args.quick + (f" --only {args.only}" if args.only else "")


def main():
    args = parse_args()
    configure_threads(args.threads)
    from machine import best_read_gbps, describe_machine, load_average, memory_bandwidth
    from make_checkpoint import is_complete, write_random_checkpoint
    from results import write_section

    cases = selected_cases(args)
    tokens = QUICK if args.quick else FULL
    machine_description = describe_machine()
    loads = [load_average()]
    bandwidths = [memory_bandwidth()]
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    checkpoint = args.checkpoint or Path(tempfile.mkdtemp(prefix="llama3np-bench-"))
    builds = llama_cpp_builds(args)
    quantizer = args.llama_bench.with_name("llama-quantize") if args.llama_bench else None
    llama_cpp_build = None
    try:
        if not is_complete(checkpoint, SHAPE):
            write_random_checkpoint(checkpoint, SHAPE, log=log)
        rows, failures = [], []
        for case in cases:
            weights = weights_file(case, checkpoint, quantizer, log)
            if weights is None:
                failures.append((case, "needs llama.cpp's llama-quantize beside llama-bench"))
                continue
            log(f"running {case.label} ...")
            if case.engine == "llama.cpp":
                measured = run_llama_bench(builds[case.backend], weights,
                                           case.threads or args.threads, tokens, case)
                if "build" in measured:
                    llama_cpp_build = f"build {measured['build']}: " + ", ".join(
                        f"{path}" + (f" ({name})" if name else "")
                        for name, path in builds.items())
            else:
                measured = run_case(case, weights, args.threads, tokens)
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
    bound = decode_bound(best_read_gbps(bandwidths), rows)
    markdown = results_markdown(args, tokens, machine_description, loads, bandwidths, bound,
                                rows, failures, targets(rows, bound[0], tokens["prompt"]),
                                sampling_costs(), llama_cpp_build)
    print(markdown)
    write_section(section_name(args), markdown)


if __name__ == "__main__":
    main()
