"""The Tokenizer: byte-level BPE on a tiktoken Encoding, whichever file described it, with
the model's special tokens, stop tokens and chat format; and StreamDecoder for streaming."""

import codecs
from pathlib import Path
from typing import Optional

import tiktoken

from ..errors import InputError, TokenizerError
from . import gguf, hf, meta
from .chat_format import CHAT_STOP_TOKENS, chat_format
from .vocabulary import Description


class Tokenizer:
    """Byte-level BPE on tiktoken, with the model's special tokens and chat format.

    Attributes: bos_id, eos_id (None if the vocabulary names none), stop_ids (tuple),
    special_tokens (name -> id), n_vocab, chat (the chat format: encode_header,
    encode_message, encode_dialog_prompt; None if the vocabulary has none), chat_format
    (its name, "llama3" or "chatml", or None), add_bos (whether prompts start with bos_id),
    default_system_prompt (ChatML templates that supply one), source (the file it came from).
    """

    def __init__(self, description: Description):
        d = description
        vocab, source = d.vocab, d.source
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
            self._encoding = tiktoken.Encoding(name=Path(source).name, pat_str=d.pattern,
                                               mergeable_ranks=vocab.ranks,
                                               special_tokens=tiktoken_specials)
        except ValueError as e:  # a split pattern tiktoken's regex engine rejects
            raise TokenizerError(f"{source}: unusable tokenizer ({e})") from None
        # Bytes no token spells (a vocabulary trained without them) make tiktoken panic.
        self._unencodable = frozenset(range(256)) - {b[0] for b in vocab.ranks if len(b) == 1}

        self.bos_id, self.eos_id = d.bos_id, d.eos_id
        named = [("bos", d.bos_id), ("eos", d.eos_id), *(("stop", t) for t in d.extra_stop_ids)]
        for role, token in named:
            if token is not None and not (isinstance(token, int) and 0 <= token < self.n_vocab):
                raise TokenizerError(f"{source}: {role} token id {token!r} is outside the "
                                     f"vocabulary (size {self.n_vocab})")
        self.chat = chat_format(self, d.chat_template)
        self.chat_format = self.chat.name if self.chat else None
        self.add_bos = (self.chat_format == "llama3") if d.add_bos is None else bool(d.add_bos)
        self.default_system_prompt = self.chat.default_system_prompt if self.chat else None
        chat_stops = [self.special_tokens[n] for n in CHAT_STOP_TOKENS.get(self.chat_format, ())
                      if n in self.special_tokens]
        self.stop_ids = tuple(dict.fromkeys(
            t for t in (*chat_stops, d.eos_id, *d.extra_stop_ids) if t is not None))

    # ---- building from files (one module per source) -----------------------------------------

    @classmethod
    def from_tiktoken_file(cls, path) -> "Tokenizer":
        """Meta's tokenizer.model: 128000 ranks, then Llama 3's 256 special tokens."""
        return cls(meta.describe_tiktoken_file(path))

    @classmethod
    def from_hf_tokenizer_json(cls, path) -> "Tokenizer":
        """A Hugging Face tokenizer.json (byte-level BPE); bos/eos and the chat template come
        from tokenizer_config.json beside it when present."""
        return cls(hf.describe_tokenizer_json(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: dict, source: str) -> "Tokenizer":
        """The tokenizer a GGUF file describes (llama.cpp's `tokenizer.ggml.*` keys)."""
        return cls(gguf.describe_gguf_metadata(metadata, source))

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
            ids.insert(0, self.need_bos())
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

    def need_bos(self) -> int:
        """The beginning-of-text id, or InputError when the vocabulary names none."""
        return self._need(self.bos_id, "beginning-of-text")

    def _check_encodable(self, text: str) -> None:
        if self._unencodable.isdisjoint(text.encode("utf-8", errors="replace")):
            return
        char = next(c for c in text if not self._unencodable.isdisjoint(c.encode("utf-8")))
        raise InputError(f"character {char!r} (U+{ord(char):04X}) cannot be encoded: the "
                         f"vocabulary of {self.source} has no token for one of its bytes")

    # ---- chat ------------------------------------------------------------------------------

    def require_chat(self):
        """The chat format, or TokenizerError when the vocabulary has none."""
        if self.chat is None:
            raise TokenizerError(f"{self.source} has no chat format (neither Llama 3 headers "
                                 "nor ChatML <|im_start|>/<|im_end|> tokens)")
        return self.chat

    def encode_dialog(self, messages, add_generation_prompt: bool = True) -> list:
        """A conversation in the model's chat format, ready for generation (see
        chat_format.py): chat.encode_dialog_prompt."""
        return self.require_chat().encode_dialog_prompt(messages, add_generation_prompt)


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
