"""Perplexity with a sliding window, `run.py ppl`, and the progress bar it draws."""

import io
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import llama3_np
from llama3_np.errors import InputError
from llama3_np.llama import Llama
from llama3_np.perplexity import log_probs, perplexity, text_tokens, windows
from llama3_np.progress import ProgressBar
from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

NATURAL_TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in "
                "Paris, France. It is named after the engineer Gustave Eiffel, whose company "
                "designed and built the tower.")


# ---- the window plan ------------------------------------------------------------------------

@pytest.mark.parametrize("n, ctx, stride", [(2, 8, 4), (10, 4, 2), (10, 4, 3), (100, 16, 8),
                                            (100, 16, 1), (17, 16, 8), (50, 64, 32)])
def test_windows_score_every_position_but_the_first_once(n, ctx, stride):
    plan = windows(n, ctx, stride)
    scored = [t for w in plan for t in range(w.first_scored, w.end)]
    assert scored == list(range(1, n))
    for w in plan:
        assert w.end - w.begin <= ctx and w.begin % stride == 0
        if w.begin > 0:  # past the first window a target sees >= ctx - stride tokens before it
            assert w.first_scored - w.begin >= ctx - stride


def test_non_overlapping_windows_skip_each_windows_first_token():
    # stride == ctx: a window's first token has nothing before it in the window (as in HF).
    plan = windows(10, 4, 4)
    assert [t for w in plan for t in range(w.first_scored, w.end)] == [1, 2, 3, 5, 6, 7, 9]


# ---- log-probabilities and the score --------------------------------------------------------

def test_log_probs_are_stable_and_exact():
    rng = np.random.default_rng(0)
    logits = (10 * rng.standard_normal((5, 1000))).astype(np.float32)
    logits[0, 3] = 3e38  # near float32's max: a naive exp overflows
    logits[1] -= 1e4  # all very negative: a naive exp underflows to 0
    targets = np.array([3, 7, 11, 13, 17])
    wide = logits.astype(np.float64)
    expected = wide[np.arange(5), targets] - (
        wide.max(1) + np.log(np.exp(wide - wide.max(1, keepdims=True)).sum(1)))
    got = log_probs(logits, targets)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    # float32 rounding of logits around 1e4 is ~1e-3 absolute; elsewhere ~1e-6 of the scale.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=2e-3)
    assert got[0] == 0.0  # the one dominant logit has probability 1


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config()
    return Llama(config, random_weights(config, seed=3), tokenizer=None)


def reference_nll(model, tokens, ctx, stride) -> float:
    """Mean -log p in float64, each target predicted from the context HF's rule gives it:
    windows start at multiples of stride, and a target belongs to the first window that
    reaches it, i.e. the one starting at max(0, (t - ctx) // stride + 1) * stride."""
    nll = []
    for t in range(1, len(tokens)):
        begin = max(0, (t - ctx) // stride + 1) * stride  # < t when stride < ctx
        logits = model.forward(tokens[begin:t], 0, last_only=True)[-1].astype(np.float64)
        log_norm = logits.max() + np.log(np.exp(logits - logits.max()).sum())
        nll.append(log_norm - logits[tokens[t]])
    return float(np.mean(nll))


@pytest.mark.parametrize("chunk", [512, 3])  # a window in one chunk, or in many
@pytest.mark.parametrize("ctx, stride", [(64, 32), (16, 8), (16, 5)])
def test_perplexity_matches_a_token_by_token_reference(tiny_model, ctx, stride, chunk,
                                                       monkeypatch):
    monkeypatch.setattr("llama3_np.model.PREFILL_CHUNK", chunk)
    tokens = np.random.default_rng(1).integers(0, 128000, size=41).tolist()
    result = perplexity(tiny_model, tokens, ctx=ctx, stride=stride)
    assert result.tokens == 40
    # float32 logits from batched vs one-at-a-time forwards differ by ~1e-6 relative.
    assert result.nll == pytest.approx(reference_nll(tiny_model, tokens, ctx, stride), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(result.nll), rel=1e-12)


def test_bad_windows_and_short_texts_are_refused(tiny_model):
    with pytest.raises(InputError, match="ctx must be an integer from 2"):
        perplexity(tiny_model, [1, 2, 3], ctx=1)
    with pytest.raises(InputError, match="ctx must be an integer from 2 to the model's "
                                         "context window \\(512\\)"):
        perplexity(tiny_model, [1, 2, 3], ctx=513)
    with pytest.raises(InputError, match="stride must be an integer from 1 to ctx"):
        perplexity(tiny_model, [1, 2, 3], ctx=8, stride=9)
    with pytest.raises(InputError, match="at least 2 tokens"):
        perplexity(tiny_model, [1], ctx=8)


def test_perplexity_reports_progress_per_window(tiny_model):
    calls = []
    perplexity(tiny_model, list(range(1, 30)), ctx=8, stride=4,
               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 7) for i in range(1, 8)]


# ---- the demo model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(demo_model_path):
    return llama3_np.load(demo_model_path, dtype="f32")


