"""Perplexity of a text FILE under the model, scored with a sliding window.

Windows of --ctx tokens start every --stride tokens; each scores only the tokens no
earlier window scored (Hugging Face's strided evaluation), so every token after the
first is scored once (when --stride is below --ctx). Lower is better; compare
precisions with --dtype f32, bf16, q8 (the "weights" line says what they were)."""

from pathlib import Path

from .common import add_model_arguments, load_model
from .text import read_text


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
    from ..perplexity import check_window, perplexity, text_tokens
    from ..progress import ProgressBar

    text = read_text(args.file)
    # --ctx and --stride as far as they can be checked before the model says its context
    stride = args.ctx // 2 if args.stride is None else args.stride
    check_window(args.ctx, stride)
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

