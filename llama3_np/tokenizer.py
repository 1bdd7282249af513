"""Text <-> token ids: a tiktoken Encoding for Llama 3 (and SmolLM2), plus the chat format.

Three files describe the same kind of vocabulary, byte-level BPE, and all end in one Tokenizer:

  - Meta's tokenizer.model: "<base64 token> <rank>" per line, 128000 lines; 256 special
    tokens follow at ids 128000..128255.
  - Hugging Face tokenizer.json: tokens spelled in GPT-2's byte-to-unicode alphabet, the
    merges, and the added (special) tokens.
  - GGUF metadata: the same spelling and merges under llama.cpp's `tokenizer.ggml.*` keys.

tiktoken merges the adjacent pair whose concatenation has the lowest rank, and returns that
rank as the token. Meta's ranks are the ids. For the other two sources the ranks come from
the merges list (merge order is merge priority); when the ids follow merge order they serve as
ranks directly, otherwise a rank -> id table translates tiktoken's answer.
"""

import base64
import binascii
import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tiktoken

from .config import config_value
from .errors import InputError, TokenizerError, clip
from .files import read_capped

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

# tokenizer.ggml.pre -> split pattern (names as llama.cpp writes them).
GGUF_PRE_TOKENIZERS = {
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "llama-v3": LLAMA3_PATTERN,
    "smollm": SMOLLM_PATTERN,
    "gpt-2": GPT2_PATTERN,
}

LLAMA3_N_RANKS = 128000
LLAMA3_NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>",
                         4: "<|finetune_right_pad_id|>", 6: "<|start_header_id|>",
                         7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                         10: "<|python_tag|>"}


def llama3_special_tokens() -> list:
    """The 256 special token names after Meta's ranks, in id order, as Llama 3.1+ snapshots
    name them: the unnamed slots are <|reserved_special_token_0|> .. _247|>."""
    reserved = iter(range(256))
    return [LLAMA3_NAMED_SPECIALS.get(i) or f"<|reserved_special_token_{next(reserved)}|>"
            for i in range(256)]


# Tokens that carry each chat format; a vocabulary has a chat format only if it has all of them.
CHAT_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}
CHAT_STOP_TOKENS = {
    "chatml": ("<|im_end|>",),
    "llama3": ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
}


@dataclass
class _Vocabulary:
    """What every source boils down to before tiktoken sees it."""

    ranks: dict  # token bytes -> merge priority (tiktoken's "rank")
    id_bytes: list  # token id -> its bytes (a special token: its name)
    special_tokens: dict  # name -> id
    rank_ids: Optional[list] = None  # rank -> id, when the ranks are not the ids themselves


