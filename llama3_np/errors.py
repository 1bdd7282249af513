"""The project's error types: each names the file or value at fault and what is wrong.

run.py prints any Llama3Error as one line and exits non-zero; anything else is a bug.
"""


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
