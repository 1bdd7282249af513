"""Perplexity of a text FILE under the model, scored with a sliding window.

Windows of --ctx tokens start every --stride tokens; each scores only the tokens no
earlier window scored (Hugging Face's strided evaluation), so every token after the
first is scored once (when --stride is below --ctx). Lower is better; compare
precisions with --dtype f32, bf16, q8 (the "weights" line says what they were)."""

import sys
from pathlib import Path

from ..errors import InputError
from .common import add_model_arguments, load_model


def add_arguments(parser) -> None:
    parser.add_argument("file", type=Path, help="a UTF-8 text file ('-' reads standard input)")
    parser.add_argument("--ctx", type=int, default=512,
                        help="tokens per window (default 512)")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens between window starts (default ctx/2)")
    parser.add_argument("--progress", action="store_true",
                        help="draw the progress bar even when stderr is not a terminal")
    add_model_arguments(parser)


def run(args) -> int:
    from ..perplexity import perplexity, text_tokens
    from ..progress import ProgressBar

    text = _read_text(args.file)
    model = load_model(args)
    tokens = text_tokens(model.tokenizer, text)
    with ProgressBar(0, "scoring", force=args.progress) as bar:
        result = perplexity(model, tokens, ctx=args.ctx, stride=args.stride, progress=bar)
    print(f"file           {args.file} ({len(tokens):,} tokens)")
    print(f"windows        {result.windows} (ctx {result.ctx}, stride {result.stride})")
    print(model.precision.replace("weights: ", "weights        ", 1))
    print(f"tokens scored  {result.tokens:,}")
    print(f"nll            {result.nll:.6f} nats per token (total {result.nll_sum:.3f})")
    print(f"perplexity     {result.ppl:.4f}")
    return 0


def _read_text(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror})") from None
