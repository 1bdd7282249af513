"""Text the user hands in (a prompt, a chat message, a file to score), under one rule:
it is UTF-8, read with a size cap, from a regular file or standard input.

Python turns undecodable bytes in arguments (and, under a C locale, in standard input)
into lone surrogates, which the tokenizer would quietly replace; they are refused like
undecodable bytes read directly."""

import sys

from ..errors import InputError
from ..files import read_capped, read_limited

# Far more text than a NumPy forward pass gets through in a day; a stream without end
# (`ppl - < /dev/zero`) stops here.
MAX_TEXT_BYTES = 64 << 20
STDIN = "standard input"


def checked_text(text: str, where: str) -> str:
    """`text` if it came from valid UTF-8 (no lone surrogates), else InputError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where} is not UTF-8 text ({e.reason} at position {e.start})") \
            from None
    return text


def decode_text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_text(source) -> str:
    """The text of a file, or of standard input for '-'."""
    if str(source) == "-":
        return decode_text(read_limited(sys.stdin.buffer, MAX_TEXT_BYTES, STDIN), STDIN)
    return decode_text(read_capped(source, MAX_TEXT_BYTES, InputError), str(source))
