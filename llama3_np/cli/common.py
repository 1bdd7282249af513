"""Options and model loading shared by every command."""

import argparse
from pathlib import Path

from ..errors import InputError

# The demo model fetched by weights/fetch.sh (SmolLM2-135M-Instruct, Llama architecture).
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEMO_MODEL = WEIGHTS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, default=None,
                       help="checkpoint: a Meta or Hugging Face directory, or a .gguf file "
                            f"(default: the demo model {DEMO_MODEL.relative_to(WEIGHTS_DIR.parent)})")
    group.add_argument("--tokenizer", type=Path, default=None,
                       help="tokenizer.model to use instead of the one found with the model")
    group.add_argument("--dtype", choices=("f32", "bf16", "q8"), default="f32",
                       help="precision the weights are kept in while running (default f32)")
    group.add_argument("--backend", choices=("auto", "numpy", "numba"), default="auto",
                       help="matmul kernels (default: numba when installed)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for the matmuls (default: all cores)")


def model_path(args) -> Path:
    if args.model is not None:
        return args.model
    if not DEMO_MODEL.exists():
        raise InputError(f"no --model given and the demo model {DEMO_MODEL} is not there: "
                         "run `bash weights/fetch.sh` or pass --model PATH")
    return DEMO_MODEL


def load_model(args):
    from .. import load
    from ..kernels import set_threads
    from ..progress import ProgressBar
    from ..threads import usable_threads

    if args.threads is not None:  # BLAS got the same count from run.py, before NumPy loaded
        set_threads(usable_threads(args.threads))

    with ProgressBar(0, "loading") as bar:  # drawn only on a terminal
        return load(model_path(args), dtype=args.dtype, backend=args.backend,
                    tokenizer_path=args.tokenizer, progress=bar)


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=max_tokens,
                       help=f"most tokens to generate (default {max_tokens})")
    group.add_argument("--temperature", type=float, default=0.0,
                       help="0 picks the most likely token (greedy, the default); higher is "
                            "more random")
    group.add_argument("--top-k", type=int, default=0,
                       help="sample only among the k most likely tokens (0: off)")
    group.add_argument("--top-p", type=float, default=1.0,
                       help="sample only among the most likely tokens holding this much "
                            "probability (1: off)")
    group.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def sampling_options(args) -> dict:
    """The sampling options, already checked (a Sampler refuses bad values; --max-tokens
    too), so a bad one is reported before a model has been loaded for nothing."""
    from ..generate import check_max_tokens
    from ..sampling import Sampler

    check_max_tokens(args.max_tokens)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed)
    Sampler(**options)
    return options