class Tokenizer:
    """Byte-level BPE on tiktoken, with the model's special tokens and chat format.

    Attributes: bos_id, eos_id (None if the vocabulary names none), stop_ids (tuple),
    special_tokens (name -> id), n_vocab, chat_format ("llama3", "chatml" or None),
    add_bos (whether prompts start with bos_id), default_system_prompt (ChatML templates
    that supply one), source (the file it came from).
    """

    def __init__(self, vocab: _Vocabulary, pattern: str, source: str, *,
                 bos_id: Optional[int], eos_id: Optional[int], extra_stop_ids=(),
                 chat_template: Optional[str] = None, add_bos: Optional[bool] = None):
        self.source = source
        self.special_tokens = dict(vocab.special_tokens)
        self.n_vocab = len(vocab.id_bytes)
        self._id_bytes = vocab.id_bytes
        self._rank_ids = vocab.rank_ids
        if self._rank_ids is None:
            tiktoken_specials = self.special_tokens
        else:  # specials get values past the last rank, translated by the same table
            self._rank_ids = list(self._rank_ids)
            tiktoken_specials = {}
            for name, token in self.special_tokens.items():
                tiktoken_specials[name] = len(self._rank_ids)
                self._rank_ids.append(token)
        try:
            self._encoding = tiktoken.Encoding(name=Path(source).name, pat_str=pattern,
                                               mergeable_ranks=vocab.ranks,
                                               special_tokens=tiktoken_specials)
        except ValueError as e:  # a split pattern tiktoken's regex engine rejects
            raise TokenizerError(f"{source}: unusable tokenizer ({e})") from None
        # Bytes no token spells (a vocabulary trained without them) make tiktoken panic.
        self._unencodable = frozenset(range(256)) - {b[0] for b in vocab.ranks if len(b) == 1}

        self.bos_id, self.eos_id = bos_id, eos_id
        named = [("bos", bos_id), ("eos", eos_id), *(("stop", t) for t in extra_stop_ids)]
        for role, token in named:
            if token is not None and not (isinstance(token, int) and 0 <= token < self.n_vocab):
                raise TokenizerError(f"{source}: {role} token id {token!r} is outside the "
                                     f"vocabulary (size {self.n_vocab})")
        self.chat_format = _chat_format(self.special_tokens, chat_template)
        self.add_bos = (self.chat_format == "llama3") if add_bos is None else bool(add_bos)
        self.default_system_prompt = (_default_system_prompt(chat_template)
                                      if self.chat_format == "chatml" else None)
        chat_stops = [self.special_tokens[n] for n in CHAT_STOP_TOKENS.get(self.chat_format, ())
                      if n in self.special_tokens]
        self.stop_ids = tuple(dict.fromkeys(
            t for t in (*chat_stops, eos_id, *extra_stop_ids) if t is not None))

    # ---- building from files -------------------------------------------------------------

    @classmethod
    def from_tiktoken_file(cls, path) -> "Tokenizer":
        """Meta's tokenizer.model: 128000 ranks, then Llama 3's 256 special tokens."""
        path = Path(path)
        ranks = _read_tiktoken_ranks(path)
        names = llama3_special_tokens()
        specials = {name: LLAMA3_N_RANKS + i for i, name in enumerate(names)}
        id_bytes = list(ranks) + [name.encode() for name in names]
        vocab = _Vocabulary(ranks=ranks, id_bytes=id_bytes, special_tokens=specials)
        return cls(vocab, LLAMA3_PATTERN, str(path), bos_id=specials["<|begin_of_text|>"],
                   eos_id=specials["<|end_of_text|>"])

    @classmethod
    def from_hf_tokenizer_json(cls, path) -> "Tokenizer":
        """A Hugging Face tokenizer.json (byte-level BPE); bos/eos and the chat template come
        from tokenizer_config.json beside it when present."""
        path = Path(path)
        doc = _read_json(path)
        try:
            return cls._from_hf_documents(path, doc)
        except (AttributeError, TypeError, KeyError) as e:
            # a list where an object belongs, a number where a name does, ...
            raise TokenizerError(f"{path} (or tokenizer_config.json beside it) has an "
                                 f"unexpected structure ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_hf_documents(cls, path: Path, doc: dict) -> "Tokenizer":
        source = str(path)
        model = doc.get("model") or {}
        if model.get("type", "BPE") != "BPE" or model.get("byte_fallback") or doc.get("normalizer"):
            raise TokenizerError(f"{source}: not a byte-level BPE tokenizer (model "
                                 f"{model.get('type')!r}, normalizer {doc.get('normalizer')!r})")
        if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
            raise TokenizerError(f"{source}: model.vocab / model.merges are missing")
        try:
            added = {t["content"]: int(t["id"]) for t in doc.get("added_tokens") or ()}
        except (KeyError, TypeError, ValueError):
            raise TokenizerError(f"{source}: every added_tokens entry needs an 'id' and a "
                                 "'content'") from None
        normal = {text: i for text, i in model["vocab"].items() if text not in added}
        vocab = _byte_level_vocabulary(normal, model["merges"], added, source)

        config_path = path.with_name("tokenizer_config.json")
        config = _read_json(config_path) if config_path.is_file() else {}
        template = config.get("chat_template")
        template_file = path.with_name("chat_template.jinja")
        if template is None and template_file.is_file():
            template = template_file.read_text(encoding="utf-8")

        def configured(key, fallback):
            name = config.get(key)
            name = name.get("content") if isinstance(name, dict) else name
            if name is not None and name not in added:
                raise TokenizerError(f"{config_path}: {key} {name!r} is not a token of {source}")
            return added.get(name or fallback)

        bos_id = configured("bos_token", "<|begin_of_text|>")
        return cls(vocab, _hf_split_pattern(doc.get("pre_tokenizer"), source), source,
                   bos_id=bos_id, eos_id=configured("eos_token", "<|end_of_text|>"),
                   chat_template=template if isinstance(template, str) else None,
                   add_bos=_hf_adds_bos(doc.get("post_processor"), bos_id, added))

    @classmethod
    def from_gguf_metadata(cls, metadata: dict, source: str) -> "Tokenizer":
        """The tokenizer a GGUF file describes (llama.cpp's `tokenizer.ggml.*` keys, plain
        Python values). Normal tokens (type 1) are byte-level BPE; every other type (control,
        user-defined, unused) is a special token, matched in text only with allow_special."""
        def value(key, kind, default=None):
            return config_value(metadata, key, kind, source=source, default=default,
                                error=TokenizerError)

        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise TokenizerError(f"{source}: tokenizer.ggml.model is {kind!r}; only byte-level "
                                 "BPE ('gpt2', as Llama 3 and SmolLM2 use) is supported")
        pre = value("tokenizer.ggml.pre", str, "default")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise TokenizerError(f"{source}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not "
                                 f"supported (known: {', '.join(sorted(GGUF_PRE_TOKENIZERS))})")
        tokens, types, merges = (metadata.get(f"tokenizer.ggml.{k}") for k in
                                 ("tokens", "token_type", "merges"))
        if not (isinstance(tokens, list) and isinstance(types, list) and isinstance(merges, list)):
            raise TokenizerError(f"{source}: tokenizer.ggml.tokens, token_type and merges must "
                                 "all be present as lists")
        if len(types) != len(tokens):
            raise TokenizerError(f"{source}: {len(tokens)} tokens but {len(types)} token types")
        if not (all(isinstance(t, str) for t in tokens) and all(type(t) is int for t in types)):
            raise TokenizerError(f"{source}: tokenizer.ggml.tokens must be strings and "
                                 "token_type integers")
        normal, specials = {}, {}
        for i, (text, kind) in enumerate(zip(tokens, types)):
            (normal if kind == 1 else specials)[text] = i
        vocab = _byte_level_vocabulary(normal, merges, specials, source)
        eot = metadata.get("tokenizer.ggml.eot_token_id")
        return cls(vocab, GGUF_PRE_TOKENIZERS[pre], source,
                   bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                   eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
                   extra_stop_ids=() if eot is None else (eot,),
                   chat_template=value("tokenizer.chat_template", str),
                   add_bos=value("tokenizer.ggml.add_bos_token", bool))

    # ---- text <-> ids ----------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False,
               allow_special: bool = False) -> list:
        """Token ids for `text`. Special-token names in the text ("<|eot_id|>") are plain text
        unless allow_special=True."""
        if self._unencodable:
            self._check_encodable(text)
        if allow_special:
            ids = self._encoding.encode(text, allowed_special="all")
        else:
            ids = self._encoding.encode(text, allowed_special=set(), disallowed_special=())
        if self._rank_ids is not None:
            ids = [self._rank_ids[r] for r in ids]
        if bos:
            ids.insert(0, self._need(self.bos_id, "beginning-of-text"))
        if eos:
            ids.append(self._need(self.eos_id, "end-of-text"))
        return ids

    def decode(self, ids) -> str:
        """The text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a special token gives its name), for streaming."""
        if not 0 <= token_id < self.n_vocab:
            raise InputError(f"token id {token_id} is outside the vocabulary of {self.source} "
                             f"(size {self.n_vocab})")
        return self._id_bytes[token_id]

    def _need(self, token: Optional[int], what: str) -> int:
        if token is None:
            raise InputError(f"{self.source} names no {what} token")
        return token

    def _check_encodable(self, text: str) -> None:
        if self._unencodable.isdisjoint(text.encode("utf-8", errors="replace")):
            return
        char = next(c for c in text if not self._unencodable.isdisjoint(c.encode("utf-8")))
        raise InputError(f"character {char!r} (U+{ord(char):04X}) cannot be encoded: the "
                         f"vocabulary of {self.source} has no token for one of its bytes")

    # ---- chat ------------------------------------------------------------------------------

    def encode_dialog(self, messages, add_generation_prompt: bool = True) -> list:
        """A conversation in the model's chat format, ready for generation.

        llama3: <|begin_of_text|> then per message <|start_header_id|>role<|end_header_id|>
        "\\n\\n" content.strip() <|eot_id|>.  chatml: per message <|im_start|>role "\\n" content
        <|im_end|> "\\n", after the template's default system prompt when the dialog has none.
        The text between two special tokens is encoded as one piece, as the chat templates
        render it; message text is never read as special tokens.
        """
        if self.chat_format is None:
            raise TokenizerError(f"{self.source} has no chat format (neither Llama 3 headers "
                                 "nor ChatML <|im_start|>/<|im_end|> tokens)")
        messages = _checked_messages(messages)
        special = self.special_tokens
        if self.chat_format == "llama3":
            start, end, eot = (special[n] for n in CHAT_TOKENS["llama3"])
            ids = [self._need(self.bos_id, "beginning-of-text")]
            for m in messages:
                ids += [start, *self.encode(m["role"]), end,
                        *self.encode("\n\n" + m["content"].strip()), eot]
            if add_generation_prompt:
                ids += [start, *self.encode("assistant"), end, *self.encode("\n\n")]
            return ids
        im_start, im_end = (special[n] for n in CHAT_TOKENS["chatml"])
        if self.default_system_prompt is not None and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system_prompt}, *messages]
        ids = []
        for m in messages:
            ids += [im_start, *self.encode(f"{m['role']}\n{m['content']}"), im_end,
                    *self.encode("\n")]
        if add_generation_prompt:
            ids += [im_start, *self.encode("assistant\n")]
        return ids


