"""Where a tokenizer file is looked for, and reading one: the one rule for the readers (a
checkpoint's own tokenizer), an explicit --tokenizer folder and a checkpoint that names none.

A folder's tokenizer is Meta's tiktoken file when it has one (beside Meta's weights, or in
original/ of a Hugging Face snapshot: the reference tokenizer itself), else Hugging Face's
tokenizer.json.
"""

from pathlib import Path
from typing import Optional

from ..errors import TokenizerError
from ..files import MAX_JSON_BYTES, parse_json_object, read_capped

TOKENIZER_FILES = ("tokenizer.model", "original/tokenizer.model", "tokenizer.json")

# Llama 3's tokenizer.json is 9 MB, its tokenizer.model 2 MB; a (sparse) file claiming
# gigabytes is not read into memory.
MAX_TOKENIZER_BYTES = MAX_JSON_BYTES


def tokenizer_candidates(folder: Path) -> list:
    """The files that would be the folder's tokenizer, in order of preference."""
    return [Path(folder) / name for name in TOKENIZER_FILES]


def find_tokenizer_file(folder: Path) -> Optional[Path]:
    """The folder's tokenizer file, or None."""
    return next((c for c in tokenizer_candidates(folder) if c.is_file()), None)


def read_tokenizer_file(path: Path) -> bytes:
    """A tokenizer file's bytes, from a regular file (a FIFO would block), size capped."""
    if not path.exists():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    return read_capped(path, MAX_TOKENIZER_BYTES, TokenizerError)


def read_tokenizer_json(path: Path) -> dict:
    """The JSON object in tokenizer.json or tokenizer_config.json."""
    return parse_json_object(read_tokenizer_file(path), path, TokenizerError)
