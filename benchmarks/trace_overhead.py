"""What the inspection seam costs when nobody inspects: forward time with the default
no-op trace, and with a bare lambda, against a copy of model.py whose trace(...) calls
are removed from the source. Takes a few seconds.

    python benchmarks/trace_overhead.py [--layers 4] [--prompt 32] [--rounds 200]

The model has SmolLM2-135M's layer shape (dim 576, 9 / 3 heads, ffn 1536) with random
weights and a small vocabulary, so the layers, where the trace calls are, dominate.
A decode step (one token) is the worst case: the least work per trace call. Times are
the best of many interleaved runs: on a shared machine the median measures the neighbours.
The budget is 2%.
"""

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama3_np import model as traced_model  # noqa: E402
from llama3_np.checkpoint import canonical_shapes  # noqa: E402
from llama3_np.config import ModelConfig  # noqa: E402

BUDGET = 0.02


class _DropTraceCalls(ast.NodeTransformer):
    """Delete every statement that is a bare call `trace(...)`."""

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) \
                and call.func.id == "trace":
            return None
        return node


def untraced_transformer_class():
    """model.Transformer compiled from its own source with the trace calls removed."""
    path = Path(traced_model.__file__)
    tree = _DropTraceCalls().visit(ast.parse(path.read_text()))
    removed = path.read_text().count("trace(") - ast.unparse(tree).count("trace(")
    assert removed >= 17, f"expected the model's trace calls, removed only {removed}"
    namespace = {"__name__": "llama3_np.model_untraced", "__package__": "llama3_np"}
    exec(compile(ast.fix_missing_locations(tree), f"{path} (untraced)", "exec"), namespace)
    return namespace["Transformer"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32, help="prefill length")
    parser.add_argument("--rounds", type=int, default=200)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    config = ModelConfig(dim=576, n_layers=args.layers, n_heads=9, n_kv_heads=3,
                         vocab_size=4096, ffn_dim=1536, rope_theta=100000.0,
                         bos_id=None, stop_ids=())
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32)
               for name, shape in canonical_shapes(config).items()}
    prompt = list(rng.integers(0, config.vocab_size, args.prompt))

    lambda_model = traced_model.Transformer(config, weights)
    lambda_model.trace = lambda name, tensor: None
    models = {"default no-op trace": traced_model.Transformer(config, weights),
              "bare lambda": lambda_model,
              "trace calls removed": untraced_transformer_class()(config, weights)}
    work = {"prefill": lambda m: m.forward(prompt),
            "decode step": lambda m: m.forward(prompt[:1], start_pos=len(prompt))}

    failed = False
    for label, run in work.items():
        for m in models.values():
            m.forward(prompt)  # fill the cache the decode step reads, warm everything up
        best = dict.fromkeys(models, float("inf"))
        for _ in range(args.rounds):  # interleaved, so drifts hit every variant alike
            for name, m in models.items():
                start = time.perf_counter()
                run(m)
                best[name] = min(best[name], time.perf_counter() - start)
        baseline = best["trace calls removed"]
        print(f"{label} ({args.layers} layers, best of {args.rounds}):")
        for name, seconds in best.items():
            overhead = seconds / baseline - 1
            print(f"  {name:<22} {seconds * 1e6:9.1f} us  {overhead:+7.2%}")
        overhead = best["default no-op trace"] / baseline - 1
        failed |= overhead >= BUDGET
    print(f"budget: {BUDGET:.0%} -> {'OVER BUDGET' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
