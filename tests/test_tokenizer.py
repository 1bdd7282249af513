"""Tokenizer: Meta's reference vector and special tokens; the three routes (tokenizer.model,
tokenizer.json, GGUF metadata) agreeing token for token with Hugging Face's independent BPE
(`tokenizers`, via transformers' converters); chat formats; streaming; errors.

Token ids are exact: there is no tolerance anywhere in this file.
"""

import inspect
import json
import random
import re
import shutil
import unicodedata

import numpy as np
import pytest

from llama3_np.checkpoint import Checkpoint
from llama3_np.errors import InputError, TokenizerError
from llama3_np.tokenizer import (StreamDecoder, Tokenizer, find_tokenizer_file,
                                 llama3_special_tokens, load_tokenizer)
from tests.tiny import tiny_config

# Text that trips tokenizers up: whitespace runs, line ends, digit groups, scripts without
# spaces, emoji built from several code points, combining marks, special-token look-alikes.
TRICKY = [
    "This is a test sentence.",
    "",
    " ",
    "    four spaces, then a tab\tand a newline\n",
    "trailing spaces   ",
    "\n\n\nthree newlines, then\r\nWindows line ends\r\n",
    "   \t \n  mixed whitespace  \n\t",
    "1234567 digits; 3.14159; 1,000,000; 2024-05-01",
    "日本語のテキストと中文和한국어",
    "emoji 😀 👍🏽 🦙 👨‍👩‍👧 flags 🇫🇷",
    "combining: e\u0301 a\u0308 n\u0303 vs é ä ñ",
    "I'm sure you'll see they've said it's John's, we'd DON'T",
    "a <|eot_id|> look-alike, and <|begin_of_text|> too",
    "def f(x):\n    return x ** 2  # square\n",
    "Ünïcödé ÀÉÎÕÜ ß ẞ Ωμέγα Привет мир مرحبا بالعالم",
]

PIECES = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "the", " The", "llama", "'s", "'LL", "1", "42",
          "1234567", "3.14", ",", "!?", "...", "(", ")", "{", "}", "<|", "|>", "é", "e\u0301",
          "ß", "日本語", "中文", "한국어", "Привет", "مرحبا", "😀", "👍🏽", "🦙", "\u200d", "\u00a0",
          "--", "__init__", "http://example.com/a?b=c", "ALLCAPS", "camelCase"]


def corpus() -> list:
    """A few hundred strings: the tricky ones, paragraphs of prose and code from the standard
    library, and seeded random mixtures of scripts, digits and whitespace."""
    import argparse
    import json.decoder
    import textwrap
    texts = list(TRICKY)
    for module in (textwrap, argparse, json.decoder):
        texts += [p for p in inspect.getsource(module).split("\n\n") if p.strip()][:60]
    rng = random.Random(1234)
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(150)]
    return texts


CORPUS = corpus()

# Meta's Llama 3 Instruct chat template (the Hugging Face snapshots' tokenizer_config.json).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

DIALOG = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "  Paris.\n"},
          {"role": "user", "content": "And of Italy, in one word?"}]


def gpt2_spelling() -> dict:
    """byte -> GPT-2's printable character for it, from transformers (not from our code)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return bytes_to_unicode()


def chat_ids(backend, template: str, messages, bos_token=None) -> list:
    """transformers' own apply_chat_template over a `tokenizers` backend."""
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template,
                                        bos_token=bos_token)
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# ---- Meta's tokenizer.model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama3(llama3_tokenizer_path):
    return Tokenizer.from_tiktoken_file(llama3_tokenizer_path)


def test_meta_reference_vector(llama3):
    # Meta's own test (llama-models, tokenizer tests): bos + text + eos.
    ids = llama3.encode("This is a test sentence.", bos=True, eos=True)
    assert ids == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert llama3.decode(ids[1:-1]) == "This is a test sentence."


def test_llama3_special_tokens(llama3):
    specials = llama3.special_tokens
    expected = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
                "<|reserved_special_token_0|>": 128002, "<|finetune_right_pad_id|>": 128004,
                "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
                "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010,
                "<|reserved_special_token_247|>": 128255}
    assert {name: specials[name] for name in expected} == expected
    assert sorted(specials.values()) == list(range(128000, 128256))
    assert llama3.n_vocab == 128256
    assert (llama3.bos_id, llama3.eos_id) == (128000, 128001)
    assert llama3.stop_ids == (128001, 128008, 128009)
    assert llama3.chat_format == "llama3" and llama3.add_bos
    assert llama3.token_bytes(128009) == b"<|eot_id|>"
    assert llama3.decode([128000, 9906]) == "<|begin_of_text|>Hello"


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(llama3, text):
    assert llama3.decode(llama3.encode(text)) == text


