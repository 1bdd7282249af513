import numpy as np
import pytest

from llama3_np.errors import InputError
from llama3_np.sampling import Sampler


def random_logits(seed=0, vocab=1000):
    return np.random.default_rng(seed).standard_normal(vocab).astype(np.float32) * 3


def test_greedy_is_argmax():
    for seed in range(5):
        logits = random_logits(seed)
        assert Sampler(temperature=0)(logits) == int(np.argmax(logits))


def test_top_k_never_picks_outside_the_k_largest():
    logits = random_logits(1)
    allowed = set(np.argsort(-logits)[:5].tolist())
    sampler = Sampler(temperature=5.0, top_k=5, seed=0)  # hot: would roam widely without top-k
    picks = {sampler(logits) for _ in range(300)}
    assert picks <= allowed
    assert len(picks) == 5  # at temperature 5 every one of the five shows up


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(temperature=1.0, top_p=0.7, seed=0)
    ids, probs = sampler.candidates(logits)
    assert ids.tolist() == [0, 1]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    np.testing.assert_allclose(probs, [0.5 / 0.8, 0.3 / 0.8], rtol=1e-6)
    assert {sampler(logits) for _ in range(200)} == {0, 1}


def test_top_p_always_keeps_the_most_likely_token():
    logits = np.array([5.0, 0.0, 0.0], dtype=np.float32)
    ids, _ = Sampler(temperature=1.0, top_p=0.01).candidates(logits)
    assert ids.tolist() == [0]


def test_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.3, 0.1])
    sampler = Sampler(temperature=1.0, seed=123)
    counts = np.bincount([sampler(np.log(probs)) for _ in range(4000)], minlength=3)
    # 4000 draws: the standard error of each frequency is below 0.008; allow 4 of them.
    np.testing.assert_allclose(counts / 4000, probs, atol=0.032)


def test_same_seed_same_tokens_different_seed_differs():
    logits = random_logits(2)
    draws = lambda seed: (lambda s: [s(logits) for _ in range(50)])(
        Sampler(1.5, top_k=50, top_p=0.95, seed=seed))
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("options", [
    dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
    dict(top_k=2.5), dict(seed=1.5), dict(seed=-3), dict(temperature=float("nan")),
    dict(temperature=float("inf")),
])
def test_bad_options_are_refused(options):
    with pytest.raises(InputError):
        Sampler(**{"temperature": 1.0, **options})


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_nucleus_equals_a_full_sort(top_p):
    """The partial sort (doubling n) keeps exactly the tokens a full sort would keep."""
    for seed in range(3):
        logits = random_logits(seed, vocab=5000)
        ids, probs = Sampler(temperature=0.7, top_p=top_p).candidates(logits)
        full = np.exp((logits - logits.max()) / 0.7)
        full /= full.sum()
        order = np.lexsort((np.arange(len(full)), -full))  # equal: lower id first
        expected = order[(np.cumsum(full[order]) - full[order]) < top_p]
        assert ids.tolist() == expected.tolist()
        np.testing.assert_allclose(probs, full[expected] / full[expected].sum(), rtol=1e-4)


def test_ties_go_to_the_lower_token_id():
    logits = np.zeros(200, dtype=np.float32)
    logits[[150, 7, 90, 3]] = [2.0, 1.0, 1.0, 1.0]
    assert Sampler(temperature=1.0, top_k=3).candidates(logits)[0].tolist() == [150, 3, 7]
    # the nucleus with all 200 tokens equally likely after the first three: by id too
    ids, _ = Sampler(temperature=1.0, top_p=0.5).candidates(logits)
    assert ids.tolist()[:4] == [150, 3, 7, 90]
    assert ids.tolist()[4:] == sorted(ids.tolist()[4:])


@pytest.mark.parametrize("temperature", [1e-40, 1e-46, 5e-7])
def test_tiny_temperatures_are_greedy(temperature):
    """logits / 1e-40 overflowed to inf and picked the last vocabulary id every time."""
    logits = random_logits(2)
    sampler = Sampler(temperature=temperature, seed=0)
    assert {sampler(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_small_temperature_with_huge_logits_stays_finite():
    logits = np.array([-3e38, 3e38, 2.9e38, 0.0], dtype=np.float32)
    sampler = Sampler(temperature=1e-5, seed=0)
    ids, probs = sampler.candidates(logits)
    assert np.isfinite(probs).all()
    assert probs[ids.tolist().index(1)] == 1.0
    assert {sampler(logits) for _ in range(20)} == {1}


def test_top_p_rounding_to_zero_in_float32_keeps_the_top_token():
    """top-p 1e-46 is 0 in float32: the nucleus was empty (an IndexError)."""
    logits = random_logits(3)
    sampler = Sampler(temperature=1.0, top_p=1e-46, seed=0)
    ids, probs = sampler.candidates(logits)
    assert ids.tolist() == [int(np.argmax(logits))] and probs.tolist() == [1.0]
    assert sampler(logits) == int(np.argmax(logits))
