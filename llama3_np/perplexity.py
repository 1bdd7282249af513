"""Perplexity of a text: how surprised the model is by each next token, on average.

Long texts are scored with a sliding window (the strided evaluation Hugging Face
documents): windows of `ctx` tokens start every `stride` tokens, and each window
scores only the tokens no earlier window scored, so every token is scored once,
with at least ctx - stride tokens of context once the first window is past.

    ppl = exp(mean over scored tokens of -log p(token | the tokens before it))
"""

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .numerics import check_finite


@dataclass
class Perplexity:
    nll_sum: float  # total negative log-likelihood of the scored tokens, in nats
    tokens: int  # tokens scored
    windows: int  # forward passes it took
    ctx: int  # tokens per window
    stride: int  # tokens between window starts

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return self.nll_sum / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed
    end: int  # one past the last token fed
    first_scored: int  # first target position this window scores


def log_probs(logits: np.ndarray, targets) -> np.ndarray:
    """log softmax(logits)[row, target] for each row, in float32.

    Stable: the row maximum is subtracted before exp, so no logit overflows."""
    logits = np.asarray(logits, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    return shifted[np.arange(len(targets)), targets] - log_norm


def windows(n_tokens: int, ctx: int, stride: int) -> list:
    """The windows that score positions 1..n_tokens-1 once each (position 0 is only context).

    A window's first token is never a target (nothing in the window precedes it), so
    with stride == ctx the token at each window's start goes unscored, as in HF."""
    plan, scored_up_to = [], 1
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + ctx, n_tokens)
        first = max(scored_up_to, begin + 1)
        if first < end:
            plan.append(Window(begin, end, first))
        scored_up_to = end
        if end == n_tokens:
            break
    return plan


def check_window(ctx: int, stride: int, max_seq_len: int = None) -> None:
    """max_seq_len None: before the model is loaded, all but ctx's upper bound."""
    top = math.inf if max_seq_len is None else max_seq_len
    if isinstance(ctx, bool) or not isinstance(ctx, int) or not 2 <= ctx <= top:
        known = "" if max_seq_len is None else f" ({max_seq_len})"
        raise InputError(f"ctx must be an integer from 2 to the model's context window"
                         f"{known}, got {ctx!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= ctx:
        raise InputError(f"stride must be an integer from 1 to ctx ({ctx}), got {stride!r}")


def perplexity(model, tokens, ctx: int = 512, stride: int = None, progress=None) -> Perplexity:
    """Score `tokens` (ids, the first one given as context: begin-of-text for Llama 3)
    with `model` (a Llama or Transformer). Each window runs on a fresh KV cache and is
    scored chunk by chunk, so a long window never holds all its logits at once.

    progress(done, total) is called after each window (a ProgressBar fits)."""
    tokens = [int(t) for t in tokens]
    stride = ctx // 2 if stride is None else stride
    check_window(ctx, stride, model.config.max_seq_len)
    if len(tokens) < 2:
        raise InputError(f"perplexity needs at least 2 tokens (one to predict from, one to "
                         f"score), got {len(tokens)}")
    plan = windows(len(tokens), ctx, stride)
    nll_sum, scored = 0.0, 0
    transformer = getattr(model, "model", model)
    for done, w in enumerate(plan, start=1):
        chunk_begin, window = w.begin, tokens[w.begin:w.end]
        for logits in _quietly(transformer.forward_chunks(window, 0, model.new_cache())):
            check_finite(logits, model, window)
            # Row r predicts the token at position chunk_begin + r + 1; score the rows
            # whose targets lie in first_scored .. end - 1.
            first, stop = max(chunk_begin, w.first_scored - 1), chunk_begin + len(logits)
            stop = min(stop, w.end - 1)
            if first < stop:
                token_lp = log_probs(logits[first - chunk_begin:stop - chunk_begin],
                                     tokens[first + 1:stop + 1])
                nll_sum -= float(token_lp.sum(dtype=np.float64))  # float64: the sum only
                scored += len(token_lp)
            chunk_begin += len(logits)
        if progress is not None:
            progress(done, len(plan))
    return Perplexity(nll_sum, scored, len(plan), ctx, stride)


def _quietly(chunks):
    """The chunks' logits, computed without NumPy's overflow warnings: non-finite logits
    are reported by check_finite, by name."""
    while True:
        with np.errstate(all="ignore"):
            logits = next(chunks, None)
        if logits is None:
            return
        yield logits


def text_tokens(tokenizer, text: str) -> list:
    """The ids a text is scored as: begin-of-text first when the model's prompts start
    with it (Llama 3), so the text's first token is scored too; otherwise (SmolLM2,
    whose tokenizer adds none) the first token is only context."""
    add_bos = tokenizer.add_bos and tokenizer.bos_id is not None
    return tokenizer.encode(text, bos=add_bos)