def test_special_token_text_is_plain_text_unless_allowed(llama3):
    text = "a<|eot_id|>b"
    plain = llama3.encode(text)
    assert max(plain) < 128000 and len(plain) > 3
    assert llama3.encode(text, allow_special=True) == [64, 128009, 65]  # "a", eot, "b"
    assert llama3.decode(plain) == llama3.decode([64, 128009, 65]) == text


def test_out_of_range_ids_are_refused(llama3):
    for bad in (-1, 128256):
        with pytest.raises(InputError, match=str(bad)):
            llama3.decode([1, bad])


def test_stream_decoder_holds_split_character(llama3):
    ids = llama3.encode("🦙 llama")
    first = llama3.token_bytes(ids[0])
    assert len(ids) > 2 and len(first) < 4  # the emoji really is split across tokens
    stream = StreamDecoder(llama3)
    pieces = [stream.push(t) for t in ids]
    assert pieces[:3] == ["", "", "🦙"] and "".join(pieces) + stream.flush() == "🦙 llama"
    cut = StreamDecoder(llama3)
    assert cut.push(ids[0]) == "" and cut.flush() == "\ufffd"  # an unfinished character


# ---- the same vocabulary through tokenizer.json and GGUF metadata ----------------------------

@pytest.fixture(scope="module")
def hf_llama3(llama3_tokenizer_path, tmp_path_factory):
    """Hugging Face's BPE for the same tokenizer.model, built by transformers' TikTokenConverter
    (its own regex and merges), post-processed like a Llama 3 snapshot's tokenizer.json
    (bos first), saved to disk. Returns (backend, path to tokenizer.json)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter
    backend = TikTokenConverter(vocab_file=str(llama3_tokenizer_path),
                                extra_special_tokens=llama3_special_tokens()).converted()
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      special_tokens=[("<|begin_of_text|>", 128000)])])
    path = tmp_path_factory.mktemp("llama3_hf") / "tokenizer.json"
    backend.save(str(path))
    return backend, path


def test_matches_hugging_face_bpe(llama3, hf_llama3):
    backend, _ = hf_llama3
    for text in CORPUS:  # HF always matches added tokens, hence allow_special here
        assert llama3.encode(text, allow_special=True) == \
            backend.encode(text, add_special_tokens=False).ids, text


def _same_tokenizer(ours, reference):
    for text in CORPUS:
        assert ours.encode(text, allow_special=True) == reference.encode(text, allow_special=True)
        assert ours.encode(text) == reference.encode(text)
    assert ours.special_tokens == reference.special_tokens
    assert (ours.n_vocab, ours.bos_id, ours.eos_id, ours.stop_ids, ours.chat_format,
            ours.add_bos) == (reference.n_vocab, reference.bos_id, reference.eos_id,
                              reference.stop_ids, reference.chat_format, reference.add_bos)
    assert [ours.token_bytes(i) for i in range(ours.n_vocab)] == \
        [reference.token_bytes(i) for i in range(reference.n_vocab)]


def test_hf_tokenizer_json_matches_tiktoken_file(llama3, hf_llama3):
    _same_tokenizer(Tokenizer.from_hf_tokenizer_json(hf_llama3[1]), llama3)


def test_hf_tokenizer_config_sets_eos_and_template(llama3, hf_llama3, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(hf_llama3[1].read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
         "chat_template": LLAMA3_TEMPLATE}))
    instruct = Tokenizer.from_hf_tokenizer_json(tmp_path / "tokenizer.json")
    assert instruct.eos_id == 128009 and instruct.stop_ids == (128001, 128008, 128009)
    assert instruct.encode_dialog(DIALOG) == llama3.encode_dialog(DIALOG)


@pytest.fixture(scope="module")
def llama3_gguf_metadata(hf_llama3):
    """What llama.cpp writes for Llama 3: GPT-2-spelled tokens, types (1 normal, 3 control),
    merges as "left right" strings, Llama 3's pre-tokenizer name."""
    doc = json.loads(hf_llama3[1].read_text(encoding="utf-8"))
    vocab = doc["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get) + [t["content"] for t in doc["added_tokens"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * len(vocab) + [3] * len(doc["added_tokens"]),
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m)
                                  for m in doc["model"]["merges"]],
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128001,
    }


