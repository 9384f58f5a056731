"""Rollouts (jaxlm.inference.rollout): the sampler's log-probs are the policy's.

The log-probs a rollout returns with its tokens must equal a teacher-forced forward
pass of the sampled tokens (what the RL update differentiates), rows must stop at
their own stop token (kept in the response), and greedy rollouts must give the
tokens the chat Generator gives.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.errors import InputError
from jaxlm.inference.decode import Generator
from jaxlm.inference.rollout import make_rollout, response_logps
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset

CFG = dataclasses.replace(get_preset("tiny"), max_seq_len=64)


def _model(seed=0):
    graphdef, _ = abstract_model(CFG)
    return graphdef, init_params(CFG, jax.random.key(seed))


def _prompts(lengths, P=16, seed=1):
    rng = np.random.default_rng(seed)
    prompts = np.zeros((len(lengths), P), np.int32)
    for b, n in enumerate(lengths):
        prompts[b, :n] = rng.integers(3, CFG.vocab_size, n)
    return jnp.asarray(prompts), jnp.asarray(lengths, jnp.int32)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_teacher_forced_logps(temperature):
    graphdef, params = _model()
    prompts, lengths = _prompts([3, 9, 16, 1])
    sampling = SamplingConfig(temperature=temperature)
    # A stop id the random model draws now and then, so rows end at different steps.
    rollout = jax.jit(
        make_rollout(CFG, graphdef, max_new_tokens=12, sampling=sampling, stop_ids=(5, 7))
    )
    out = rollout(params, prompts, lengths, jax.random.key(3))
    mask = np.asarray(out.mask)
    assert mask[:, 0].all() and mask.sum() > 4
    teacher = response_logps(
        graphdef, params, prompts, lengths, out.tokens, out.mask, temperature=temperature
    )
    np.testing.assert_allclose(np.asarray(teacher), np.asarray(out.logps), atol=2e-5)
    assert np.all(np.asarray(out.logps)[mask] < 0)
    # and against the plain model on each unpadded sequence, one row at a time
    model = nnx.merge(graphdef, params)
    for b in range(prompts.shape[0]):
        n, r = int(lengths[b]), int(out.num_tokens[b])
        seq = np.concatenate([np.asarray(prompts[b, :n]), np.asarray(out.tokens[b, :r])])
        logits = model(jnp.asarray(seq[None, :-1]))[0, n - 1 :] / temperature
        want = jax.nn.log_softmax(logits, -1)[jnp.arange(r), seq[n:]]
        np.testing.assert_allclose(np.asarray(out.logps[b, :r]), np.asarray(want), atol=2e-5)


def test_rows_stop_at_their_own_stop_token_which_stays_in_the_response():
    graphdef, params = _model()
    prompts, lengths = _prompts([4, 4, 4, 4, 4, 4, 4, 4], seed=2)
    stops = tuple(range(3, 40))  # many stop ids: rows end early, at different steps
    rollout = jax.jit(
        make_rollout(CFG, graphdef, max_new_tokens=10, sampling=SamplingConfig(1.0), stop_ids=stops)
    )
    out = rollout(params, prompts, lengths, jax.random.key(0))
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    n = np.asarray(out.num_tokens)
    for b in range(tokens.shape[0]):
        row = tokens[b, : n[b]]
        hits = np.flatnonzero(np.isin(row, stops))
        if out.truncated[b]:
            assert n[b] == 10 and hits.size == 0
        else:
            assert hits.tolist() == [n[b] - 1]  # ends with its first stop token
        assert mask[b, : n[b]].all() and not mask[b, n[b] :].any()
        assert (tokens[b, n[b] :] == 0).all()
    assert not np.asarray(out.truncated).all()


def test_greedy_rollout_gives_the_generators_tokens():
    graphdef, params = _model(seed=4)
    prompts, lengths = _prompts([2, 7, 11], seed=5)
    rollout = jax.jit(
        make_rollout(CFG, graphdef, max_new_tokens=9, sampling=SamplingConfig(), stop_ids=(9,))
    )
    out = rollout(params, prompts, lengths, jax.random.key(0))
    gen = Generator(CFG, graphdef, params).generate(
        [np.asarray(prompts[b, : int(lengths[b])]).tolist() for b in range(3)],
        max_new_tokens=9,
        stop_ids=(9,),
    )
    for b in range(3):
        got = np.asarray(out.tokens[b, : int(out.num_tokens[b])]).tolist()
        if gen.stopped[b]:
            assert got == [*gen.tokens[b], 9]
        else:
            assert got == gen.tokens[b]


def test_same_key_same_rollout_other_key_other_rollout():
    graphdef, params = _model()
    prompts, lengths = _prompts([5, 6, 7, 8])
    rollout = jax.jit(
        make_rollout(CFG, graphdef, max_new_tokens=8, sampling=SamplingConfig(1.0), stop_ids=())
    )
    a = rollout(params, prompts, lengths, jax.random.key(1))
    b = rollout(params, prompts, lengths, jax.random.key(1))
    c = rollout(params, prompts, lengths, jax.random.key(2))
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert np.asarray(a.truncated).all() and (np.asarray(a.num_tokens) == 8).all()


def test_repetition_penalty_is_refused_for_rollouts():
    graphdef, _ = _model()
    with pytest.raises(InputError, match="repetition_penalty"):
        make_rollout(
            CFG,
            graphdef,
            max_new_tokens=4,
            sampling=SamplingConfig(1.0, repetition_penalty=1.2),
            stop_ids=(),
        )
