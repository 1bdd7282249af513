"""ChatSession and `run.py chat`: multi-turn chat that keeps the KV cache across turns.

The central check: every logit the session computes from its cache equals the logit a
fresh forward pass over the whole conversation gives, after finished, cut-short and
interrupted replies, /reset, and dropping old turns."""

import io
import subprocess
import sys

import numpy as np
import pytest

import llama3_np
from llama3_np.chat import ChatSession, reply_closing_tokens
from llama3_np.errors import InputError
from llama3_np.llama import Llama
from llama3_np.model import NoTrace
from llama3_np.tokenizer import Tokenizer
from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

EOT = 128009  # <|eot_id|>
BOS = 128000


@pytest.fixture(scope="module")
def llama3_tokenizer(llama3_tokenizer_path):
    return Tokenizer.from_tiktoken_file(llama3_tokenizer_path)


def tiny_llama(tokenizer, **overrides) -> Llama:
    config = tiny_config(**overrides)
    return Llama(config, random_weights(config, seed=5), tokenizer)


@pytest.fixture(scope="module")
def tiny(llama3_tokenizer):
    return tiny_llama(llama3_tokenizer)


class CtrlC(NoTrace):
    """A trace hook that presses Ctrl-C once, at step `at` of forward call number `call`."""

    def __init__(self, call: int, at: str):
        self.calls, self.call, self.at = 0, call, at

    def __call__(self, name, tensor):
        self.calls += name == "tokens"
        if self.calls == self.call and name == self.at:
            raise KeyboardInterrupt


def ask_and_record(session, text: str):
    """Ask, recording each forward call: (reply, [(tokens fed, last logits row), ...])."""
    with session.model.trace("logits") as t:
        reply = session.ask(text)
    return reply, [(step["tokens"].tolist(), step["logits"][-1]) for step in t.steps]


def assert_matches_recomputation(session, steps, atol) -> int:
    """Each recorded forward call's logits equal those of one fresh pass over the history;
    returns the position the turn's first call started at.

    The calls fed consecutive tokens of the history, ending where the cache now ends.
    The fresh pass runs on a cache of its own, not the session's."""
    fed = [token for tokens, _ in steps for token in tokens]
    start = session.cached - len(fed)
    assert session.tokens[start:session.cached] == fed
    fresh = session.model.forward(session.tokens[:session.cached], 0)
    position = start
    for tokens, logits in steps:
        position += len(tokens)
        np.testing.assert_allclose(logits, fresh[position - 1], rtol=0, atol=atol)
    return start


# Tiny float32 model: batched (prefill) and one-row (decode) matmuls round differently;
# measured <= 3e-6 on logits up to ~6. A wrong history or position moves them by O(1).
TINY_ATOL = 1e-4


def test_reply_closing_tokens(llama3_tokenizer):
    assert reply_closing_tokens(llama3_tokenizer) == [EOT]


def test_cache_continued_turns_equal_recomputation(tiny):
    session = ChatSession(tiny, system="You are terse.", max_tokens=5)
    assert session.tokens[0] == BOS and session.tokens[-1] == EOT  # BOS + system turn
    for turn, text in enumerate(["Hello there", "What now?", "Tell me more."]):
        cached_before = session.cached
        unfed = session.tokens[cached_before:]
        _, steps = ask_and_record(session, text)
        # The turn starts where the cache ended: the history is never fed again, only its
        # unfed tail and the new turn. The tail is the previous reply's <|eot_id|>, after
        # the reply's last token when max_tokens cut it (that one is sampled, never fed).
        assert assert_matches_recomputation(session, steps, TINY_ATOL) == cached_before
        assert steps[0][0][:len(unfed)] == unfed
        if turn > 0:
            assert cached_before > 0 and unfed[-1] == EOT and len(unfed) <= 2
        assert session.tokens[-1] == EOT and session.cached <= len(session.tokens)
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 3


