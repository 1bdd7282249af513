#!/usr/bin/env python3
"""llama3_np from the command line.

    python run.py "The capital of France is"                  # complete with the demo model
    python run.py --model weights/Llama-3.2-1B "Once upon a"  # complete with Llama 3
    python run.py COMMAND --help                              # complete, chat, inspect, info, ppl
"""

import sys


def _threads_requested(argv: list) -> str:
    """--threads N, read before NumPy is imported: BLAS fixes its pool size on import."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return ""


if __name__ == "__main__":
    import faulthandler

    # A weight file truncated while memory-mapped kills the process with SIGBUS, which no
    # Python handler survives (the faulting read repeats): at least say so, with the stack.
    faulthandler.enable()
    from llama3_np.threads import configure_threads  # imports no NumPy

    threads = _threads_requested(sys.argv[1:])
    configure_threads(int(threads) if threads.isdigit() and int(threads) > 0 else None)
    from llama3_np.cli import main

    sys.exit(main(sys.argv[1:]))