class StreamDecoder:
    """Text from tokens as they arrive: a UTF-8 character split across tokens is held back
    until its last byte comes in."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text this token completes (empty while a character is still incomplete)."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still held back; an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(checkpoint, path=None) -> Tokenizer:
    """The tokenizer for a Checkpoint: an explicit `path` (file or folder) if given, else the
    checkpoint's tokenizer file, else its GGUF metadata, else a tokenizer file beside it."""
    if path is not None:
        return _from_path(Path(path))
    if checkpoint.tokenizer_file is not None:
        return _from_path(Path(checkpoint.tokenizer_file))
    if "tokenizer.ggml.tokens" in (checkpoint.metadata or {}):
        return Tokenizer.from_gguf_metadata(checkpoint.metadata, str(checkpoint.path))
    where = Path(checkpoint.path)
    folder = where if where.is_dir() else where.parent
    candidates = _candidates(folder)
    for candidate in candidates:
        if candidate.is_file():
            return _from_path(candidate)
    raise TokenizerError(f"no tokenizer for {where}: the checkpoint carries none and none of "
                         f"{', '.join(str(c) for c in candidates)} exists; give a tokenizer "
                         "file explicitly")


# ---- helpers ---------------------------------------------------------------------------------

def _candidates(folder: Path) -> list:
    return [folder / "tokenizer.model", folder / "tokenizer.json",
            folder / "original" / "tokenizer.model"]