def test_an_interrupted_reply_is_kept_and_closed(tiny):
    session = ChatSession(tiny, max_tokens=20)
    session.ask("First question")
    # In the third forward call, mid-pass: layer 0 wrote to the cache.
    no_trace, tiny.model.trace = tiny.model.trace, CtrlC(call=3, at="layers.1.attention.q")
    try:
        with pytest.raises(KeyboardInterrupt):
            session.ask("Second question")
    finally:
        tiny.model.trace = no_trace
    # Prefill, then two decode steps: the reply holds the two tokens sampled so far, the
    # second of which was being fed when Ctrl-C came, so the cache stops after the first.
    reply_and_close = session.tokens[-3:]
    assert reply_and_close[-1] == EOT
    assert session.messages[-1] == {"role": "assistant",
                                    "content": tiny.tokenizer.decode(reply_and_close[:2])}
    assert session.cached == len(session.tokens) - 2  # the second token and <|eot_id|>
    _, steps = ask_and_record(session, "Third question")
    assert steps[0][0][:2] == reply_and_close[1:]  # the unfed tail goes first
    assert_matches_recomputation(session, steps, TINY_ATOL)


def test_closing_the_stream_early_keeps_the_partial_reply(tiny):
    session = ChatSession(tiny, max_tokens=20)
    pieces = session.send("Say something long")
    first = next(pieces)
    with pytest.raises(InputError, match="previous reply is still being generated"):
        session.send("Interleaved")
    pieces.close()  # what `run.py chat` does on Ctrl-C between two pieces
    assert session.messages[-1]["role"] == "assistant"
    assert session.messages[-1]["content"].startswith(first)
    assert session.tokens[-1] == EOT
    _, steps = ask_and_record(session, "Go on")
    assert_matches_recomputation(session, steps, TINY_ATOL)


def test_cli_keeps_chatting_after_ctrl_c(tiny, monkeypatch, capsys):
    from llama3_np.cli.chat import converse

    session = ChatSession(tiny, max_tokens=8)
    no_trace, tiny.model.trace = tiny.model.trace, CtrlC(call=2, at="layers.0.attention.q")
    monkeypatch.setattr(sys, "stdin", io.StringIO("First\nSecond\n/exit\nThird\n"))
    try:
        converse(session)
    finally:
        tiny.model.trace = no_trace
    out, err = capsys.readouterr()
    assert err.count("[interrupted: the reply so far stays in the conversation]") == 1
    assert out.count("\n") == 2  # each reply, the cut one too, ends its line
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["First", "Second"]
    # The first reply was cut after its first token (sampled from the prefill, being fed
    # when Ctrl-C came): that token is the reply, then <|eot_id|> closes it.
    first_prompt = tiny.tokenizer.encode_dialog(session.messages[:1])
    cut_reply = session.tokens[len(first_prompt):len(first_prompt) + 2]
    assert cut_reply[1] == EOT
    assert session.messages[1] == {"role": "assistant",
                                   "content": tiny.tokenizer.decode(cut_reply[:1])}


def test_reset_starts_a_fresh_conversation(tiny):
    session = ChatSession(tiny, system="Be kind.", max_tokens=4)
    fresh_reply = ChatSession(tiny, system="Be kind.", max_tokens=4).ask("Hi")
    session.ask("Something else first")
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be kind."}]
    assert session.tokens == tiny.tokenizer.encode_dialog(session.messages, False)
    assert session.cached == 0
    assert session.ask("Hi") == fresh_reply


def test_other_uses_of_the_model_leave_the_conversation_alone(tiny):
    session = ChatSession(tiny, max_tokens=4)
    session.ask("One")
    tiny.generate("Something unrelated", max_tokens=3)  # runs on the model's own cache
    _, steps = ask_and_record(session, "Two")
    assert_matches_recomputation(session, steps, TINY_ATOL)


def test_a_full_context_is_refused_clearly_and_changes_nothing(llama3_tokenizer):
    small = tiny_llama(llama3_tokenizer, max_seq_len=48)
    session = ChatSession(small, max_tokens=4)
    session.ask("Hi")
    messages, tokens = list(session.messages), list(session.tokens)
    with pytest.raises(InputError, match="fills the 48-token context window .*--drop-oldest"):
        session.send("word " * 40)
    assert session.messages == messages and session.tokens == tokens
    session.ask("Short")  # the session still works


