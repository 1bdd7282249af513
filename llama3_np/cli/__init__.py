"""The command line: one module per command, each with add_arguments(parser) and run(args).

The first argument names the command; without one, the arguments are a completion.
A Llama3Error becomes one line on stderr and exit code 1 (--debug shows the traceback).
"""

import argparse
import importlib
import os
import sys

from ..errors import Llama3Error, OutputError

COMMANDS = {  # name -> (module, one-line description)
    "complete": ("complete", "stream a completion of a prompt (the default command)"),
    "chat": ("chat", "talk with an Instruct model, turn by turn, in its chat format"),
    "ppl": ("perplexity", "perplexity of a text file (sliding window)"),
    "info": ("info", "configuration, parameter counts and memory of a model"),
    "inspect": ("inspection", "every step of one forward pass: shapes, statistics, plots"),
    "list": ("listing", "the Llama models on this machine (Hugging Face, Ollama, Meta), by name"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line like every other error (argparse prints the usage first); exit code 2
        # marks a command line that could not be parsed, as argparse's own does.
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(command: str, program: str = "run.py") -> argparse.ArgumentParser:
    module = importlib.import_module(f".{COMMANDS[command][0]}", __name__)
    prog = program if command == "complete" else f"{program} {command}"
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items())
    parser = _Parser(prog=prog, description=module.__doc__,
                     epilog=f"commands ({program} COMMAND --help for each):\n{commands}",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when something goes wrong")
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)
    return parser


class _CheckedStdout:
    """sys.stdout, with a failed write or flush (a full disk, /dev/full) raised as an
    OutputError, so it ends in one line like any other error."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)

    def _checked(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            _discard_stdout()  # what is left in the buffer must not fail again at exit
            raise OutputError(f"cannot write to standard output: {e.strerror}") from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard_stdout() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# Whatever a message quotes is cut short where it is made; this is the last guard.
_LONGEST_MESSAGE = 2000


def main(argv: list, program: str = "run.py") -> int:
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "complete", argv
    args = build_parser(command, program).parse_args(rest)
    stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # a write error shows here, not in the interpreter's exit
        return code
    except Llama3Error as error:
        if args.debug:
            raise
        message = str(error)
        if len(message) > _LONGEST_MESSAGE:
            message = message[:_LONGEST_MESSAGE] + " ..."
        print(f"error: {message}", file=sys.stderr)
        return 1
    except MemoryError:
        if args.debug:
            raise
        # Loading and the KV cache say so themselves (with advice); what is left is the
        # working memory of a forward pass.
        print("error: out of memory while running the model (activations and attention "
              "working memory); use a shorter prompt (or a smaller ppl --ctx)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`run.py inspect | head`): stop quietly
        _discard_stdout()
        return 0
    finally:
        sys.stdout = stdout


def entry() -> None:
    """The `llama3-np` command and `python run.py`: thread counts reach BLAS before NumPy
    loads, then main() runs with the name the user typed."""
    import faulthandler

    from ..threads import configure_threads, threads_requested

    # A weight file truncated while memory-mapped kills the process with SIGBUS, which no
    # Python handler survives (the faulting read repeats): at least say so, with the stack.
    faulthandler.enable()
    configure_threads(threads_requested(sys.argv[1:]))
    program = {"run.py": "run.py", "__main__.py": "python -m llama3_np"}.get(
        os.path.basename(sys.argv[0]), "llama3-np")
    sys.exit(main(sys.argv[1:], program))
