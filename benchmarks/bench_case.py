"""One row of bench.py's table, measured in a fresh process; prints one JSON line.

    python benchmarks/bench_case.py CHECKPOINT --engine llama3_np|torch
        --dtype f32|bf16|q8|stored [--backend numpy|numba] [--threads 2] [--prompt 128]
        [--decode 32]

CHECKPOINT is a folder (Meta, Hugging Face) or, for llama3_np, a GGUF file; `--dtype
stored` keeps a GGUF file's Q8_0 / Q4_0 / Q4_1 / Q4_K matrices as stored (the kernels
multiply them), the other dtypes convert every matrix at load.

Loads the checkpoint, warms up (pages the weights in, compiles numba's kernels, starts
the thread pools), prefills a prompt of random token ids twice (keeping the faster),
then decodes greedily one token at a time, timing every step. For llama3_np it then
times the same steps with every matmul replaced by a lookup of its product
(replayed_matmuls): what a token costs outside the matmuls. A process per row keeps
each row's peak memory its own, and keeps PyTorch's OpenMP threads from competing with
numba's and OpenBLAS's.

For PyTorch: LlamaForCausalLM.from_pretrained from the same checkpoint, cast to the
dtype, torch.set_num_threads, a manual forward with past_key_values, and logits for
the last position only (logits_to_keep=1, as transformers' generate does) just as
llama3_np's forward(last_only=True).
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

ENGINES = ("llama3_np", "torch")
WARMUP_TOKENS = 8
PROMPT_SEED = 0
STORED = "stored"  # --dtype: a GGUF file's quantised matrices as the file holds them


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--engine", choices=ENGINES, default="llama3_np")
    parser.add_argument("--dtype", choices=("f32", "bf16", "q8", STORED), default="f32")
    parser.add_argument("--backend", choices=("numpy", "numba"), default="numpy",
                        help="llama3_np's kernel backend")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens to prefill")
    parser.add_argument("--decode", type=int, default=32, help="tokens to decode")
    parser.add_argument("--prefill-repeats", type=int, default=2,
                        help="prefills of the prompt, the fastest kept (default 2)")
    parser.add_argument("--int8-activations", action="store_true",
                        help="llama3_np: q8 / Q4 kernels take x quantised to int8 per block")
    parser.add_argument("--bf16-activations", action="store_true",
                        help="llama3_np: prefill GEMMs by bf16 weights round x to bf16")
    parser.add_argument("--kv-dtype", choices=("f32", "bf16"), default="f32",
                        help="llama3_np's KV cache precision")
    args = parser.parse_args(argv)
    if min(args.threads, args.prompt, args.decode, args.prefill_repeats) < 1:
        parser.error("--threads, --prompt, --decode and --prefill-repeats must be at least 1")
    if args.engine == "torch" and args.dtype not in ("f32", "bf16"):
        parser.error("PyTorch runs f32 and bf16 only")
    return args


def weight_bytes_per_token(weights: dict) -> int:
    """Bytes of llama3_np weights one decode step reads: every tensor once (a tied
    embedding once, as the output matrix), except a separate embedding, of which a step
    reads one row."""
    from llama3_np.formats import distinct

    embedding = weights["tok_embeddings.weight"]
    read = [t for t in distinct(weights.values())
            if t is not embedding or embedding is weights["output.weight"]]
    return sum(t.nbytes for t in read)


class Llama3NpRunner:
    """llama3_np's model behind the two calls the measurement needs."""

    def __init__(self, checkpoint: Path, dtype: str, backend: str, threads: int,
                 kv_dtype: str = "f32", int8_activations: bool = False,
                 bf16_activations: bool = False):
        import llama3_np
        from llama3_np import kernels
        from llama3_np.sampling import Sampler

        stored = dtype == STORED
        self.llama = llama3_np.load(checkpoint, dtype=None if stored else dtype,
                                    backend=backend, kv_dtype=kv_dtype,
                                    keep_quantized=True if stored else None)
        self.vocab_size = self.llama.config.vocab_size
        kernels.set_threads(threads)
        kernels.set_int8_activations(int8_activations)
        kernels.set_bf16_activations(bf16_activations)
        kernels.warmup()
        self.sample = Sampler(temperature=0)  # greedy, as the PyTorch side

    def prefill(self, tokens: list) -> int:
        """Run the prompt from position 0 on a new KV cache."""
        self.cache = self.llama.new_cache()
        return self.sample(self.llama.forward(tokens, 0, last_only=True, cache=self.cache)[-1])

    def decode(self, token: int, position: int) -> int:
        return self.sample(self.llama.forward([token], position, last_only=True,
                                              cache=self.cache)[-1])

    def steps_outside_matmuls(self, token: int, position: int, n_steps: int) -> list:
        """Seconds of n_steps decode steps from `position` on (rewinding the cache there)
        whose matmuls are looked up (replayed_matmuls), after one real step at the same
        position that computes the products."""
        seconds = []
        with replayed_matmuls():
            self.decode(token, position)  # computes the products, untimed
            for step in range(n_steps):
                start = time.perf_counter()
                self.decode(token, position + step)
                seconds.append(time.perf_counter() - start)
        return seconds

    def weight_bytes_per_token(self) -> int:
        return weight_bytes_per_token(self.llama.weights)

    def threads_in_use(self) -> dict:
        from llama3_np import kernels

        from machine import blas_threads

        used = {"blas": blas_threads()}
        if kernels.active_backend() == "numba":
            import numba

            used["numba"] = f"{numba.get_num_threads()} ({numba.threading_layer()})"
        return used


