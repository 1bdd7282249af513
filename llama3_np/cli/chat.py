"""Chat with an Instruct model in its own chat format (Llama 3's headers; ChatML for the
demo model). Type a message and press Enter; the reply streams back. The conversation
stays in the KV cache, so each turn computes only its own new tokens.

  /reset   start a new conversation (the --system prompt stays)
  /exit    quit (so does Ctrl-D)
  Ctrl-C   stop a reply; what it said so far stays in the conversation

With --message, the one reply is printed and nothing else (for scripts)."""

import sys
from contextlib import closing

from ..errors import InputError
from ..wording import count
from .common import add_model_arguments, add_sampling_arguments, load_model, sampling_options
from .text import STDIN, checked_text

COMMANDS_HELP = "commands: /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply"


def add_arguments(parser) -> None:
    parser.add_argument("--system", default=None, help="the system prompt")
    parser.add_argument("--message", default=None,
                        help="send this one message, print only the reply, and exit")
    parser.add_argument("--drop-oldest", action="store_true",
                        help="when the context window fills, forget the oldest exchanges "
                             "(and re-encode the rest) instead of refusing the message")
    add_model_arguments(parser)
    add_sampling_arguments(parser, max_tokens=512)


def run(args) -> int:
    from ..chat import ChatSession

    options = sampling_options(args)  # every option checked before the (slow) model load
    for text, where in ((args.system, "the system prompt"), (args.message, "the message")):
        if text is not None:
            checked_text(text, where)
    model = load_model(args)
    session = ChatSession(model, system=args.system, max_tokens=args.max_tokens,
                          drop_oldest=args.drop_oldest, **options)
    if args.message is not None:
        stream_reply(session, args.message)
        return 0
    converse(session)
    return 0


def converse(session) -> None:
    """Read messages from stdin until /exit or end of input, answering each."""
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # undecodable bytes arrive as lone surrogates,
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # refused below
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"chatting with {session.model.source} ({session.tokenizer.chat_format} "
              f"format, {session.model.precision}); {COMMANDS_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(f"\n({COMMANDS_HELP})", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            session.reset()
            print("[new conversation]", file=sys.stderr)
            continue
        if text.startswith("/") and len(text.split()) == 1:
            print(f"[unknown command {text}; {COMMANDS_HELP}]", file=sys.stderr)
            continue
        try:
            stream_reply(session, checked_text(text, STDIN))
        except KeyboardInterrupt:
            print("[interrupted: the reply so far stays in the conversation]", file=sys.stderr)
        except InputError as error:  # the context is full, the line not UTF-8: say so, go on
            print(f"error: {error}", file=sys.stderr)


def stream_reply(session, text: str) -> None:
    """Print the reply as it is generated; notices about it go to stderr."""
    pieces = session.send(text)
    if session.dropped_exchanges:
        print(f"[forgot the oldest {count(session.dropped_exchanges, 'exchange')} to make "
              "room]",
              file=sys.stderr)
    try:
        with closing(pieces):  # closed on Ctrl-C too: the session keeps and closes the reply
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    stopped_by = session.last_stats.stopped_by
    if stopped_by == "max tokens":
        print(f"[the reply was cut at --max-tokens {session.max_tokens}]", file=sys.stderr)
    elif stopped_by == "context full":
        print(f"[the {session.context_window}-token context window is full: /reset to start "
              "over, or chat with --drop-oldest]", file=sys.stderr)
