"""What every vocabulary source boils down to before tiktoken sees it, and the byte-level BPE
vocabulary that Hugging Face's tokenizer.json and GGUF metadata share (GPT-2's spelling).

tiktoken merges the adjacent pair whose concatenation has the lowest rank, and returns that
rank as the token. Meta's ranks are the ids. For the other two sources the ranks come from
the merges list (merge order is merge priority); when the ids follow merge order they serve as
ranks directly, otherwise a rank -> id table translates tiktoken's answer.
"""

from dataclasses import dataclass
from typing import Optional

from ..errors import TokenizerError

# Meta's pat_str for Llama 3 (llama-models, models/llama3/tokenizer.py).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-2's split, as Hugging Face's ByteLevel pre-tokenizer applies it (use_regex=true).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# SmolLM2 splits every digit off first (HF: Digits(individual_digits) then ByteLevel; llama.cpp
# "smollm"), then applies GPT-2's split to the text between digits. As one regex: a digit
# stands alone, and a whitespace run may end before a digit, where GPT-2's split saw the end
# of its piece.
SMOLLM_PATTERN = (r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+"
                  r"|\s+(?![^\s\p{N}])|\s+")


@dataclass
class Vocabulary:
    """The tokens of one vocabulary, as tiktoken needs them."""

    ranks: dict  # token bytes -> merge priority (tiktoken's "rank")
    id_bytes: list  # token id -> its bytes (a special token: its name)
    special_tokens: dict  # name -> id
    rank_ids: Optional[list] = None  # rank -> id, when the ranks are not the ids themselves


@dataclass
class Description:
    """Everything a source file says about its tokenizer: what a Tokenizer is built from."""

    vocab: Vocabulary
    pattern: str  # the pre-tokenizer's split regex
    source: str  # the file it came from, for messages
    bos_id: Optional[int]
    eos_id: Optional[int]
    extra_stop_ids: tuple = ()
    chat_template: Optional[str] = None  # the Jinja template, read for its format only
    add_bos: Optional[bool] = None  # None: as the chat format implies


def _gpt2_unicode_to_byte() -> dict:
    """GPT-2 spells each byte as a printable character: printable Latin-1 bytes as
    themselves, the other 68 as chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    spelling = {chr(b): b for b in printable}
    spelling.update({chr(256 + i): b for i, b in enumerate(others)})
    return spelling


_UNICODE_TO_BYTE = _gpt2_unicode_to_byte()


def byte_level_vocabulary(normal: dict, merges: list, specials: dict, source: str) -> Vocabulary:
    """Ranks and id table from a byte-level BPE vocabulary (the one home for HF and GGUF).

    normal: GPT-2-spelled token -> id; merges: "left right" strings or [left, right] pairs,
    best first; specials: name -> id. Single bytes come first in priority, then each merge's
    result in merge order. Tokens no merge produces stay decodable but are never emitted,
    as in Hugging Face's BPE.
    """
    ids = [*normal.values(), *specials.values()]
    if not all(type(i) is int for i in ids) or sorted(ids) != list(range(len(ids))):
        raise TokenizerError(f"{source}: token ids are not 0..{len(ids) - 1}, each used once "
                             "(is a token listed twice?)")
    id_bytes = [b""] * len(ids)
    for name, token in specials.items():
        id_bytes[token] = name.encode("utf-8")
    token_of = {}  # token bytes -> id
    for text, token in normal.items():
        try:
            spelled = bytes(_UNICODE_TO_BYTE[c] for c in text)
        except KeyError:
            raise TokenizerError(f"{source}: token {token} {text!r} is not spelled in GPT-2's "
                                 "byte alphabet") from None
        id_bytes[token] = spelled
        token_of[spelled] = token
    if len(token_of) != len(normal):
        raise TokenizerError(f"{source}: two token ids spell the same bytes")

    spelled_as = {text: id_bytes[token] for text, token in normal.items()}
    priority = [b for b in token_of if len(b) == 1]
    n_singles = len(priority)
    seen = set(priority)
    for index, merge in enumerate(merges):
        try:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            merged = spelled_as[left] + spelled_as[right]
            if merged not in token_of:
                raise KeyError(merged)
        except (KeyError, TypeError, ValueError):
            raise TokenizerError(f"{source}: merge {index} {merge!r} does not join two tokens "
                                 "into a token of the vocabulary") from None
        if merged not in seen:  # a later merge to the same token never fires
            seen.add(merged)
            priority.append(merged)

    merged_ids = [token_of[b] for b in priority[n_singles:]]
    if all(a < b for a, b in zip(merged_ids, merged_ids[1:])):
        # Ids follow merge order: they can be tiktoken's ranks (single bytes are never
        # compared by rank, only looked up).
        return Vocabulary(ranks={b: token_of[b] for b in priority}, id_bytes=id_bytes,
                          special_tokens=dict(specials))
    return Vocabulary(ranks={b: rank for rank, b in enumerate(priority)}, id_bytes=id_bytes,
                      special_tokens=dict(specials), rank_ids=[token_of[b] for b in priority])