class TorchRunner:
    """transformers' LlamaForCausalLM behind the same two calls."""

    def __init__(self, checkpoint: Path, dtype: str, threads: int):
        import torch
        from transformers import LlamaForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
        self.model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch_dtype).eval()
        self.vocab_size = self.model.config.vocab_size
        self.cache = None

    def _step(self, tokens: list) -> int:
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([tokens]), past_key_values=self.cache,
                             use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def prefill(self, tokens: list) -> int:
        self.cache = None  # a new cache: the prompt starts at position 0
        return self._step(tokens)

    def decode(self, token: int, position: int) -> int:
        return self._step([token])

    def weight_bytes_per_token(self) -> int:
        """As Llama3NpRunner's: named_parameters lists a tied embedding once."""
        params = dict(self.model.named_parameters())
        total = sum(p.numel() * p.element_size() for p in params.values())
        if not self.model.config.tie_word_embeddings:
            embedding = params["model.embed_tokens.weight"]
            total -= embedding.numel() * embedding.element_size()
        return total

    def threads_in_use(self) -> dict:
        return {"torch": self.torch.get_num_threads()}


class StreamedReads:
    """Reads as many bytes as it is asked for from a buffer larger than the last-level
    cache (256 MB, or twice the L3 cache if that is more), on from where the last read
    stopped, as a product streams its weights through the caches; `seconds` adds up the
    time spent reading, to be left out of a step's."""

    def __init__(self, megabytes: int = None):
        import numpy as np

        from machine import l3_cache_bytes

        megabytes = megabytes or max(256, 2 * l3_cache_bytes() >> 20)
        self.buffer = np.ones(megabytes << 18, dtype=np.float32)  # pages touched now
        self.position, self.seconds = 0, 0.0

    def read(self, n_bytes: int) -> None:
        start = time.perf_counter()
        left = n_bytes // 4
        while left > 0:
            part = self.buffer[self.position:self.position + left]
            part.sum()
            left -= len(part)
            self.position = (self.position + len(part)) % len(self.buffer)
        self.seconds += time.perf_counter() - start


