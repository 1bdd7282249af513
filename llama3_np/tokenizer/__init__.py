"""Text <-> token ids: a tiktoken Encoding for Llama 3 (and SmolLM2), plus the chat formats.

Three files describe the same kind of vocabulary, byte-level BPE, and all end in one Tokenizer
(as checkpoint/ has one reader per weight format, all ending in one Checkpoint):

    meta.py         Meta's tokenizer.model: "<base64 token> <rank>" per line
    hf.py           Hugging Face tokenizer.json (+ tokenizer_config.json beside it)
    gguf.py         GGUF metadata, llama.cpp's `tokenizer.ggml.*` keys
    vocabulary.py   what each source boils down to; the byte-level BPE both HF and GGUF use
    core.py         Tokenizer (tiktoken Encoding, special and stop tokens), StreamDecoder
    chat_format.py  the chat formats, with Meta's encode_header / encode_message /
                    encode_dialog_prompt
    files.py        where a tokenizer file is looked for (one rule), reading one
"""

from pathlib import Path

from ..errors import TokenizerError
from .chat_format import CHAT_STOP_TOKENS, CHAT_TOKENS, ChatMLFormat, Llama3ChatFormat
from .core import StreamDecoder, Tokenizer
from .files import TOKENIZER_FILES, find_tokenizer_file, tokenizer_candidates
from .gguf import GGUF_PRE_TOKENIZERS
from .meta import LLAMA3_N_RANKS, llama3_special_tokens
from .vocabulary import GPT2_PATTERN, LLAMA3_PATTERN, SMOLLM_PATTERN

__all__ = ["CHAT_STOP_TOKENS", "CHAT_TOKENS", "ChatMLFormat", "GGUF_PRE_TOKENIZERS",
           "GPT2_PATTERN", "LLAMA3_N_RANKS", "LLAMA3_PATTERN", "Llama3ChatFormat",
           "SMOLLM_PATTERN", "StreamDecoder", "TOKENIZER_FILES", "Tokenizer",
           "find_tokenizer_file", "llama3_special_tokens", "load_tokenizer",
           "tokenizer_candidates"]


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
    found = find_tokenizer_file(folder)
    if found is None:
        raise TokenizerError(f"no tokenizer for {where}: the checkpoint carries none and none "
                             f"of {', '.join(map(str, tokenizer_candidates(folder)))} exists; "
                             "give a tokenizer file explicitly")
    return _from_path(found)


def _from_path(path: Path) -> Tokenizer:
    if path.is_dir():
        found = find_tokenizer_file(path)
        if found is None:
            raise TokenizerError(f"{path} holds no tokenizer.model or tokenizer.json")
        path = found
    if path.suffix == ".json":  # (a missing file, a FIFO: refused when read)
        return Tokenizer.from_hf_tokenizer_json(path)
    return Tokenizer.from_tiktoken_file(path)
