"""The serving pieces without HTTP: per-row sampling, stop sequences, request checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.serving import protocol
from jaxlm.serving.choice_text import ChoiceText
from jaxlm.serving.row_sampling import row_keys, sample_rows, top_p_rows

LIMITS = protocol.Limits(context=64, max_tokens=32, max_n=4, max_prompts=8, vocab_size=100)


def nucleus_reference(logits: np.ndarray, p: float) -> np.ndarray:
    """Kept mask by sorting (float64): the smallest top set of mass >= p, ties kept."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    kept = order[before < p]
    return logits >= logits[kept].min()


def test_top_p_rows_keeps_the_nucleus_of_each_row():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        logits = (rng.normal(size=(4, 300)) * rng.uniform(0.3, 4)).astype(np.float32)
        if trial % 2:
            logits[:, :40] = logits[:, :1]  # a block of ties
        top_p = rng.uniform(0.05, 0.99, size=4).astype(np.float32)
        top_p[0] = 1.0  # a row that does not filter
        got = np.isfinite(np.asarray(top_p_rows(jnp.asarray(logits), jnp.asarray(top_p))))
        assert got[0].all()
        for row in range(1, 4):
            probs = np.exp(logits[row] - logits[row].max())
            probs /= probs.sum()
            # Masses within float32 rounding of p could go either way; skip those rows.
            sorted_mass = np.cumsum(np.sort(probs)[::-1])
            if np.min(np.abs(sorted_mass - top_p[row])) < 1e-5:
                continue
            np.testing.assert_array_equal(got[row], nucleus_reference(logits[row], top_p[row]))
            checked += 1
    assert checked > 150


def test_sample_rows_does_not_depend_on_the_other_rows():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 50)).astype(np.float32) * 2)
    keys = row_keys(jnp.asarray(rng.integers(0, 2**32, (6, 2), dtype=np.uint32)), jnp.arange(6))
    temperature = jnp.asarray([0.0, 0.7, 1.0, 1.5, 0.0, 0.9], jnp.float32)
    top_p = jnp.asarray([1.0, 0.9, 1.0, 0.5, 1.0, 1.0], jnp.float32)
    tokens, logprobs, top_ids, top_lps = sample_rows(logits, keys, temperature, top_p, top_n=3)
    for row in range(6):
        alone = sample_rows(
            logits[row : row + 1],
            keys[row : row + 1],
            temperature[row : row + 1],
            top_p[row : row + 1],
            top_n=3,
        )
        assert int(alone[0][0]) == int(tokens[row])
        assert float(alone[1][0]) == float(logprobs[row])
    expected = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(logprobs, expected[jnp.arange(6), tokens], rtol=1e-6)
    assert int(tokens[0]) == int(jnp.argmax(logits[0])) and int(tokens[4]) == int(
        jnp.argmax(logits[4])
    )
    np.testing.assert_array_equal(top_ids[:, 0], jnp.argmax(logits, axis=-1))
    np.testing.assert_allclose(top_lps[:, 0], expected.max(axis=-1), rtol=1e-6)


class CharTokenizer:
    """One token per character (id = code point): enough for text assembly."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def piece_bytes(self, token_id):
        return chr(token_id).encode()


def run_text(text: str, stops: list[str]) -> tuple[list[str], str, bool]:
    choice = ChoiceText(CharTokenizer(), stops)
    pieces = [choice.push(ord(c)) for c in text]
    if not choice.stopped:
        pieces.append(choice.finish())
    return pieces, choice.text, choice.stopped


def test_stop_sequences_end_the_text_and_are_never_streamed_in_part():
    pieces, text, stopped = run_text("hello END world", ["END"])
    assert stopped and text == "hello " and "".join(pieces) == "hello "
    assert not any("E" in p for p in pieces)
    # A false start ("EN" then not "D") is released once it is known not to be a stop.
    pieces, text, stopped = run_text("a ENx END", ["END"])
    assert stopped and "".join(pieces) == text == "a ENx "
    # The earliest of several stops wins; no stop: everything comes out.
    assert run_text("xx--yy##", ["##", "--"])[1] == "xx"
    pieces, text, stopped = run_text("plain text", ["zzz"])
    assert not stopped and "".join(pieces) == text == "plain text"


def test_request_checks_name_the_field():
    ok = {"model": "m", "prompt": "x"}
    settings = protocol.completion_settings(ok, LIMITS)
    assert settings.max_tokens == 16 and settings.temperature == 1.0 and settings.n == 1
    cases = [
        ({**ok, "top_p": 2}, "top_p"),
        ({**ok, "seed": "7"}, "seed"),
        ({**ok, "stream": "yes"}, "stream"),
        ({**ok, "echo": 1}, "echo"),
        ({**ok, "best_of": 3}, "best_of"),
        ({**ok, "logit_bias": {"5": 10}}, "logit_bias"),
    ]
    for body, param in cases:
        with pytest.raises(protocol.ApiError) as error:
            protocol.completion_settings(body, LIMITS)
        assert error.value.param == param and error.value.status == 400
    assert protocol.completion_prompts({"prompt": [[1, 2], [3]]}, LIMITS) == [[1, 2], [3]]
    assert protocol.completion_prompts({"prompt": [1, 2]}, LIMITS) == [[1, 2]]
    with pytest.raises(protocol.ApiError, match="max-prompts"):
        protocol.completion_prompts({"prompt": ["a"] * 9}, LIMITS)
    with pytest.raises(protocol.ApiError, match="maximum context length is 64"):
        protocol.check_length(60, 10, LIMITS, "prompt")
    protocol.check_length(54, 10, LIMITS, "prompt")


def test_job_keys_use_all_64_bits_of_the_seed():
    from jaxlm.serving.engine import Job

    def key_of(seed):
        return Job([1], 1, 0.0, 1.0, seed, emit=print).key_data().tolist()

    assert key_of(5) == np.asarray(jax.random.key_data(jax.random.key(5))).tolist()
    keys = [key_of(s) for s in (7, 7 + 2**32, 7 + 2**40, 2**64 - 1)]
    assert len({tuple(k) for k in keys}) == 4
    huge = protocol.common_settings({"seed": 2**70 + 3}, LIMITS, max_tokens_key="max_tokens")
    assert key_of(huge.seed) == key_of(2**70 + 3)  # taken modulo 2**64, never an error
