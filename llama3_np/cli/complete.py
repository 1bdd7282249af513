"""Stream a completion of PROMPT; a one-line summary follows on stderr."""

import sys

from ..errors import InputError
from .common import add_model_arguments, add_sampling_arguments, load_model, sampling_options


def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to complete ('-' reads it from standard input)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def run(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if prompt is None:
        raise InputError("no prompt given: python run.py \"The capital of France is\"")
    model = load_model(args)
    from ..generate import GenerationStats

    stats = GenerationStats()
    sys.stdout.write(prompt)
    for text in model.stream(prompt, args.max_tokens, stats=stats, **sampling_options(args)):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # before the summary on stderr, so the two don't interleave
    print(stats.summary(), file=sys.stderr)
    return 0
