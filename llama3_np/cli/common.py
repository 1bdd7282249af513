"""Options and model loading shared by every command."""

import argparse
from pathlib import Path

from ..errors import InputError
from .text import checked_text, read_text

# The demo model fetched by weights/fetch.sh (SmolLM2-135M-Instruct, Llama architecture):
# in the repository's weights/, or in ./weights when the package is installed elsewhere.
DEMO_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEMO_MODEL = WEIGHTS_DIR / DEMO_NAME
MODEL_HELP = ("a checkpoint: a path (Meta or Hugging Face directory, GGUF file), a Hugging "
              "Face repo id in the local cache (meta-llama/Llama-3.2-1B-Instruct), "
              "ollama:NAME:TAG, or a folder name in ~/.llama/checkpoints; `list` shows what "
              f"is here (default: the demo model weights/{DEMO_NAME})")
DTYPE_HELP = ("convert every weight matrix to this precision (default: a GGUF file's Q8_0 "
              "and 4-bit matrices as stored where numba's kernels multiply them, the rest f32)")


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP)
    group.add_argument("--tokenizer", type=Path, default=None, metavar="FILE",
                       help="a tokenizer (tokenizer.model, tokenizer.json, or a folder with "
                            "one) to use instead of the one found with the model")
    group.add_argument("--dtype", choices=("f32", "bf16", "q8"), default=None,
                       metavar="{f32,bf16,q8}", help=DTYPE_HELP)
    group.add_argument("--kv-dtype", choices=("f32", "bf16"), default="f32",
                       help="precision of the KV cache (default f32; bf16 halves it)")
    group.add_argument("--backend", choices=("auto", "numpy", "numba"), default="auto",
                       help="matmul kernels (default: numba when installed)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for the matmuls (default: all cores)")
    group.add_argument("--int8-activations", action="store_true",
                       help="numba: multiply q8 / 4-bit weights by activations rounded to "
                            "int8 per 32 values, as llama.cpp does (faster decoding and "
                            "prefill; logits move by a few percent)")
    group.add_argument("--bf16-activations", action="store_true",
                       help="numba, a CPU with AMX or AVX512-BF16: prompts multiply bf16 "
                            "weights by activations rounded to bf16, as PyTorch's bf16 "
                            "models do (faster prefill; logits move by up to a few percent)")
    return group


def model_path(args) -> Path:
    """The checkpoint --model names (found by locate.locate), or the demo model."""
    from ..locate import locate

    if args.model is not None:
        return locate(args.model)
    for demo in (DEMO_MODEL, Path.cwd() / "weights" / DEMO_NAME):
        if demo.exists():
            return demo
    raise InputError(f"no --model given and the demo model weights/{DEMO_NAME} is not "
                     "there: run `bash weights/fetch.sh` in the repository, or pass --model")


def load_model(args):
    from .. import load
    from ..kernels import set_bf16_activations, set_int8_activations, set_threads
    from ..progress import ProgressBar
    from ..threads import usable_threads

    if args.threads is not None:  # BLAS got the same count from run.py, before NumPy loaded
        set_threads(usable_threads(args.threads))
    set_int8_activations(args.int8_activations)
    set_bf16_activations(args.bf16_activations)

    path = model_path(args)
    try:
        with ProgressBar(0, "loading") as bar:  # drawn only on a terminal
            return load(path, dtype=args.dtype, backend=args.backend,
                        tokenizer_path=args.tokenizer, progress=bar, kv_dtype=args.kv_dtype)
    except MemoryError:
        raise InputError(f"{path}: out of memory while loading the weights; keep them "
                         "smaller with --dtype bf16 or --dtype q8") from None


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N",
                       help=f"most tokens to generate (default {max_tokens})")
    group.add_argument("--temperature", type=float, default=0.0, metavar="T",
                       help="0 picks the most likely token (greedy, the default); higher is "
                            "more random")
    group.add_argument("--top-k", type=int, default=0, metavar="K",
                       help="sample only among the k most likely tokens (0: off)")
    group.add_argument("--top-p", type=float, default=1.0, metavar="P",
                       help="sample only among the most likely tokens holding this much "
                            "probability (1: off)")
    group.add_argument("--seed", type=int, default=None, metavar="S",
                       help="makes sampling reproducible (same seed, same text)")


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


def read_prompt(prompt, usage: str = 'python run.py "The capital of France is"') -> str:
    """The prompt argument, or standard input for '-', under text.py's rule (UTF-8, capped).
    Standard input loses one trailing newline, as a shell's $(...) drops it: `echo text |`
    means the text, not the text and a line break."""
    if prompt is None:
        raise InputError(f"no prompt given: {usage}")
    if prompt != "-":
        return checked_text(prompt, "the prompt")
    text = read_text("-")
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