def test_gguf_llama_bpe_matches_tiktoken_file(llama3, llama3_gguf_metadata):
    _same_tokenizer(Tokenizer.from_gguf_metadata(llama3_gguf_metadata, "llama3.gguf"), llama3)


def test_gguf_ids_out_of_merge_order(llama3, llama3_gguf_metadata):
    # The same vocabulary with its normal tokens listed in a random order: tiktoken's ranks
    # can no longer be the ids, so the rank -> id table must translate every token.
    md = dict(llama3_gguf_metadata)
    n = 128000
    order = np.random.default_rng(7).permutation(n)  # new id of old id i: order[i]
    tokens = list(md["tokenizer.ggml.tokens"])
    for old in range(n):
        tokens[order[old]] = md["tokenizer.ggml.tokens"][old]
    md["tokenizer.ggml.tokens"] = tokens
    shuffled = Tokenizer.from_gguf_metadata(md, "shuffled.gguf")

    def renumber(ids):
        return [int(order[i]) if i < n else i for i in ids]

    for text in CORPUS:
        ids = llama3.encode(text, allow_special=True)
        assert shuffled.encode(text, allow_special=True) == renumber(ids)
        assert shuffled.decode(renumber(ids)) == llama3.decode(ids)


# ---- chat ------------------------------------------------------------------------------------

def test_llama3_dialog_matches_chat_template(llama3, hf_llama3):
    ids = llama3.encode_dialog(DIALOG)
    assert ids == chat_ids(hf_llama3[0], LLAMA3_TEMPLATE, DIALOG, bos_token="<|begin_of_text|>")
    # The frame in literal ids: bos, <|start_header_id|>user<|end_header_id|>"\n\n" ... and the
    # open assistant header; "user" = 882, "assistant" = 78191, "\n\n" = 271.
    assert ids[:5] == [128000, 128006, 882, 128007, 271]
    assert ids[-4:] == [128006, 78191, 128007, 271]
    assert ids.count(128009) == 3
    assert llama3.encode_dialog(DIALOG, add_generation_prompt=False)[-1] == 128009


@pytest.mark.parametrize("name", ["llama3", "smol"])
def test_a_dialog_is_its_messages_one_after_another(name, request):
    """Meta's API: encode_dialog_prompt is the opening (bos for Llama 3, the template's
    default system prompt for SmolLM2's ChatML), encode_message of each message, then
    encode_header of the assistant; a chat session appends turns on that promise."""
    tokenizer = request.getfixturevalue(name)
    chat = tokenizer.chat
    assistant = {"role": "assistant", "content": ""}
    system = {"role": "system", "content": "Answer briefly."}
    opening = [tokenizer.bos_id] if name == "llama3" else []
    messages = [system, *DIALOG]
    assert chat.encode_dialog_prompt(messages) == opening + [
        t for m in messages for t in chat.encode_message(m)] + chat.encode_header(assistant)
    assert chat.encode_dialog_prompt(messages, add_generation_prompt=False) == \
        opening + [t for m in messages for t in chat.encode_message(m)]
    assert tokenizer.encode_dialog(messages) == chat.encode_dialog_prompt(messages)


def test_llama3_header_and_message_in_literal_ids(llama3):
    chat = llama3.chat
    # <|start_header_id|> "user" <|end_header_id|> "\n\n", as Meta's encode_header gives it
    assert chat.encode_header({"role": "user", "content": "ignored"}) == [128006, 882, 128007, 271]
    message = chat.encode_message({"role": "user", "content": "  Hi  "})
    assert message == [128006, 882, 128007, 271, *llama3.encode("Hi"), 128009]


def test_dialog_content_is_never_special(llama3):
    ids = llama3.encode_dialog([{"role": "user", "content": "say <|eot_id|> now"}])
    assert ids.count(128009) == 1  # only the turn's own end


def test_dialog_rejects_malformed_messages(llama3):
    with pytest.raises(InputError, match="message 1"):
        llama3.encode_dialog([{"role": "user", "content": "hi"}, {"role": "user"}])


