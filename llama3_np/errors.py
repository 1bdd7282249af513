"""The project's error types: each names the file or value at fault and what is wrong.

run.py prints any Llama3Error as one line and exits non-zero; anything else is a bug.
"""

import reprlib


class Llama3Error(Exception):
    """A problem the user can fix (bad file, bad option), described in one sentence."""


class CheckpointError(Llama3Error):
    """A checkpoint file or directory is missing, truncated, corrupt or inconsistent."""


class ConfigError(Llama3Error):
    """params.json / config.json / GGUF metadata is missing a field or contradicts itself."""


class TokenizerError(Llama3Error):
    """A tokenizer file cannot be read or does not describe a usable vocabulary."""


class InputError(Llama3Error):
    """A prompt or an option given at run time is out of range."""


class NonFiniteError(Llama3Error):
    """The model computed NaN or infinity: damaged weights (or values that overflow)."""


class OutputError(Llama3Error):
    """Standard output cannot be written (a full disk, /dev/full, an I/O error)."""


class _Excerpt(reprlib.Repr):
    """repr() cut short: a few items of a container, a few dozen characters of a string,
    and huge integers by their size (Python refuses str() of one over 4300 digits)."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 60, 60
        self.maxtuple = self.maxlist = 8
        self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = self.maxarray = 4

    def repr_int(self, x, level):
        if x.bit_length() > 128:
            return f"<a {x.bit_length()}-bit integer>"
        return repr(x)


_EXCERPT = _Excerpt()


def excerpt(value) -> str:
    """A short repr of untrusted `value` for a message: an attacker's 2-million-element
    tuple or 4000-digit number must not become a 12 MB error line."""
    return _EXCERPT.repr(value)


def clip(text: str, limit: int = 80) -> str:
    """A name from an untrusted file, cut to `limit` characters for a message."""
    return text if len(text) <= limit else text[:limit] + "..."
