"""Run notebooks/walkthrough.ipynb from top to bottom on the demo model and save its outputs.

    python notebooks/refresh.py

The committed outputs are the demo model's (so the notebook reads on GitHub without
running); LLAMA3_NP_MODEL and LLAMA3_NP_DTYPE are ignored here. A failing cell (a
by-hand step that disagrees with the library) stops the run and nothing is written.
Needs nbclient, nbformat and ipykernel (tests/requirements.txt).
"""

import os
import sys
from pathlib import Path

WALKTHROUGH = Path(__file__).resolve().parent / "walkthrough.ipynb"
SETTINGS = ("LLAMA3_NP_MODEL", "LLAMA3_NP_DTYPE")  # the notebook's own choices


def execute(path=WALKTHROUGH, model=None, dtype=None, timeout=300):
    """The notebook at `path`, executed in a fresh kernel of this Python on `model` (None:
    the demo model) with weights kept in `dtype` (None: the library's default); raises nbclient's
    CellExecutionError at the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = {name: os.environ.pop(name, None) for name in SETTINGS}
    for name, value in zip(SETTINGS, (model, dtype)):
        if value is not None:
            os.environ[name] = str(value)
    try:  # the kernel inherits this environment
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    return notebook


def main() -> int:
    import nbformat

    notebook = execute()
    nbformat.write(notebook, WALKTHROUGH)
    print(f"wrote {WALKTHROUGH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
