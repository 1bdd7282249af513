"""Chat formats, with Meta's API (llama-models' ChatFormat): encode_header(message),
encode_message(message), encode_dialog_prompt(dialog).

  llama3: <|begin_of_text|> then per message <|start_header_id|>role<|end_header_id|>
          "\n\n" content.strip() <|eot_id|>
  chatml: per message <|im_start|>role "\n" content <|im_end|> "\n", after the template's
          default system prompt when the dialog has none

A dialog is its messages' encodings one after another, so a conversation grows by one
message at a time (chat.py appends a user message and the assistant's header). The text
between two special tokens is encoded as one piece, as the chat templates render it;
message text is never read as special tokens.
"""

import re
from typing import Optional

from ..errors import InputError

# Tokens that carry each chat format; a vocabulary has a chat format only if it has all of them.
CHAT_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}
CHAT_STOP_TOKENS = {
    "chatml": ("<|im_end|>",),
    "llama3": ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
}

# The message whose header a reply follows (its content is not read by encode_header).
ASSISTANT = {"role": "assistant", "content": ""}


class Llama3ChatFormat:
    name = "llama3"
    default_system_prompt = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        specials = tokenizer.special_tokens
        self.start, self.end, self.eot = (specials[n] for n in CHAT_TOKENS["llama3"])

    def encode_header(self, message: dict) -> list:
        """<|start_header_id|>role<|end_header_id|> "\n\n": where the message's text begins."""
        role = check_message(message)["role"]
        return [self.start, *self.tokenizer.encode(role), self.end, *self.tokenizer.encode("\n\n")]

    def encode_message(self, message: dict) -> list:
        """The header, the stripped text, <|eot_id|>. Meta encodes the header's "\n\n" apart
        from the text; the published template (and so this) renders them as one piece, which
        is the same tokens for Llama 3's split pattern."""
        role, text = check_message(message)["role"], message["content"].strip()
        return [self.start, *self.tokenizer.encode(role), self.end,
                *self.tokenizer.encode("\n\n" + text), self.eot]

    def encode_dialog_prompt(self, dialog, add_generation_prompt: bool = True) -> list:
        """<|begin_of_text|>, every message, then (to be answered) the assistant's header."""
        ids = [self.tokenizer.need_bos()]
        for message in check_dialog(dialog):
            ids += self.encode_message(message)
        return ids + (self.encode_header(ASSISTANT) if add_generation_prompt else [])


class ChatMLFormat:
    name = "chatml"

    def __init__(self, tokenizer, template: Optional[str]):
        self.tokenizer = tokenizer
        self.im_start, self.im_end = (tokenizer.special_tokens[n] for n in CHAT_TOKENS["chatml"])
        self.default_system_prompt = _default_system_prompt(template)

    def encode_header(self, message: dict) -> list:
        """<|im_start|>role "\n"."""
        return [self.im_start, *self.tokenizer.encode(check_message(message)["role"] + "\n")]

    def encode_message(self, message: dict) -> list:
        """<|im_start|>role "\n" text <|im_end|> "\n"."""
        m = check_message(message)
        return [self.im_start, *self.tokenizer.encode(f"{m['role']}\n{m['content']}"),
                self.im_end, *self.tokenizer.encode("\n")]

    def encode_dialog_prompt(self, dialog, add_generation_prompt: bool = True) -> list:
        """The template's default system prompt when the dialog starts without one, every
        message, then (to be answered) the assistant's header."""
        dialog = check_dialog(dialog)
        if self.default_system_prompt is not None and dialog and dialog[0]["role"] != "system":
            dialog = [{"role": "system", "content": self.default_system_prompt}, *dialog]
        ids = [token for message in dialog for token in self.encode_message(message)]
        return ids + (self.encode_header(ASSISTANT) if add_generation_prompt else [])


def chat_format(tokenizer, template: Optional[str]):
    """The chat format the template names, else the one the special tokens support, else None."""
    usable = [f for f, names in CHAT_TOKENS.items()
              if all(n in tokenizer.special_tokens for n in names)]
    named = [f for f in usable if template and CHAT_TOKENS[f][0] in template]
    name = (named or usable or [None])[0]
    if name == "llama3":
        return Llama3ChatFormat(tokenizer)
    return ChatMLFormat(tokenizer, template) if name == "chatml" else None


# A ChatML template that opens with a fixed system message when the dialog brings none writes
# it as one literal, '<|im_start|>system\n...<|im_end|>\n' (SmolLM2's does).
_DEFAULT_SYSTEM = re.compile(r"'<\|im_start\|>system(?:\n|\\n)([^'{}]*)<\|im_end\|>(?:\n|\\n)'")


def _default_system_prompt(template: Optional[str]) -> Optional[str]:
    if not template or "!= 'system'" not in template:
        return None
    found = _DEFAULT_SYSTEM.search(template)
    return found.group(1).replace("\\n", "\n") if found else None


def check_message(message, index: Optional[int] = None) -> dict:
    """The message itself if it is a dict with string 'role' and 'content'."""
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)):
        which = "chat message" if index is None else f"chat message {index}"
        raise InputError(f"{which} must be a dict with string 'role' and 'content', "
                         f"got {message!r}"[:200])
    return message


def check_dialog(dialog) -> list:
    return [check_message(m, i) for i, m in enumerate(dialog)]
