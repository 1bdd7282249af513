"""Reading the files a user names: regular files only, and whole-file reads capped.

A named pipe or a device where a file belongs (`mkfifo model.safetensors`, `ppl
/dev/zero`) would block open() forever or stream without end, and a sparse file
can claim gigabytes it never stored. So every path is checked to be a regular
file (after following links) and nothing is read whole beyond a stated cap.
"""

import json
import os
import stat
from pathlib import Path

from .errors import InputError


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_mode(path, mode: int, error: type) -> None:
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {_kind(mode)}, not a regular file")


def regular_file(path, error: type) -> Path:
    """`path` itself if it is a regular file (links followed), else `error` saying what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    _check_mode(path, mode, error)
    return Path(path)


def read_capped(path, limit: int, error: type) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else `error`."""
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        _check_mode(path, os.fstat(fd).st_mode, error)
        return read_limited(file, limit, str(path), error)


def read_limited(stream, limit: int, where: str, error: type = InputError) -> bytes:
    """All of a binary stream (a file, standard input) if it holds at most `limit` bytes."""
    try:
        raw = stream.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {where}: {e.strerror}") from None
    if len(raw) > limit:
        raise error(f"{where} is larger than {limit:,} bytes, more than this input can be")
    return raw


# A 405B model's index or a tokenizer.json is a few MB; a (sparse) file claiming more
# must not be read into memory.
MAX_JSON_BYTES = 64 << 20


def parse_json_object(text, source, error: type) -> dict:
    """A JSON object from text or UTF-8 bytes; anything else raises `error` naming `source`.
    (json.loads also fails with RecursionError on deep nesting and ValueError on integers
    of more than 4300 digits.)"""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise error(f"{source} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise error(f"{source} is not a JSON object")
    return value


def read_json_object(path, error: type) -> dict:
    """The JSON object in a file (params.json, config.json, tokenizer.json ...), or `error`."""
    return parse_json_object(read_capped(path, MAX_JSON_BYTES, error), path, error)
