"""A Hugging Face tokenizer.json (byte-level BPE: tokens spelled in GPT-2's byte-to-unicode
alphabet, the merges, the added special tokens); bos/eos and the chat template come from
tokenizer_config.json (or chat_template.jinja) beside it."""

import json
from pathlib import Path
from typing import Optional

from ..errors import TokenizerError
from .files import read_tokenizer_file, read_tokenizer_json
from .vocabulary import GPT2_PATTERN, SMOLLM_PATTERN, Description, byte_level_vocabulary


def describe_tokenizer_json(path) -> Description:
    """What a tokenizer.json (and tokenizer_config.json beside it) says."""
    path = Path(path)
    doc = read_tokenizer_json(path)
    try:
        return _describe(path, doc)
    except (AttributeError, TypeError, KeyError) as e:
        # a list where an object belongs, a number where a name does, ...
        raise TokenizerError(f"{path} (or tokenizer_config.json beside it) has an "
                             f"unexpected structure ({type(e).__name__}: {e})") from None


def _describe(path: Path, doc: dict) -> Description:
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
    vocab = byte_level_vocabulary(normal, model["merges"], added, source)

    config_path = path.with_name("tokenizer_config.json")
    config = read_tokenizer_json(config_path) if config_path.is_file() else {}
    template = config.get("chat_template")
    template_file = path.with_name("chat_template.jinja")
    if template is None and template_file.is_file():
        template = _read_text(template_file)

    def configured(key, fallback):
        name = config.get(key)
        name = name.get("content") if isinstance(name, dict) else name
        if name is not None and name not in added:
            raise TokenizerError(f"{config_path}: {key} {name!r} is not a token of {source}")
        return added.get(name or fallback)

    bos_id = configured("bos_token", "<|begin_of_text|>")
    return Description(vocab, _split_pattern(doc.get("pre_tokenizer"), source), source,
                       bos_id=bos_id, eos_id=configured("eos_token", "<|end_of_text|>"),
                       chat_template=template if isinstance(template, str) else None,
                       add_bos=_adds_bos(doc.get("post_processor"), bos_id, added))


def _read_text(path: Path) -> str:
    try:
        return read_tokenizer_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path} is not UTF-8 text") from None


def _split_pattern(pre_tokenizer, source: str) -> str:
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


def _adds_bos(post_processor, bos_id: Optional[int], added: dict) -> bool:
    """Whether tokenizer.json's post-processor starts every sequence with the bos token."""
    steps = [post_processor or {}]
    while steps:
        step = steps.pop()
        steps += step.get("processors", [])
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0].get("SpecialToken") or {}
            return bos_id is not None and added.get(first.get("id")) == bos_id
    return False
