"""Greedy generation with the KV cache, token for token against transformers' generate().

Random weights can put two logits within rounding distance of each other, and then
the token either side picks is luck. So besides the tokens, every step's logits must
match within tolerances.FLOAT32 and the reference's top-1 lead must exceed
tolerances.MARGIN: then no disagreement the tolerance allows could change a token, and
identical tokens are a finding, not a coincidence.
"""

import pytest

from .measure import GENERATED_TOKENS, greedy_generation
from .tolerances import MARGIN

pytestmark = pytest.mark.parity


def test_greedy_generation_matches_transformers(parity_model):
    run = greedy_generation(parity_model, parity_model.prompt(8, seed=2))
    assert len(run.reference_tokens) == GENERATED_TOKENS
    # The prompt and weights must make the test meaningful: a run that repeats one
    # token would hardly exercise the cache, and a near-tie would make it a coin toss.
    assert run.distinct_tokens >= GENERATED_TOKENS // 2, run.reference_tokens
    close_calls = [(i, m) for i, m in enumerate(run.margins) if m <= MARGIN]
    assert not close_calls, f"near-ties at (step, relative lead): {close_calls}"

    diverging = [e for e in run.logit_errors if not e.ok]
    assert not diverging, f"first divergence at {diverging[0]}"
    assert run.our_tokens == run.reference_tokens
