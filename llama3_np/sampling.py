"""Choosing the next token from logits: greedy, temperature, top-k, top-p; seeded."""

import math

import numpy as np

from .errors import InputError

# Below this temperature sampling is greedy: softmax(logits / T) already puts all its
# mass on the largest logits, and a smaller T rounds to 0 (or overflows) in float32.
GREEDY_BELOW = 1e-6


def most_likely(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first; equal values by lower index."""
    if n < len(values):
        nth = np.partition(values, len(values) - n)[len(values) - n]  # the n-th largest
        above = np.flatnonzero(values > nth)
        chosen = np.concatenate([above, np.flatnonzero(values == nth)[:n - len(above)]])
    else:
        chosen = np.arange(len(values))
    return chosen[np.lexsort((chosen, -values[chosen]))]


class Sampler:
    """temperature 0 (or below GREEDY_BELOW) is greedy (argmax); otherwise sample from
    softmax(logits / T) restricted to the top_k most likely tokens (0: no limit) and then
    to the smallest set whose probability reaches top_p (1.0: no limit; the most likely
    token is always kept). Equal logits are ranked by
    token id, lower first, so the candidates never depend on how a sort breaks ties."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed=None):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
                or not 0 <= temperature < math.inf:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise InputError(f"top-k must be an integer >= 0 (0 = off), got {top_k!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating)) \
                or not 0 < top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], got {top_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.rng = np.random.default_rng(seed)

    def candidates(self, logits: np.ndarray):
        """Token ids allowed by top-k and top-p, with their renormalised probabilities."""
        logits = np.asarray(logits, dtype=np.float32)
        ids = np.arange(len(logits))
        if 0 < self.top_k < len(logits):
            ids = most_likely(logits, self.top_k)
        kept = logits[ids]
        # The maximum is subtracted first, so dividing by a small T cannot overflow to
        # inf - inf; a logit far below it only underflows to probability 0.
        with np.errstate(over="ignore"):
            scaled = (kept - kept.max()) / np.float32(self.temperature)
        probs = np.exp(scaled)
        probs /= probs.sum()
        if self.top_p < 1:
            ids, probs = self.nucleus(ids, probs)
        return ids, probs

    def nucleus(self, ids: np.ndarray, probs: np.ndarray):
        """Top-p: the most likely tokens, kept while the mass before each is still short of
        top_p (Meta's rule). Sorting a 128k vocabulary per token is slow and the nucleus is
        usually small, so only the n most likely are sorted, n doubling until some fall out."""
        n = min(64, len(probs))
        while True:
            top = most_likely(probs, n)
            keep = (np.cumsum(probs[top]) - probs[top]) < self.top_p
            keep[0] = True  # the most likely token, even when top_p rounds to 0 in float32
            if not keep.all() or n == len(probs):
                break
            n = min(2 * n, len(probs))
        top = top[keep]
        return ids[top], probs[top] / probs[top].sum()

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits).reshape(-1)
        if self.temperature < GREEDY_BELOW:
            return int(np.argmax(logits))
        ids, probs = self.candidates(logits)
        cumulative = np.cumsum(probs)
        i = np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")
        return int(ids[min(i, len(ids) - 1)])
