"""`jaxlm convert --from-hf`: every Llama-family type gives transformers' logits.

For each tiny random transformers model (tests/helpers/hf_models.py: Llama, Llama 3
RoPE scaling, Mistral, Qwen2 with q/k/v biases, Qwen3 with QK-norm, tied
embeddings, GQA with one KV head), saved with save_pretrained as safetensors and
imported through the command line:

- fp32 logits equal transformers' within 1e-4 (max abs) on the same tokens;
- a packed row (two documents with their own segment ids and positions, then
  padding) gives each document the logits transformers gives it alone;
- greedy generation through jaxlm's KV-cache Generator makes the same 16 tokens as
  transformers' generate(do_sample=False) (qwen2, qwen3 and llama3_rope by default,
  which cover the biases, QK-norm and scaled RoPE in the cached path; every case
  with the slow tests).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import hf_models

from jaxlm.checkpointing.params_io import load_params
from jaxlm.cli import main
from jaxlm.inference.decode import Generator
from jaxlm.models.params import abstract_model

TOLERANCE = 1e-4
CASES = list(hf_models.CASES)


@pytest.fixture(scope="module", params=CASES)
def converted(request, tmp_path_factory):
    """(case, transformers model, jaxlm Config, graphdef, params) per case."""
    case = request.param
    root = tmp_path_factory.mktemp(case)
    reference = hf_models.build(case)
    reference.save_pretrained(root / "hf", safe_serialization=True)
    assert (
        main(["convert", "--from-hf", str(root / "hf"), str(root / "jaxlm"), "--no-tokenizer"]) == 0
    )
    params, cfg = load_params(root / "jaxlm")
    graphdef, _ = abstract_model(cfg.model)
    return case, reference, cfg, graphdef, params


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def batch():
    """Two plain rows and one packed row (documents of 13 and 16 tokens, then padding):
    one forward pass, one compilation per case."""
    rng = np.random.default_rng(1)
    T = 40
    plain = rng.integers(0, hf_models.VOCAB, (2, T))
    doc_a, doc_b = rng.integers(0, hf_models.VOCAB, 13), rng.integers(0, hf_models.VOCAB, 16)
    pad = T - 29
    packed = np.concatenate([doc_a, doc_b, np.zeros(pad, int)])
    tokens = np.concatenate([plain, packed[None]]).astype(np.int32)
    segment_ids = np.ones((3, T), np.int32)
    segment_ids[2] = [1] * 13 + [2] * 16 + [0] * pad
    positions = np.broadcast_to(np.arange(T, dtype=np.int32), (3, T)).copy()
    positions[2] = [*range(13), *range(16), *range(pad)]
    return tokens, positions, segment_ids, doc_a, doc_b


@pytest.fixture(scope="module")
def jaxlm_logits(converted, batch):
    from flax import nnx

    _, _, _, graphdef, params = converted
    tokens, positions, segment_ids, _, _ = batch
    model = nnx.merge(graphdef, params)
    forward = jax.jit(lambda t, p, s: model(t, positions=p, segment_ids=s))
    return np.asarray(forward(jnp.asarray(tokens), positions, segment_ids))


def test_logits_match_transformers(converted, batch, jaxlm_logits):
    case, reference, _, _, _ = converted
    theirs = _hf_logits(reference, batch[0][:2])
    assert np.abs(theirs).max() > 1.0  # not a degenerate near-zero model
    np.testing.assert_allclose(jaxlm_logits[:2], theirs, rtol=0, atol=TOLERANCE, err_msg=case)


def test_packed_documents_match_transformers_run_alone(converted, batch, jaxlm_logits):
    case, reference, _, _, _ = converted
    doc_a, doc_b = batch[3], batch[4]
    ours = jaxlm_logits[2]
    np.testing.assert_allclose(
        ours[:13], _hf_logits(reference, doc_a[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
    )
    np.testing.assert_allclose(
        ours[13:29], _hf_logits(reference, doc_b[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
    )


# The cached decode path for each feature: biases (qwen2), QK-norm (qwen3), scaled RoPE
# (llama3_rope); the other cases share these paths and run with the slow tests.
_GENERATION_CASES = ("qwen2", "qwen3", "llama3_rope")


@pytest.mark.parametrize(
    "converted",
    [c if c in _GENERATION_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
    indirect=True,
)
def test_greedy_generation_matches_transformers(converted):
    case, reference, cfg, graphdef, params = converted
    prompt = [1, *np.random.default_rng(3).integers(6, hf_models.VOCAB, 7).tolist()]
    new = 16
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=2,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    theirs = out[: out.index(2)] if 2 in out else out
    ours = Generator(cfg.model, graphdef, params).generate(
        [prompt], max_new_tokens=new, stop_ids=(2,)
    )
    assert ours.tokens[0] == theirs, case
    assert len(set(theirs)) > 2, f"{case}: a degenerate model repeats one token: {theirs}"