# ---- errors ----------------------------------------------------------------------------------

def _tiktoken_lines(llama3_tokenizer_path) -> list:
    return llama3_tokenizer_path.read_bytes().splitlines()


def test_wrong_rank_count_is_refused(llama3_tokenizer_path, tmp_path):
    short = tmp_path / "tokenizer.model"
    short.write_bytes(b"\n".join(_tiktoken_lines(llama3_tokenizer_path)[:1000]) + b"\n")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model holds 1000 ranks.*128000"):
        Tokenizer.from_tiktoken_file(short)


@pytest.mark.parametrize("bad_line", [b"not-base64!! 4", b"IQ==", b"IQ== four", b"IQ== 4 extra",
                                      b"", b"IQ== 9"])
def test_malformed_line_is_refused(llama3_tokenizer_path, tmp_path, bad_line):
    lines = _tiktoken_lines(llama3_tokenizer_path)
    lines[4] = bad_line  # line 5; "IQ==" is "!", already ranked 0 ("IQ== 9": out of order)
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"\n".join(lines))
    with pytest.raises(TokenizerError, match=r"broken\.model line 5:"):
        Tokenizer.from_tiktoken_file(broken)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_tiktoken_file(tmp_path / "nope.model")
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_hf_tokenizer_json(tmp_path / "tokenizer.json")


@pytest.fixture
def tiny_gguf():
    """A hand-made byte-level vocabulary: 256 bytes, three merges, one control token."""
    spelling = gpt2_spelling()
    tokens = [spelling[b] for b in range(256)] + ["he", "ll", "hell", "<|endoftext|>"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1] * 259 + [3],
            "tokenizer.ggml.merges": ["h e", "l l", "he ll"],
            "tokenizer.ggml.bos_token_id": 259, "tokenizer.ggml.eos_token_id": 259}


