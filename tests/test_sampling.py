"""Sampling filters: each keeps exactly its set, and draws never leave it (fixed seeds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import InputError
from jaxlm.inference.sampling import (
    SamplingConfig,
    filtered_logits,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    penalize_repeats,
    sample,
)

V = 12
# Distinct logits in a shuffled order, so a filter that ignores the order would fail.
LOGITS = jnp.asarray([[0.3, 2.0, -1.0, 1.1, 0.0, 3.2, -2.5, 0.9, 1.7, -0.4, 2.6, 0.5]])
PROBS = np.asarray(jax.nn.softmax(LOGITS[0]))
RANKED = np.argsort(-PROBS)  # token ids, most likely first
NONE_SEEN = jnp.zeros((1, V), bool)


def _draws(cfg: SamplingConfig, n=4000, seed=0) -> np.ndarray:
    logits = jnp.broadcast_to(LOGITS, (n, V))
    seen = jnp.zeros((n, V), bool)
    return np.asarray(jax.jit(sample, static_argnums=3)(logits, seen, jax.random.key(seed), cfg))


def test_top_k_keeps_the_k_largest_and_never_samples_outside():
    kept = np.flatnonzero(np.isfinite(keep_top_k(LOGITS, 3)[0]))
    assert set(kept) == set(RANKED[:3])
    draws = _draws(SamplingConfig(temperature=1.0, top_k=3))
    assert set(np.unique(draws)) == set(RANKED[:3])  # all of the set is reachable


def test_top_p_keeps_the_smallest_set_reaching_p_and_never_samples_outside():
    p = 0.8
    cumulative = np.cumsum(PROBS[RANKED])
    expected = set(RANKED[: int(np.searchsorted(cumulative, p)) + 1])
    assert PROBS[list(expected)].sum() >= p
    assert PROBS[list(expected)].sum() - PROBS[list(expected)].min() < p  # smallest such set
    kept = np.flatnonzero(np.isfinite(keep_top_p(LOGITS, p)[0]))
    assert set(kept) == expected
    draws = _draws(SamplingConfig(temperature=1.0, top_p=p))
    assert set(np.unique(draws)) == expected


def test_top_p_always_keeps_the_most_likely_token():
    kept = np.flatnonzero(np.isfinite(keep_top_p(LOGITS, 1e-6)[0]))
    assert list(kept) == [RANKED[0]]


def test_min_p_keeps_tokens_above_the_scaled_maximum():
    min_p = 0.2
    expected = set(np.flatnonzero(min_p * PROBS.max() <= PROBS))
    assert 1 < len(expected) < V
    assert set(np.flatnonzero(np.isfinite(keep_min_p(LOGITS, min_p)[0]))) == expected
    draws = _draws(SamplingConfig(temperature=1.0, min_p=min_p))
    assert set(np.unique(draws)) == expected


def test_sampled_frequencies_follow_the_distribution():
    draws = _draws(SamplingConfig(temperature=1.0), n=20000, seed=1)
    freq = np.bincount(draws, minlength=V) / draws.size
    # 20000 draws: the standard error of a frequency is at most 0.0036.
    np.testing.assert_allclose(freq, PROBS, atol=0.015)


def test_temperature_sharpens_and_greedy_is_argmax():
    cold = np.bincount(_draws(SamplingConfig(temperature=0.25)), minlength=V)
    hot = np.bincount(_draws(SamplingConfig(temperature=1.0)), minlength=V)
    assert cold[RANKED[0]] > hot[RANKED[0]]
    greedy = _draws(SamplingConfig(temperature=0.0), n=50)
    assert (greedy == RANKED[0]).all()


def test_filters_compose_in_order():
    # top-k 4 then top-p: the nucleus is taken over the renormalised top 4.
    logits = filtered_logits(LOGITS, NONE_SEEN, SamplingConfig(temperature=1.0, top_k=4, top_p=0.5))
    kept = set(np.flatnonzero(np.isfinite(logits[0])))
    top4 = PROBS[RANKED[:4]] / PROBS[RANKED[:4]].sum()
    expected = set(RANKED[: int(np.searchsorted(np.cumsum(top4), 0.5)) + 1])
    assert kept == expected


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    seen = jnp.zeros((1, V), bool).at[0, jnp.asarray([1, 2])].set(True)  # logits 2.0 and -1.0
    out = np.asarray(penalize_repeats(LOGITS, seen, 2.0)[0])
    assert out[1] == pytest.approx(1.0) and out[2] == pytest.approx(-2.0)
    untouched = [i for i in range(V) if i not in (1, 2)]
    np.testing.assert_array_equal(out[untouched], np.asarray(LOGITS[0])[untouched])
    # Greedy moves off a repeated favourite when the penalty is strong enough.
    seen_top = jnp.zeros((1, V), bool).at[0, RANKED[0]].set(True)
    token = sample(LOGITS, seen_top, jax.random.key(0), SamplingConfig(repetition_penalty=3.0))
    assert int(token[0]) == RANKED[1]


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"min_p": 1.5}, {"repetition_penalty": 0}],
)
def test_bad_settings_are_refused_by_name(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)