def test_a_reply_that_reaches_the_context_end_is_cut_and_said(llama3_tokenizer):
    small = tiny_llama(llama3_tokenizer, max_seq_len=40)
    session = ChatSession(small, max_tokens=100)
    session.ask("Tell me everything")  # 13 prompt tokens, then the reply fills the rest
    assert session.last_stats.stopped_by == "context full"
    assert session.cached == 40 - 1  # the last reply token is sampled but never fed
    with pytest.raises(InputError, match="fills the 40-token context window"):
        session.send("More")


def test_drop_oldest_forgets_old_turns_and_reencodes_the_rest(llama3_tokenizer):
    small = tiny_llama(llama3_tokenizer, max_seq_len=96)
    session = ChatSession(small, system="Sys.", max_tokens=6, drop_oldest=True)
    questions = [f"Question number {i} is about topic {i}" for i in range(6)]
    for text in questions[:-1]:
        session.ask(text)
    assert session.dropped_exchanges >= 1
    _, steps = ask_and_record(session, questions[-1])
    assert session.messages[0] == {"role": "system", "content": "Sys."}
    users = [m["content"] for m in session.messages if m["role"] == "user"]
    assert users == questions[-len(users):] and len(users) < len(questions)
    assert len(session.tokens) <= small.config.max_seq_len
    assert_matches_recomputation(session, steps, TINY_ATOL)


def test_options_are_checked(tiny):
    with pytest.raises(InputError, match="max-tokens must be a positive integer"):
        ChatSession(tiny, max_tokens=0)
    with pytest.raises(InputError, match="temperature"):
        ChatSession(tiny, temperature=-1)


# ---- the demo model: a real Instruct model in ChatML ----------------------------------------

@pytest.fixture(scope="module")
def demo(demo_model_path):
    return llama3_np.load(demo_model_path)


def test_demo_conversation_equals_the_dialog_encoded_from_scratch(demo):
    assert reply_closing_tokens(demo.tokenizer) == [2, 198]  # <|im_end|> "\n"
    session = ChatSession(demo, max_tokens=16)
    first = session.ask("What is the capital of France?")
    assert "Paris" in first
    reply, steps = ask_and_record(session, "And of Italy?")
    assert "Rome" in reply
    # The cached conversation is token for token the whole dialog re-encoded ...
    assert session.tokens == demo.tokenizer.encode_dialog(session.messages, False)
    # ... and the logits that chose the second reply are those of one fresh pass over
    # that dialog. Measured differences <= 5e-5 on logits up to ~40: float32 rounding of
    # one-row (decode) against many-row (prefill) matmuls; a wrong history moves them O(1).
    prompt = demo.tokenizer.encode_dialog(session.messages[:-1], add_generation_prompt=True)
    fresh = demo.forward(prompt, 0, last_only=True)[-1]
    assert len(steps[0][0]) < len(prompt) // 2  # the first turn was not fed again
    np.testing.assert_allclose(steps[0][1], fresh, rtol=0, atol=1e-3)
    assert_matches_recomputation(session, steps, atol=1e-3)


def run_chat(*args, stdin: str = ""):
    return subprocess.run([sys.executable, str(REPO / "run.py"), "chat", *map(str, args)],
                          input=stdin, capture_output=True, text=True, timeout=300)


def test_cli_chat_through_stdin_with_reset_and_exit(demo_model_path):
    question = "What is the capital of France?"
    result = run_chat("--model", demo_model_path, "--max-tokens", 24,
                      stdin=f"{question}\n/reset\n{question}\n/exit\nnever read\n")
    assert result.returncode == 0, result.stderr
    replies = result.stdout.splitlines()
    assert len(replies) == 2 and "Paris" in replies[0]
    assert replies[1] == replies[0]  # after /reset the same question gets the same answer
    assert "[new conversation]" in result.stderr


def test_cli_chat_ends_at_end_of_input(demo_model_path):
    result = run_chat("--model", demo_model_path, stdin="")
    assert result.returncode == 0 and result.stdout == ""


def test_cli_chat_one_shot_prints_only_the_reply(demo_model_path):
    result = run_chat("--model", demo_model_path, "--max-tokens", 24,
                      "--message", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "Paris" in result.stdout
    assert not result.stdout.startswith(">")
