"""Stream a completion of PROMPT; a one-line summary follows on stderr."""

import sys

from ..errors import InputError
from .common import add_model_arguments, add_sampling_arguments, load_model, sampling_options
from .text import checked_text, read_text


def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to complete ('-' reads it from standard input)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def run(args) -> int:
    prompt = read_prompt(args.prompt)
    options = sampling_options(args)  # checked before the (slow) model load
    model = load_model(args)
    from ..generate import GenerationStats

    tokens = model.encode_prompt(prompt)
    room = model.context_room(len(tokens))  # refuses a prompt that fills the context
    if room < args.max_tokens:
        print(f"note: --max-tokens {args.max_tokens} capped to {room}: the prompt's "
              f"{len(tokens)} tokens leave {room} of the {model.config.max_seq_len}-token "
              "context", file=sys.stderr)
    stats = GenerationStats()
    sys.stdout.write(prompt)
    for text in model.stream(tokens, args.max_tokens, stats=stats, **options):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # before the summary on stderr, so the two don't interleave
    print(stats.summary(), file=sys.stderr)
    return 0


def read_prompt(prompt):
    """The prompt argument, or standard input for '-', as valid UTF-8 text."""
    if prompt is None:
        raise InputError("no prompt given: python run.py \"The capital of France is\"")
    return read_text("-") if prompt == "-" else checked_text(prompt, "the prompt")