def _from_path(path: Path) -> Tokenizer:
    if path.is_dir():
        found = next((c for c in _candidates(path) if c.is_file()), None)
        if found is None:
            raise TokenizerError(f"{path} holds no tokenizer.model or tokenizer.json")
        path = found
    if path.suffix == ".json":  # (a missing file, a FIFO: refused when read)
        return Tokenizer.from_hf_tokenizer_json(path)
    return Tokenizer.from_tiktoken_file(path)


# Llama 3's tokenizer.json is 9 MB, its tokenizer.model 2 MB; a (sparse) file claiming
# gigabytes is not read into memory.
_MAX_TOKENIZER_BYTES = 64 << 20


def _read_file(path: Path) -> bytes:
    """A tokenizer file's bytes, from a regular file (a FIFO would block), size capped."""
    if not path.exists():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    return read_capped(path, _MAX_TOKENIZER_BYTES, TokenizerError)


def _read_json(path: Path) -> dict:
    raw = _read_file(path)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit numbers
        raise TokenizerError(f"{path} is not readable JSON ({type(e).__name__}: "
                             f"{clip(str(e))})") from None
    if not isinstance(doc, dict):
        raise TokenizerError(f"{path} does not hold a JSON object")
    return doc


def _read_tiktoken_ranks(path: Path) -> dict:
    """Meta's ranks: every line "<base64 token> <rank>", ranks 0, 1, 2, ... in order."""
    lines = _read_file(path).splitlines()
    ranks = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        try:
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            if len(fields) != 2 or not token:
                raise ValueError
        except (IndexError, ValueError, binascii.Error):
            raise TokenizerError(f"{path} line {number}: expected '<base64 token> <rank>', "
                                 f"got {line[:60]!r}") from None
        if rank != number - 1 or token in ranks:
            raise TokenizerError(f"{path} line {number}: rank {rank} for {token!r} breaks the "
                                 f"sequence of distinct tokens ranked 0, 1, 2, ...")
        ranks[token] = rank
    if len(ranks) != LLAMA3_N_RANKS:
        raise TokenizerError(f"{path} holds {len(ranks)} ranks; a Llama 3 tokenizer.model has "
                             f"exactly {LLAMA3_N_RANKS}")
    return ranks


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


