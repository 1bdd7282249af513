"""`python -m llama3_np ...` is `python run.py ...`."""

from .cli import entry

entry()
