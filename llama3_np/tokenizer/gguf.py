"""The tokenizer a GGUF file describes under llama.cpp's `tokenizer.ggml.*` metadata keys:
byte-level BPE in GPT-2's spelling, like tokenizer.json."""

from ..config import config_value
from ..errors import TokenizerError
from .vocabulary import (GPT2_PATTERN, LLAMA3_PATTERN, SMOLLM_PATTERN, Description,
                         byte_level_vocabulary)

# tokenizer.ggml.pre -> split pattern (names as llama.cpp writes them).
GGUF_PRE_TOKENIZERS = {
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "llama-v3": LLAMA3_PATTERN,
    "smollm": SMOLLM_PATTERN,
    "gpt-2": GPT2_PATTERN,
}


def describe_gguf_metadata(metadata: dict, source: str) -> Description:
    """The tokenizer in GGUF metadata (plain Python values). Normal tokens (type 1) are
    byte-level BPE; every other type (control, user-defined, unused) is a special token,
    matched in text only with allow_special."""
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
    vocab = byte_level_vocabulary(normal, merges, specials, source)
    eot = metadata.get("tokenizer.ggml.eot_token_id")
    return Description(vocab, GGUF_PRE_TOKENIZERS[pre], source,
                       bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                       eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
                       extra_stop_ids=() if eot is None else (eot,),
                       chat_template=value("tokenizer.chat_template", str),
                       add_bos=value("tokenizer.ggml.add_bos_token", bool))
