"""Where a decode step of the demo model goes: the matmul kernels, the rest, and the
per-call choice of one thread or all. Takes about half a minute.

    python benchmarks/decode_overhead.py [--threads 2] [--model weights/SmolLM2-...gguf]
        [--int8-activations]

Prints, per token (median of interleaved rounds, so that neighbours coming and going
hit every variant alike):
- decode with every fused matmul on one thread ("serial"), on all threads
  ("parallel"), and as kernels.linear chooses per matrix shape ("chosen"), with the
  choice it settled on for each shape; and "chosen" again with model.py's NumPy steps
  instead of kernels_steps.py's compiled RMSNorm and attention;
- the same step with model.py's linear replaced by a lookup of each product, computed
  the first time (bench_case.replayed_matmuls; the median leaves that step out): what
  everything but the matmuls costs (norms, RoPE, attention, SwiGLU, the cache, Python),
  with the compiled steps and, alternating with them, NumPy's;
  then again with each lookup reading as many bytes as its weights hold, from a buffer
  no cache holds (bench_case.StreamedReads; the reading's time left out): the same work
  with the caches as a real step leaves them. A product's weights stream through the
  2 MB L2 cache and evict what the rest of the step uses next, Python's own data
  included: on the Xeon of benchmarks/RESULTS.md the rest then costs 1.6x (the demo
  model) to 2.3-2.4x (Llama 3.2 1B Q4_0) what it costs with warm caches;
- each weight shape's kernel alone against kernels.linear on it: the per-call cost of
  the seam.
Run it with a busy core (`python -c 'while True: pass' &`) to see the choice follow.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)
from bench_case import StreamedReads, replayed_matmuls  # noqa: E402

DEMO_MODEL = ROOT / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = list(range(1, 33))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=12, help="decode steps per round")
    parser.add_argument("--int8-activations", action="store_true",
                        help="q8 / Q4 kernels take x quantised to int8 per block")
    return parser.parse_args()


class Decoder:
    """Decode steps on one KV cache, rewound before it outgrows the prompt + 256."""

    def __init__(self, llm):
        self.llm, self.cache = llm, llm.new_cache()
        llm.forward(PROMPT, 0, last_only=True, cache=self.cache)
        self.position = len(PROMPT)

    def step(self) -> float:
        if self.position >= len(PROMPT) + 256:
            self.position = len(PROMPT)
        start = time.perf_counter()
        self.llm.forward([1], self.position, last_only=True, cache=self.cache)
        self.position += 1
        return time.perf_counter() - start


def thread_policies(kernels):
    """name -> a function putting kernels.linear under that policy."""
    choice, pick, threshold = kernels._parallel_choice, kernels._parallel_choice.pick, \
        kernels._PARALLEL_MIN_WEIGHTS

    def policy(min_weights, forced):
        def apply():
            kernels._PARALLEL_MIN_WEIGHTS = min_weights
            choice.pick = pick if forced is None else (lambda key: pick(key) or forced)
        return apply
    return {"serial": policy(float("inf"), None), "parallel": policy(0, True),
            "chosen": policy(threshold, None)}


def with_steps(apply, model_module, compiled: bool):
    """apply, then model.py's steps compiled (kernels_steps.py) or NumPy's."""
    steps = model_module.compiled_steps if compiled else lambda: None

    def both():
        apply()
        model_module.compiled_steps = steps
    return both


def best_call_seconds(fn, repeats: int = 200) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main():
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    import llama3_np
    from llama3_np import kernels
    from llama3_np import model as model_module

    llm = llama3_np.load(args.model)
    kernels.set_threads(args.threads)
    kernels.set_int8_activations(args.int8_activations)
    kernels.warmup()
    decoder = Decoder(llm)
    print(f"{args.model.name}, {args.threads} thread(s), backend {kernels.active_backend()}"
          + (", int8 activations" if args.int8_activations else ""))

    threads = thread_policies(kernels)
    policies = {name: with_steps(apply, model_module, True) for name, apply in threads.items()}
    compared = dict(policies) if args.threads > 1 and kernels.active_backend() == "numba" \
        else {"chosen": policies["chosen"]}
    numpy_steps = with_steps(threads["chosen"], model_module, False)
    if kernels.active_backend() == "numba":
        compared["chosen, NumPy's steps"] = numpy_steps
    times = {name: [] for name in compared}
    for _ in range(args.rounds):
        for name, apply in compared.items():
            apply()
            decoder.step()  # the first after a switch pays for it
            times[name] += [decoder.step() for _ in range(args.tokens)]
    policies["chosen"]()
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"decode, fused matmuls {name:21s} {median * 1e3:7.2f} ms/token "
              f"({1 / median:6.1f} tok/s)")
    for key, shape in kernels._parallel_choice._shapes.items():
        if None not in shape.means and key[2] == 1:
            chosen = "all threads" if shape.favours_parallel() else "one thread"
            print(f"  {key[0]}x{key[1]}: {chosen} (mean {shape.means[0] * 1e6:.0f} us on one, "
                  f"{shape.means[1] * 1e6:.0f} us on all)")

    steps_compared = {"compiled": policies["chosen"]}
    if kernels.active_backend() == "numba":
        steps_compared["numpy"] = numpy_steps
    rest = {name: [] for name in steps_compared}
    with replayed_matmuls():
        for _ in range(args.rounds):
            for name, apply in steps_compared.items():
                apply()
                rest[name] += [decoder.step() for _ in range(args.tokens)]
    policies["chosen"]()
    print(f"everything but the matmuls     {statistics.median(rest['compiled']) * 1e3:7.2f} "
          "ms/token (caches warm)")
    reads = StreamedReads()
    with replayed_matmuls(reads):
        cold = []
        for _ in range(args.rounds * args.tokens):
            reading = reads.seconds
            cold.append(decoder.step() - (reads.seconds - reading))
    print(f"  the same, weights' bytes read {statistics.median(cold) * 1e3:7.2f} ms/token "
          "(caches as a real step leaves them)")
    if "numpy" in rest:
        print(f"  with NumPy's steps instead   {statistics.median(rest['numpy']) * 1e3:7.2f} "
              "ms/token (caches warm; runs alternating with the first line's)")

    numba_kernels = kernels._numba_kernels() if kernels.active_backend() == "numba" else None
    seen = set()
    for name, w in llm.weights.items():
        if not hasattr(w, "packed") or w.shape in seen or numba_kernels is None:
            continue  # Q4 matrices, one per shape
        seen.add(w.shape)
        x = np.random.default_rng(0).standard_normal((1, w.shape[1]), dtype=np.float32)
        out = np.empty((1, w.shape[0]), dtype=np.float32)
        fused = w.fused(numba_kernels.SERIAL, n_rows=1)
        kernel = best_call_seconds(lambda: fused(x, out))
        policies["serial"]()
        seam = best_call_seconds(lambda: kernels.linear(x, w))
        policies["chosen"]()
        print(f"Q4 {w.shape[0]}x{w.shape[1]}: kernel {kernel * 1e6:6.1f} us, kernels.linear "
              f"{seam * 1e6:6.1f} us (one thread, weights in cache)")


if __name__ == "__main__":
    main()
