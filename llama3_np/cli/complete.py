"""Stream a completion of PROMPT; a one-line summary follows on stderr."""

import sys

from ..wording import count
from .common import (add_model_arguments, add_sampling_arguments, load_model, read_prompt,
                     sampling_options)


def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", default=None,
                        help="text to complete ('-' reads it from standard input)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def run(args) -> int:
    prompt = read_prompt(args.prompt)
    options = sampling_options(args)  # checked before the (slow) model load
    model = load_model(args)
    from ..generate import GenerationStats, reserve_room

    tokens = model.encode_prompt(prompt)
    room = model.context_room(len(tokens))  # refuses a prompt that fills the context
    if room < args.max_tokens:
        verb = "leaves" if len(tokens) == 1 else "leave"
        print(f"note: --max-tokens {args.max_tokens} capped to {room}: the prompt's "
              f"{count(len(tokens), 'token')} {verb} {room} of the "
              f"{model.config.max_seq_len}-token context", file=sys.stderr)
    # Reserve the KV cache for every position this may fill before echoing anything, so a
    # cache that cannot fit is refused with nothing half-printed.
    cache = model.new_cache()
    reserve_room(cache, 0, len(tokens), args.max_tokens)
    stats = GenerationStats()
    sys.stdout.write(prompt)
    for text in model.stream(tokens, args.max_tokens, stats=stats, cache=cache, **options):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # before the summary on stderr, so the two don't interleave
    print(f"{stats.summary()} | {model.precision}", file=sys.stderr)
    return 0
