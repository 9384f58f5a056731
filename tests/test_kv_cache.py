"""Cached decoding against the full forward pass, and the generation loop's contract.

The cache test teacher-forces known continuations through prefill + one-token decode
steps, with prompts of different lengths in one batch (so padding slots sit between
prompt and continuation) on the GQA `tiny` preset, and compares every position's
logits with the plain model's on each unpadded sequence.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.inference.decode import Generator
from jaxlm.inference.kv_cache import forward_cached, init_cache
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset

CFG = dataclasses.replace(get_preset("tiny"), max_seq_len=128)
QK_NORM_TIED = dataclasses.replace(CFG, qk_norm=True, tie_embeddings=True)
# Context extension changes every rotation angle and (yarn) scales q and k.
YARN = dataclasses.replace(
    CFG, rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_max_len=32
)


def _model(cfg, seed=0):
    graphdef, _ = abstract_model(cfg)
    return graphdef, init_params(cfg, jax.random.key(seed))


@pytest.mark.parametrize("cfg", [CFG, QK_NORM_TIED, YARN], ids=["gqa", "qk_norm_tied", "yarn"])
def test_cached_logits_equal_full_forward_at_every_position(cfg):
    assert cfg.n_kv_heads < cfg.n_heads  # grouped-query attention is exercised
    graphdef, params = _model(cfg)
    rng = np.random.default_rng(0)
    prompt_lengths, n_new, P = [5, 12, 1], 9, 16
    sequences = [
        rng.integers(1, cfg.vocab_size, n + n_new).astype(np.int32) for n in prompt_lengths
    ]
    B = len(sequences)
    prompts = np.zeros((B, P), np.int32)
    for b, (seq, n) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        prompts[b, :n] = seq[:n]
    lengths = jnp.asarray(prompt_lengths)
    valid = jnp.arange(P)[None] < lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(P), (B, P))

    cache = init_cache(cfg, B, P + n_new)
    prefill_logits, cache = forward_cached(
        cfg, graphdef, params, cache, jnp.asarray(prompts), positions, valid, jnp.int32(0)
    )
    step = jax.jit(
        lambda cache, tok, pos, slot: forward_cached(
            cfg, graphdef, params, cache, tok, pos, jnp.ones_like(tok, bool), slot
        )
    )
    decode_logits = []
    for t in range(n_new - 1):
        token = jnp.asarray(
            [[seq[n + t]] for seq, n in zip(sequences, prompt_lengths, strict=True)]
        )
        logits, cache = step(cache, token, (lengths + t)[:, None], jnp.int32(P + t))
        decode_logits.append(logits[:, 0])

    model = nnx.merge(graphdef, params)
    for b, (seq, n) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        full = np.asarray(model(jnp.asarray(seq[None, : n + n_new - 1]))[0])
        np.testing.assert_allclose(prefill_logits[b, :n], full[:n], atol=1e-4, rtol=1e-4)
        for t in range(n_new - 1):
            np.testing.assert_allclose(decode_logits[t][b], full[n + t], atol=1e-4, rtol=1e-4)


def test_prefill_gathers_the_last_prompt_token():
    graphdef, params = _model(CFG)
    tokens = jnp.asarray([[3, 4, 5, 0], [6, 7, 0, 0]])
    lengths = jnp.asarray([3, 2])
    valid = jnp.arange(4)[None] < lengths[:, None]
    positions = jnp.broadcast_to(jnp.arange(4), (2, 4))
    all_logits, _ = forward_cached(
        CFG, graphdef, params, init_cache(CFG, 2, 8), tokens, positions, valid, jnp.int32(0)
    )
    last, _ = forward_cached(
        CFG,
        graphdef,
        params,
        init_cache(CFG, 2, 8),
        tokens,
        positions,
        valid,
        jnp.int32(0),
        logits_at_B=lengths - 1,
    )
    np.testing.assert_allclose(last, all_logits[jnp.arange(2), lengths - 1], atol=1e-6)


def _greedy_reference(graphdef, params, prompt, n):
    """Greedy continuation by re-running the full model on the whole prefix each time
    (in a fixed 64-token buffer: causal attention makes the padding after the prefix
    irrelevant, and one compilation serves every length)."""
    forward = jax.jit(lambda tokens: nnx.merge(graphdef, params)(tokens)[0])
    ids = list(prompt)
    for _ in range(n):
        buffer = np.zeros((1, 64), np.int32)
        buffer[0, : len(ids)] = ids
        ids.append(int(jnp.argmax(forward(jnp.asarray(buffer))[len(ids) - 1])))
    return ids[len(prompt) :]


def test_greedy_generation_matches_recomputation_and_is_deterministic():
    graphdef, params = _model(CFG)
    gen = Generator(CFG, graphdef, params)
    prompts = [[5, 9, 2, 7], [11], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 40]]
    out = gen.generate(prompts, max_new_tokens=12)
    for prompt, tokens in zip(prompts, out.tokens, strict=True):
        assert tokens == _greedy_reference(graphdef, params, prompt, 12)
    assert gen.generate(prompts, max_new_tokens=12).tokens == out.tokens
    # A row's output does not depend on the other rows of its batch.
    assert gen.generate(prompts[1:2], max_new_tokens=12).tokens[0] == out.tokens[1]


def test_sampling_is_seeded():
    graphdef, params = _model(CFG)
    gen = Generator(CFG, graphdef, params)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9)
    a = gen.generate([[1, 2, 3]] * 4, max_new_tokens=16, sampling=sampling, seed=3).tokens
    b = gen.generate([[1, 2, 3]] * 4, max_new_tokens=16, sampling=sampling, seed=3).tokens
    c = gen.generate([[1, 2, 3]] * 4, max_new_tokens=16, sampling=sampling, seed=4).tokens
    assert a == b
    assert a != c
    assert len({tuple(row) for row in a}) > 1  # rows draw independently


def test_stop_tokens_end_only_their_own_sequence():
    graphdef, params = _model(CFG)
    gen = Generator(CFG, graphdef, params)
    prompts = [[5, 9, 2, 7], [11, 4], [8]]
    free = gen.generate(prompts, max_new_tokens=10).tokens
    # Stop on the 4th token of row 0's greedy output (a token that row 0 has not made
    # before it, so row 0 must end exactly there).
    position = next(i for i in range(3, 10) if free[0][i] not in free[0][:i])
    stop = free[0][position]
    out = gen.generate(prompts, max_new_tokens=10, stop_ids=[stop])
    assert out.tokens[0] == free[0][:position] and out.stopped[0]
    for b in (1, 2):
        expected = free[b][: free[b].index(stop)] if stop in free[b] else free[b]
        assert out.tokens[b] == expected
        assert out.stopped[b] == (stop in free[b])
    assert any(len(out.tokens[b]) > position for b in (1, 2)) or all(out.stopped)


def test_streaming_callback_sees_every_emitted_token():
    graphdef, params = _model(CFG)
    gen = Generator(CFG, graphdef, params)
    prompts = [[5, 9, 2, 7], [11, 4]]
    streamed = [[], []]

    def on_tokens(step, tokens, emitted):
        for b in range(len(prompts)):
            if emitted[b]:
                streamed[b].append(int(tokens[b]))

    free = gen.generate(prompts, max_new_tokens=8).tokens
    out = gen.generate(prompts, max_new_tokens=8, stop_ids=[free[0][2]], on_tokens=on_tokens)
    assert streamed == out.tokens


def test_too_long_requests_are_refused_with_the_limit_named():
    graphdef, params = _model(CFG)
    gen = Generator(CFG, graphdef, params)
    with pytest.raises(Exception, match="max_seq_len=128"):
        gen.generate([[1] * 120], max_new_tokens=16)