def _byte_level_vocabulary(normal: dict, merges: list, specials: dict, source: str) -> _Vocabulary:
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
        return _Vocabulary(ranks={b: token_of[b] for b in priority}, id_bytes=id_bytes,
                           special_tokens=dict(specials))
    return _Vocabulary(ranks={b: rank for rank, b in enumerate(priority)}, id_bytes=id_bytes,
                       special_tokens=dict(specials), rank_ids=[token_of[b] for b in priority])


def _hf_split_pattern(pre_tokenizer, source: str) -> str:
    """The split regex a tokenizer.json's pre-tokenizer amounts to (the shapes Llama 3, GPT-2
    and SmolLM2 use); anything else is refused rather than approximated."""
    pre = pre_tokenizer or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    if byte_level and not byte_level.get("add_prefix_space"):
        uses_regex = byte_level.get("use_regex", True)
        if kinds == ["ByteLevel"] and uses_regex:
            return GPT2_PATTERN
        if kinds == ["Digits", "ByteLevel"] and uses_regex and steps[0].get("individual_digits"):
            return SMOLLM_PATTERN
        split = steps[0]
        regex = (split.get("pattern") or {}).get("Regex")
        if (kinds == ["Split", "ByteLevel"] and not uses_regex and regex
                and split.get("behavior") == "Isolated" and not split.get("invert")):
            return regex
    raise TokenizerError(f"{source}: pre-tokenizer {json.dumps(pre_tokenizer)[:200]} is not "
                         "supported (expected Llama 3's Split+ByteLevel, GPT-2's ByteLevel or "
                         "SmolLM2's Digits+ByteLevel)")


def _hf_adds_bos(post_processor, bos_id: Optional[int], added: dict) -> bool:
    """Whether tokenizer.json's post-processor starts every sequence with the bos token."""
    steps = [post_processor or {}]
    while steps:
        step = steps.pop()
        steps += step.get("processors", [])
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0].get("SpecialToken") or {}
            return bos_id is not None and added.get(first.get("id")) == bos_id
    return False


def _chat_format(special_tokens: dict, template: Optional[str]) -> Optional[str]:
    """The chat format the template names, else the one the special tokens support."""
    usable = [f for f, names in CHAT_TOKENS.items() if all(n in special_tokens for n in names)]
    named = [f for f in usable if template and CHAT_TOKENS[f][0] in template]
    return (named or usable or [None])[0]


# A ChatML template that opens with a fixed system message when the dialog brings none writes
# it as one literal, '<|im_start|>system\n...<|im_end|>\n' (SmolLM2's does).
_DEFAULT_SYSTEM = re.compile(r"'<\|im_start\|>system(?:\n|\\n)([^'{}]*)<\|im_end\|>(?:\n|\\n)'")


def _default_system_prompt(template: Optional[str]) -> Optional[str]:
    if not template or "!= 'system'" not in template:
        return None
    found = _DEFAULT_SYSTEM.search(template)
    return found.group(1).replace("\\n", "\n") if found else None


def _checked_messages(messages) -> list:
    checked = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise InputError(f"chat message {i} must be a dict with string 'role' and "
                             f"'content', got {m!r}"[:200])
        checked.append(m)
    return checked