@contextlib.contextmanager
def replayed_matmuls(reads: StreamedReads = None):
    """Within it, model.py's linear returns a copy of the product it computed the first
    time for the same x shape and weight: a decode step then costs everything but its
    matmuls (norms, RoPE, attention, SwiGLU, the KV cache, Python between them).
    reads: each lookup also reads as many bytes as the weight holds (reads.seconds), so
    the rest runs with the caches as a real product leaves them, emptied of the step's
    own data by the weights that streamed through."""
    from llama3_np import model

    products, real_linear = {}, model.linear

    def looked_up(x, w):
        key = (x.shape, id(w))
        if key not in products:
            products[key] = real_linear(x, w)
        if reads is not None:
            reads.read(w.nbytes)
        return products[key].copy()

    model.linear = looked_up
    try:
        yield
    finally:
        model.linear = real_linear


def peak_memory(loading_peak: int) -> dict:
    """Peak resident memory of this process in bytes (counting the pages of memory-mapped
    weight files that were touched): VmHWM since the last reset_peak_memory(), and the
    peak of the whole process, loading's included. Not ru_maxrss: Linux carries it over
    from the parent's memory when the parent started this process with vfork (Python's
    subprocess does), so every row would show the benchmark's own peak."""
    run_peak = _status()["VmHWM"]
    return {"VmHWM": run_peak, "peak_rss": max(loading_peak, run_peak)}


def _status() -> dict:
    """/proc/self/status's memory lines in bytes."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(v.split()[0]) * 1024 for k, v in fields.items() if k.startswith("Vm")}


def reset_peak_memory() -> int:
    """Start VmHWM over from the current resident size (Linux: clear_refs 5), so the
    peak that follows is the run's, not loading's; returns that resident size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status()["VmRSS"]


def measure(runner, prompt: list, n_decode: int, prefill_repeats: int = 2) -> dict:
    """Prefill and decode timings (seconds): the prompt prefill_repeats times, then
    n_decode steps, then (llama3_np) n_decode steps outside the matmuls."""
    warmup = prompt[:WARMUP_TOKENS]
    runner.decode(runner.prefill(warmup), len(warmup))
    prefill_seconds = []
    for _ in range(prefill_repeats):
        start = time.perf_counter()
        token = runner.prefill(prompt)
        prefill_seconds.append(time.perf_counter() - start)
    decode_seconds = []
    for position in range(len(prompt), len(prompt) + n_decode):
        start = time.perf_counter()
        token = runner.decode(token, position)
        decode_seconds.append(time.perf_counter() - start)
    timings = {"prefill_seconds": prefill_seconds, "decode_seconds": decode_seconds}
    if hasattr(runner, "steps_outside_matmuls"):
        timings["outside_matmuls_seconds"] = runner.steps_outside_matmuls(
            token, len(prompt), n_decode)  # the timed steps' positions again
    return timings


def make_runner(args):
    if args.engine == "torch":
        return TorchRunner(args.checkpoint, args.dtype, args.threads)
    return Llama3NpRunner(args.checkpoint, args.dtype, args.backend, args.threads,
                          args.kv_dtype, args.int8_activations, args.bf16_activations)


def run_case(args) -> dict:
    import numpy as np

    start = time.perf_counter()
    runner = make_runner(args)
    load_seconds = time.perf_counter() - start
    prompt = np.random.default_rng(PROMPT_SEED).integers(0, runner.vocab_size,
                                                          args.prompt).tolist()
    loading_peak = _status()["VmHWM"]
    resident_after_load = reset_peak_memory()
    timings = measure(runner, prompt, args.decode, args.prefill_repeats)
    return {"engine": args.engine, "dtype": args.dtype,
            "backend": args.backend if args.engine == "llama3_np" else "",
            "threads": args.threads, "threads_in_use": runner.threads_in_use(),
            "prompt_tokens": args.prompt, "load_seconds": load_seconds, **timings,
            "weight_bytes_per_token": runner.weight_bytes_per_token(),
            "resident_after_load": resident_after_load, **peak_memory(loading_peak)}


def main():
    args = parse_args()
    configure_threads(args.threads)
    print(json.dumps(run_case(args)))


if __name__ == "__main__":
    main()
