"""Threads when a core is busy: llama3_np (and llama.cpp) on one thread and on --threads,
on a quiet machine and with another process spinning on a core. About 3 minutes a round.

    python benchmarks/busy_core.py [--model FILE.gguf] [--threads 2] [--rounds 2]
        [--llama-bench PATH] [--float-activations]

A thread team is as fast as its slowest member: when another process keeps a core busy,
the thread that shares it with that process runs about half the time, and every
parallel call waits for it. More threads should then cost little, never a multiple:
llama3_np times each matrix shape's calls (a token's fused GEMVs, a prompt's GEMMs) on
one thread and on all, and takes the faster (llama3_np/thread_choice.py).

Each round runs, one process per row, for each condition (quiet, then busy), each
engine at 1 thread and at --threads: prefill of a 128-token prompt and 64 decode steps
(bench_case.py, or llama-bench with -p 128 -n 64 -r 3). The model defaults to the demo
model (SmolLM2-135M Q4_1), whose small matrices make the per-call waits show most;
llama3_np multiplies it with int8 activations unless --float-activations. Prints the
table and writes it to RESULTS.md: tok/s per round, and --threads against 1 thread in
each condition (medians over the rounds)."""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from bench import DEMO_MODEL, Case, add_llama_bench_option, run_case, run_llama_bench
from machine import describe_machine, load_average
from results import machine_markdown, markdown_table, write_section

TOKENS = {"prompt": 128, "decode": 64, "demo_decode": 64}
CONDITIONS = ("quiet", "a core busy")
SPIN = "while True: pass"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="a GGUF file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    add_llama_bench_option(parser)
    parser.add_argument("--float-activations", action="store_true",
                        help="llama3_np multiplies by float32 x (default: int8 x)")
    args = parser.parse_args()
    if args.threads < 2:
        parser.error(f"--threads must be at least 2 (compared with 1), got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    for path, what in ((args.model, "the model"), (args.llama_bench, "llama-bench")):
        if path is not None and not path.is_file():
            parser.error(f"{what} {path}: no such file")
    return args


def measure(engine: str, threads: int, args) -> tuple:
    """(prefill tok/s, decode tok/s) of one process, or an error message."""
    backend = "numba" if args.float_activations else "numba-int8"
    if engine == "llama.cpp":
        m = run_llama_bench(args.llama_bench, args.model, threads, TOKENS,
                            Case("llama.cpp", "stored", model="demo"))
    else:
        m = run_case(Case("llama3_np", "stored", backend, model="demo", threads=threads),
                     args.model, threads, TOKENS)
    if "error" in m:
        return m["error"]
    return (m["prompt_tokens"] / min(m["prefill_seconds"]),
            1 / statistics.median(m["decode_seconds"]))


def run_rounds(args, engines: list) -> dict:
    """(condition, engine, threads) -> [(prefill tok/s, decode tok/s) per round]."""
    runs = {}
    for round_number in range(1, args.rounds + 1):
        for condition in CONDITIONS:
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) \
                if condition != "quiet" else None
            try:
                for engine in engines:
                    for threads in (1, args.threads):
                        result = measure(engine, threads, args)
                        print(f"round {round_number}, {condition}, {engine}, {threads} "
                              f"thread(s): {result}", flush=True)
                        if isinstance(result, str):
                            raise SystemExit(f"{engine} failed: {result}")
                        runs.setdefault((condition, engine, threads), []).append(result)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
    return runs


def table(runs: dict, args, engines: list) -> str:
    rows = []
    for condition in CONDITIONS:
        for engine in engines:
            one, many = runs[condition, engine, 1], runs[condition, engine, args.threads]
            ratios = [statistics.median(r[i] for r in many) / statistics.median(r[i] for r in one)
                      for i in (0, 1)]
            for threads, results in ((1, one), (args.threads, many)):
                rows.append([condition, engine, threads,
                             ", ".join(f"{p:.0f}" for p, _ in results),
                             ", ".join(f"{d:.1f}" for _, d in results),
                             *(f"{ratio:.2f}x" if threads > 1 else "" for ratio in ratios)])
    versus = f"{args.threads} threads / 1"
    return markdown_table(["condition", "engine", "threads", "prefill tok/s (rounds)",
                           "decode tok/s (rounds)", f"{versus}: prefill", f"{versus}: decode"],
                          rows)


def main():
    args = parse_args()
    engines = ["llama3_np"] + (["llama.cpp"] if args.llama_bench else [])
    load = load_average()
    runs = run_rounds(args, engines)
    x_form = "float32" if args.float_activations else "int8"
    markdown = "\n\n".join([
        "## Threads when a core is busy (benchmarks/busy_core.py)",
        f"`python benchmarks/busy_core.py --threads {args.threads} --rounds {args.rounds}`"
        f" on {args.model.name} (llama3_np: {x_form} activations); prompt "
        f"{TOKENS['prompt']} tokens, {TOKENS['decode']} decode steps; \"a core busy\": "
        f"another process spinning (`python -c '{SPIN}'`). Load average {load:.2f} "
        f"before the run.",
        machine_markdown(describe_machine()),
        table(runs, args, engines)])
    print(markdown)
    write_section("busy_core.py", markdown)


if __name__ == "__main__":
    main()