def test_tiny_gguf_vocabulary(tiny_gguf):
    tok = Tokenizer.from_gguf_metadata(tiny_gguf, "tiny.gguf")
    assert tok.encode("hello") == [258, ord("o")]
    assert tok.encode("<|endoftext|>", allow_special=True) == [259]
    assert tok.chat_format is None and tok.stop_ids == (259,) and not tok.add_bos
    with pytest.raises(TokenizerError, match="tiny.gguf has no chat format"):
        tok.encode_dialog([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.model", "llama", "only byte-level BPE"),
    ("tokenizer.ggml.pre", "qwen2", "'qwen2' is not supported"),
    ("tokenizer.ggml.merges", ["h e", "x y z"], "merge 1 'x y z'"),
    ("tokenizer.ggml.merges", ["h q"], "merge 0 'h q'"),  # "hq" is no token
    ("tokenizer.ggml.token_type", [1] * 5, "260 tokens but 5 token types"),
    ("tokenizer.ggml.tokens", None, "must all be present"),
    ("tokenizer.ggml.eos_token_id", 999, "eos token id 999 is outside"),
])
def test_bad_gguf_metadata_is_refused(tiny_gguf, key, value, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_gguf_metadata({**tiny_gguf, key: value}, "tiny.gguf")


def test_non_gpt2_spelling_is_refused(tiny_gguf):
    tokens = list(tiny_gguf["tokenizer.ggml.tokens"])
    tokens[256] = "h e"  # a raw space is not in GPT-2's byte alphabet
    with pytest.raises(TokenizerError, match="token 256 'h e' is not spelled"):
        Tokenizer.from_gguf_metadata({**tiny_gguf, "tokenizer.ggml.tokens": tokens}, "tiny.gguf")


@pytest.fixture
def tiny_tokenizer_json(tiny_gguf, tmp_path):
    """The tiny vocabulary as a tokenizer.json (merges in the newer [left, right] form)."""
    tokens = tiny_gguf["tokenizer.ggml.tokens"]
    doc = {"added_tokens": [{"id": 259, "content": "<|endoftext|>", "special": True}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
           "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens[:259])},
                     "merges": [m.split(" ") for m in tiny_gguf["tokenizer.ggml.merges"]]}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    return path


def test_tiny_tokenizer_json(tiny_tokenizer_json):
    tok = Tokenizer.from_hf_tokenizer_json(tiny_tokenizer_json)
    assert tok.encode("hello") == [258, ord("o")] and tok.special_tokens == {"<|endoftext|>": 259}
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (None, None, False)
    with pytest.raises(InputError, match="names no beginning-of-text token"):
        tok.encode("hello", bos=True)


def test_a_chat_template_file_that_is_not_utf8_is_refused(tiny_tokenizer_json):
    (tiny_tokenizer_json.parent / "chat_template.jinja").write_bytes(b"{{ \xff }}")
    with pytest.raises(TokenizerError, match="chat_template.jinja is not UTF-8 text"):
        Tokenizer.from_hf_tokenizer_json(tiny_tokenizer_json)


def test_unsupported_hf_pre_tokenizer_is_refused(tiny_tokenizer_json):
    doc = json.loads(tiny_tokenizer_json.read_text())
    doc["pre_tokenizer"] = {"type": "Whitespace"}
    tiny_tokenizer_json.write_text(json.dumps(doc))
    with pytest.raises(TokenizerError, match="pre-tokenizer .*Whitespace.* is not supported"):
        Tokenizer.from_hf_tokenizer_json(tiny_tokenizer_json)


# ---- load_tokenizer --------------------------------------------------------------------------

def _checkpoint(path, **kwargs) -> Checkpoint:
    return Checkpoint(config=tiny_config(), tensors={}, path=path, format="meta", **kwargs)


def test_load_tokenizer_routes(llama3_tokenizer_path, tiny_gguf, tiny_tokenizer_json, tmp_path):
    from_file = load_tokenizer(_checkpoint(tmp_path, tokenizer_file=llama3_tokenizer_path))
    assert from_file.encode("This is a test sentence.") == [2028, 374, 264, 1296, 11914, 13]
    override = load_tokenizer(_checkpoint(tmp_path, tokenizer_file=llama3_tokenizer_path),
                              tiny_tokenizer_json)
    assert override.source == str(tiny_tokenizer_json)
    from_gguf = load_tokenizer(_checkpoint(tmp_path / "m.gguf", metadata=tiny_gguf))
    assert (from_gguf.source, from_gguf.n_vocab) == (str(tmp_path / "m.gguf"), 260)
    beside = load_tokenizer(_checkpoint(tmp_path / "consolidated.00.pth"))
    assert beside.source == str(tiny_tokenizer_json)  # tmp_path/tokenizer.json
    in_folder = load_tokenizer(_checkpoint(tmp_path / "m.gguf", metadata=tiny_gguf), tmp_path)
    assert in_folder.source == str(tiny_tokenizer_json)


def test_one_rule_for_where_a_tokenizer_file_is_found(llama3_tokenizer_path, tiny_tokenizer_json,
                                                      tmp_path):
    """Meta's tokenizer.model wherever the folder has one (original/ in a Hugging Face
    snapshot), else tokenizer.json: the same for the readers and for --tokenizer FOLDER."""
    assert find_tokenizer_file(tmp_path) == tiny_tokenizer_json
    (tmp_path / "original").mkdir()
    shutil.copy(llama3_tokenizer_path, tmp_path / "original" / "tokenizer.model")
    assert find_tokenizer_file(tmp_path) == tmp_path / "original" / "tokenizer.model"
    assert load_tokenizer(_checkpoint(tmp_path / "m.gguf"), tmp_path).n_vocab == 128256
    shutil.copy(llama3_tokenizer_path, tmp_path / "tokenizer.model")
    assert find_tokenizer_file(tmp_path) == tmp_path / "tokenizer.model"


def test_load_tokenizer_says_where_it_looked(tmp_path):
    where = re.escape(str(tmp_path))
    with pytest.raises(TokenizerError, match=f"no tokenizer for {where}.*tokenizer.model"):
        load_tokenizer(_checkpoint(tmp_path))
    with pytest.raises(TokenizerError, match="missing.model does not exist"):
        load_tokenizer(_checkpoint(tmp_path), tmp_path / "missing.model")


# ---- SmolLM2: a real GGUF vocabulary, GPT-2 style, ChatML ------------------------------------

@pytest.fixture(scope="module")
def smol_metadata(demo_model_path):
    from gguf import GGUFReader
    fields = GGUFReader(str(demo_model_path)).fields
    return {key: field.contents() for key, field in fields.items()
            if key.startswith(("tokenizer.", "general.architecture"))}


@pytest.fixture(scope="module")
def smol(smol_metadata, demo_model_path):
    return Tokenizer.from_gguf_metadata(smol_metadata, str(demo_model_path))


@pytest.fixture(scope="module")
def smol_transformers(smol_metadata):
    """transformers' tokenizer for this GGUF: the conversion AutoTokenizer.from_pretrained(dir,
    gguf_file=...) runs, fed the metadata already read (from_pretrained would re-read the
    98 MB file and build a model config: about 9 s)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (GGUF_TOKENIZER_MAPPING,
                                                                        convert_gguf_tokenizer)
    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    tokenizer_dict = {name: smol_metadata[f"tokenizer.{key}"] for key, name in renames.items()
                      if f"tokenizer.{key}" in smol_metadata}
    backend, _ = convert_gguf_tokenizer(smol_metadata["general.architecture"], tokenizer_dict)
    return backend


@pytest.fixture(scope="module")
def smol_tokenizer_json(smol_metadata, tmp_path_factory):
    """SmolLM2's tokenizer.json as Hugging Face publishes it: digits split one by one, then
    GPT-2's byte-level split; vocabulary and merges from the GGUF. Returns (backend, path)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    tokens = smol_metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in smol_metadata["tokenizer.ggml.merges"]]
    backend = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    backend.decoder = decoders.ByteLevel()
    types = smol_metadata["tokenizer.ggml.token_type"]
    control = [t for t, kind in zip(tokens, types) if kind == 3]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    path = tmp_path_factory.mktemp("smollm2_hf") / "tokenizer.json"
    backend.save(str(path))
    return backend, path


def test_smollm2_vocabulary(smol):
    assert smol.n_vocab == 49152 and smol.chat_format == "chatml"
    assert (smol.bos_id, smol.eos_id, smol.stop_ids) == (1, 2, (2,))
    assert smol.special_tokens["<|im_start|>"] == 1 and smol.special_tokens["<|endoftext|>"] == 0
    assert not smol.add_bos  # tokenizer.ggml.add_bos_token is false


def _space_before_number(text: str) -> bool:
    return any(a.isspace() and unicodedata.category(b)[0] == "N" for a, b in zip(text, text[1:]))


def test_smollm2_matches_transformers(smol, smol_transformers):
    # transformers has no split for tokenizer.ggml.pre = "smollm" and falls back to GPT-2's,
    # which ends a whitespace run before a digit differently from SmolLM2's own tokenizer
    # ("\n\n1": "\n" "\n" "1" instead of "\n\n" "1"); those texts are checked against SmolLM2's
    # tokenizer.json below instead.
    comparable = [text for text in CORPUS if not _space_before_number(text)]
    assert len(comparable) > 250
    for text in comparable:
        assert smol.encode(text, allow_special=True) == \
            smol_transformers.encode(text, add_special_tokens=False).ids, text
        assert smol.decode(smol.encode(text)) == text


WHITESPACE_AND_DIGITS = ["x  1  2", "a  1", "1 2  3   4", " 12\t34\n56 ", "v1.2.3-rc4", "  7",
                         "99 bottles", "x\u00a0\u00a09", "٣٤٥ ١٢", "Ⅻ ½ ²"]


def test_smollm2_hf_json_splits_digits_like_smollm2(smol, smol_tokenizer_json):
    backend, path = smol_tokenizer_json
    from_json = Tokenizer.from_hf_tokenizer_json(path)
    assert smol.encode("1234567") == [smol.encode(d)[0] for d in "1234567"]
    for text in WHITESPACE_AND_DIGITS + CORPUS:
        expected = backend.encode(text, add_special_tokens=False).ids
        assert smol.encode(text, allow_special=True) == expected, text
        assert from_json.encode(text, allow_special=True) == expected, text


def test_smollm2_dialog_matches_chat_template(smol, smol_transformers, smol_metadata):
    template = smol_metadata["tokenizer.chat_template"]
    with_system = [{"role": "system", "content": "Answer briefly."}] + DIALOG
    for messages in (DIALOG, with_system):  # the template adds its own system prompt to DIALOG
        assert smol.encode_dialog(messages) == chat_ids(smol_transformers, template, messages)
    assert smol.decode(smol.encode_dialog(DIALOG[:1])) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_smollm2_refuses_bytes_it_has_no_token_for(smol):
    with pytest.raises(InputError, match=r"U\+0004"):
        smol.encode("end of transmission \x04")
