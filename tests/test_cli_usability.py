"""What a newcomer trips over: a prompt piped in with its newline, --help that reads as a
list, "1 tokens", spaces that vanish from the logit-lens picture."""

import io
import subprocess
import sys

import numpy as np
import pytest

from llama3_np import cli
from llama3_np.cli import COMMANDS, build_parser
from llama3_np.cli.common import read_prompt
from llama3_np.trace import token_label
from llama3_np.wording import count
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    write_llama_gguf)
from tests.conftest import REPO
from tests.tiny import random_weights

SHORT = byte_level_model_config(max_seq_len=16)


@pytest.mark.parametrize("piped, prompt", [
    (b"The capital of France is\n", "The capital of France is"),
    (b"two lines\n\n", "two lines\n"),  # only one newline goes, as with $(...)
    (b"windows\r\n", "windows"),
    (b"no newline", "no newline"),
])
def test_a_prompt_from_stdin_loses_one_trailing_newline(monkeypatch, piped, prompt):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
    assert read_prompt("-") == prompt
    assert read_prompt("kept as typed\n") == "kept as typed\n"  # an argument is not touched


def test_echo_into_inspect_predicts_paris(demo_model_path):
    """The issue's case: the newline was a token, and the top guess became 'A'."""
    result = subprocess.run([sys.executable, str(REPO / "run.py"), "inspect", "-", "--step",
                             "logits", "--model", str(demo_model_path)],
                            input=b"The capital of France is\n", capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert "' Paris'" in lines[lines.index("top 5 next tokens:") + 1]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_fits_a_terminal_and_lists_the_commands_one_per_line(command):
    text = build_parser(command).format_help()
    assert max(map(len, text.splitlines())) <= 100, command
    listed = text.split("commands (run.py COMMAND --help for each):\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert "(" not in text.splitlines()[-1][:12]  # no run-on "complete (..., chat (..."


def test_counts_agree_with_their_nouns():
    assert count(1, "token") == "1 token"
    assert count(0, "token") == "0 tokens"
    assert count(2, "prompt token") == "2 prompt tokens"


def test_a_one_token_prompt_is_one_token(tmp_path, capsys):
    model = write_llama_gguf(tmp_path / "short.gguf", SHORT, random_weights(SHORT, seed=1),
                             metadata=byte_level_tokenizer_metadata())
    assert cli.main(["--model", str(model), "--max-tokens", "100", ""]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("note: --max-tokens 100 capped to 15: the prompt's 1 token leaves 15 of "
                      "the 16-token context")


def test_spaces_are_visible_in_the_logit_lens_picture(demo_model_path):
    pytest.importorskip("matplotlib")
    from llama3_np.checkpoint.detect import read_checkpoint
    from llama3_np.plots import logit_lens_figure
    from llama3_np.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(read_checkpoint(demo_model_path))  # no weights decoded
    (the,), (space,) = tokenizer.encode(" the", bos=False), tokenizer.encode(" ", bos=False)
    assert token_label(tokenizer, the, visible_spaces=True) == "\u2423the"
    assert token_label(tokenizer, the) == " the"  # the quoted text output keeps the space
    figure = logit_lens_figure(np.array([[the, space]]), np.array([[0.5, 0.5]]),
                               [token_label(tokenizer, the, visible_spaces=True), "b"], tokenizer)
    assert [t.get_text() for t in figure.axes[0].texts] == ["\u2423the", "\u2423"]
