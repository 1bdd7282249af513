#!/usr/bin/env python3
"""llama3_np from the command line (installed as `llama3-np` too).

    python run.py "The capital of France is"                          # the demo model
    python run.py --model meta-llama/Llama-3.2-1B "Once upon a time"  # Llama 3, by name
    python run.py list                                                # models found here
    python run.py COMMAND --help              # complete, chat, inspect, info, ppl, list
"""

if __name__ == "__main__":
    from llama3_np.cli import entry  # imports no NumPy: --threads must reach BLAS first

    entry()
