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
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line like every other error (argparse prints the usage first); exit code 2
        # marks a command line that could not be parsed, as argparse's own does.
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f".{COMMANDS[command][0]}", __name__)
    prog = "run.py" if command == "complete" else f"run.py {command}"
    others = ", ".join(f"{name} ({desc})" for name, (_, desc) in COMMANDS.items())
    parser = _Parser(prog=prog, description=module.__doc__, epilog=f"commands: {others}",
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


def main(argv: list) -> int:
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "complete", argv
    args = build_parser(command).parse_args(rest)
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
        print("error: out of memory; keep the weights smaller with --dtype bf16 or --dtype q8",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`run.py inspect | head`): stop quietly
        _discard_stdout()
        return 0
    finally:
        sys.stdout = stdout
