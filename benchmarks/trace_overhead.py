"""What the inspection seam costs when nobody inspects: forward time with the default
no-op trace, and with a bare lambda, against a copy of model.py whose trace(...) calls
are removed from the source. Takes about ten seconds.

    python benchmarks/trace_overhead.py [--layers 4] [--prompt 16] [--rounds 50] [--threads 1]

The model has SmolLM2-135M's layer shape (dim 576, 9 / 3 heads, ffn 1536) with random
weights and a small vocabulary, so the layers, where the trace calls are, dominate.
A decode step (one token) is the worst case: the least work per trace call. Times are
the best of many interleaved runs: on a shared machine the median measures the neighbours;
one BLAS thread by default, since threads competing with the neighbours add the most noise.
The budget is 2%; the exit code is 1 when the default trace exceeds it.
"""

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np.threads import configure_threads  # noqa: E402  (before NumPy loads BLAS)

BUDGET = 0.02


class _DropTraceCalls(ast.NodeTransformer):
    """Delete every statement that is a bare call `trace(...)`, `self.trace(...)` or
    `trace.many(...)`."""

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and _is_trace(call.func):
            return None
        return node


def _is_trace(func) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "trace"
    return isinstance(func, ast.Attribute) and (
        func.attr == "trace" or func.attr == "many" and _is_trace(func.value))


def untraced_transformer_class(traced_model):
    """model.Transformer compiled from its own source with the trace calls removed."""
    path = Path(traced_model.__file__)
    tree = _DropTraceCalls().visit(ast.parse(path.read_text()))
    before, after = ast.unparse(ast.parse(path.read_text())), ast.unparse(tree)
    removed = sum(before.count(call) - after.count(call) for call in ("trace(", "trace.many("))
    assert removed >= 10, f"expected the model's trace calls, removed only {removed}"
    namespace = {"__name__": "llama3_np.model_untraced", "__package__": "llama3_np"}
    exec(compile(ast.fix_missing_locations(tree), f"{path} (untraced)", "exec"), namespace)
    return namespace["Transformer"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=16, help="prefill length")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="time spent measuring each workload (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    return parser.parse_args()


def best_times(models: dict, run, seconds: float) -> tuple:
    """Best time of each model, interleaved round by round so drifts hit all alike."""
    best = dict.fromkeys(models, float("inf"))
    rounds, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or rounds < 5:
        for name, m in models.items():
            start = time.perf_counter()
            run(m)
            best[name] = min(best[name], time.perf_counter() - start)
        rounds += 1
    return best, rounds


def seconds_per_trace_call(no_trace, tensor) -> float:
    """A no-op trace call as the model makes it: the name built, then the call."""
    prefix, calls = "layers.0.", 100_000
    start = time.perf_counter()
    for _ in range(calls):
        no_trace(prefix + "attention.q", tensor)
    return (time.perf_counter() - start) / calls


def main() -> int:
    args = parse_args()
    configure_threads(args.threads)
    import numpy as np

    from llama3_np import model as traced_model
    from llama3_np.config import ModelConfig
    from llama3_np.schema import canonical_shapes

    config = ModelConfig(dim=576, n_layers=args.layers, n_heads=9, n_kv_heads=3,
                         vocab_size=4096, ffn_dim=1536, rope_theta=100000.0,
                         bos_id=None, stop_ids=())
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32)
               for name, shape in canonical_shapes(config).items()}
    prompt = list(rng.integers(0, config.vocab_size, args.prompt))

    models = {"default no-op trace": traced_model.Transformer(config, weights),
              "trace calls removed": untraced_transformer_class(traced_model)(config, weights)}
    caches = {name: m.new_cache() for name, m in models.items()}
    cache_of = {id(m): caches[name] for name, m in models.items()}
    work = {"prefill": lambda m: m.forward(prompt),
            "decode step": lambda m: m.forward(prompt[:1], len(prompt), cache=cache_of[id(m)])}

    class CountingTrace(traced_model.NoTrace):
        def __call__(self, name, tensor):
            calls.append(name)

    counter = traced_model.Transformer(config, weights)
    calls = []
    counter.trace = CountingTrace()
    counter.forward(prompt)
    per_call = seconds_per_trace_call(traced_model.NO_TRACE, np.zeros(1, np.float32))
    print(f"{len(calls)} trace calls per forward, {per_call * 1e9:.0f} ns each: "
          f"{len(calls) * per_call * 1e6:.1f} us per forward expected")

    failed = False
    for label, run in work.items():
        for name, m in models.items():
            m.forward(prompt, cache=caches[name])  # fill the cache a decode step reads, warm up
        best, rounds = best_times(models, run, args.seconds)
        baseline = best["trace calls removed"]
        print(f"{label} ({args.layers} layers, {args.threads} BLAS thread(s), "
              f"best of {rounds}):")
        for name, seconds in best.items():
            print(f"  {name:<22} {seconds * 1e6:9.1f} us  {seconds / baseline - 1:+7.2%}")
        expected = len(calls) * per_call / baseline
        print(f"  {'expected from calls':<22} {'':>12}  {expected:+7.2%}")
        failed |= best["default no-op trace"] / baseline - 1 >= BUDGET
    print(f"budget: {BUDGET:.0%} -> {'OVER BUDGET' if failed else 'ok'} (a measured "
          "difference above the expected one is the machine's noise: rerun when it is idle)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