def test_first_text_token_is_conditioned_on_bos(llama3_tokenizer_path):
    from llama3_np.tokenizer import Tokenizer

    llama3 = Tokenizer.from_tiktoken_file(llama3_tokenizer_path)
    assert text_tokens(llama3, "Hello")[0] == 128000


def test_repeated_text_is_far_less_surprising_than_random_tokens(demo):
    repeated = text_tokens(demo.tokenizer, "The quick brown fox jumps over the lazy dog. " * 3)
    rng = np.random.default_rng(0)
    random_ids = rng.integers(0, demo.config.vocab_size, size=len(repeated)).tolist()
    copied = perplexity(demo, repeated, ctx=32)
    noise = perplexity(demo, random_ids, ctx=32)
    # Measured: ~7.6 for the text said three times (its first saying is new), ~3e6 for noise.
    assert copied.ppl < 15
    assert noise.ppl > 1000 * copied.ppl


@pytest.fixture(scope="module")
def natural(demo):
    """The natural text's tokens and its f32 perplexity in one 64-token window."""
    tokens = text_tokens(demo.tokenizer, NATURAL_TEXT)
    return tokens, perplexity(demo, tokens, ctx=64)


def test_precisions_give_nearly_the_same_perplexity(natural, demo_model_path):
    tokens, f32 = natural
    assert 3 < f32.ppl < 30  # sensible English under a trained model (measured ~11)
    for dtype in ("bf16", "q8"):
        low = perplexity(llama3_np.load(demo_model_path, dtype=dtype), tokens, ctx=64)
        # Measured 0.3% (bf16) and 0.4% (q8): weights rounded to 2^-9 or 1/254 of their
        # block's max move the logits slightly; a broken conversion moves ppl by far more.
        assert low.ppl == pytest.approx(f32.ppl, rel=0.02), dtype


def run_ppl(*args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "run.py"), "ppl", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_cli_ppl_prints_the_figures(tmp_path, natural, demo_model_path):
    text = tmp_path / "text.txt"
    text.write_text(NATURAL_TEXT)
    result = run_ppl(text, "--model", demo_model_path, "--ctx", 64, "--progress")
    assert result.returncode == 0, result.stderr
    figures = dict(re.findall(r"^(tokens scored|nll|perplexity) +([\d.,]+)", result.stdout, re.M))
    tokens, expected = natural
    assert int(figures["tokens scored"].replace(",", "")) == expected.tokens == len(tokens) - 1
    assert float(figures["nll"]) == pytest.approx(expected.nll, abs=1e-6)  # 6 decimals printed
    assert float(figures["perplexity"]) == pytest.approx(expected.ppl, abs=1e-4)
    assert "scoring [" in result.stderr  # --progress draws the bar even into a pipe


def test_cli_ppl_errors_are_one_line(tmp_path, demo_model_path):
    missing = run_ppl(tmp_path / "missing.txt", "--model", demo_model_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "missing.txt: no such file" in missing.stderr
    text = tmp_path / "text.txt"
    text.write_text(NATURAL_TEXT)
    bad_ctx = run_ppl(text, "--model", demo_model_path, "--ctx", 1)
    assert bad_ctx.returncode == 1 and bad_ctx.stderr.count("\n") == 1
    assert "ctx must be" in bad_ctx.stderr
    assert "loading [" not in bad_ctx.stderr  # no bar when stderr is not a terminal


# ---- the progress bar -----------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_a_terminal_only():
    quiet = io.StringIO()
    with ProgressBar(4, "work", stream=quiet) as bar:
        bar.advance()
    assert quiet.getvalue() == ""

    screen = FakeTerminal()
    with ProgressBar(4, "work", stream=screen, width=8, min_interval=0) as bar:
        for _ in range(3):
            bar.advance()
    frames = screen.getvalue().split("\r")[1:]
    assert frames[-1].startswith("work [######..] 3/4  75%")
    assert screen.getvalue().endswith("\n")  # close() leaves the cursor on a fresh line


def test_progress_bar_can_be_forced_and_throttles():
    log = io.StringIO()
    bar = ProgressBar(1000, stream=log, force=True, min_interval=3600)
    for _ in range(999):
        bar.advance()
    assert log.getvalue().count("\r") == 1  # the first draw only: the rest came too soon
    bar.advance()
    assert log.getvalue().count("\r") == 2  # the last step is always drawn
    assert "1000/1000 100%" in log.getvalue()


def test_load_reports_each_converted_tensor(tmp_path, llama3_tokenizer_path):
    from tests.checkpoints.gguf import write_llama_gguf

    config = tiny_config(rope_scaling=None)
    path = write_llama_gguf(tmp_path / "tiny.gguf", config, random_weights(config))
    calls = []
    model = llama3_np.load(path, tokenizer_path=llama3_tokenizer_path,
                           progress=lambda done, total: calls.append((done, total)))
    total = len(model.weights)  # one call per checkpoint tensor, all kept under their names
    assert calls == [(i, total) for i in range(1, total + 1)]
