"""`jaxlm convert --from-hf`: every Llama-family type gives transformers' logits.

For each tiny random transformers model (tests/helpers/hf_models.py: Llama, Llama 3
RoPE scaling, Mistral, Qwen2 with q/k/v biases, Qwen3 with QK-norm, tied
embeddings, GQA with one KV head), saved with save_pretrained as safetensors and
imported through the command line:

- fp32 logits equal transformers' within 1e-4 (max abs) on the same tokens;
- a packed row (two documents with their own segment ids and positions, then
  padding) gives each document the logits transformers gives it alone;
- greedy generation through jaxlm's KV-cache Generator makes the same 16 tokens as
  transformers' generate(do_sample=False).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import hf_models

from jaxlm.cli import main
from jaxlm.inference.decode import Generator
from jaxlm.params_checkpoint import load_params
from jaxlm.train_state import abstract_model

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


def _jaxlm_logits(graphdef, params, tokens, positions=None, segment_ids=None):
    from flax import nnx

    @jax.jit
    def forward(params, tokens, positions, segment_ids):
        return nnx.merge(graphdef, params)(tokens, positions=positions, segment_ids=segment_ids)

    B, T = tokens.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    if segment_ids is None:
        segment_ids = np.ones((B, T), np.int32)
    return np.asarray(forward(params, jnp.asarray(tokens), positions, segment_ids))


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def test_logits_match_transformers(converted):
    case, reference, _, graphdef, params = converted
    tokens = np.random.default_rng(1).integers(0, hf_models.VOCAB, (2, 40)).astype(np.int32)
    ours = _jaxlm_logits(graphdef, params, tokens)
    theirs = _hf_logits(reference, tokens)
    assert np.abs(theirs).max() > 1.0  # not a degenerate near-zero model
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE, err_msg=case)


def test_packed_documents_match_transformers_run_alone(converted):
    case, reference, _, graphdef, params = converted
    rng = np.random.default_rng(2)
    doc_a, doc_b = rng.integers(0, hf_models.VOCAB, 13), rng.integers(0, hf_models.VOCAB, 16)
    pad = 3
    tokens = np.concatenate([doc_a, doc_b, np.zeros(pad, int)])[None].astype(np.int32)
    segment_ids = np.array([[1] * 13 + [2] * 16 + [0] * pad], np.int32)
    positions = np.array([[*range(13), *range(16), *range(pad)]], np.int32)
    ours = _jaxlm_logits(graphdef, params, tokens, positions, segment_ids)[0]
    np.testing.assert_allclose(
        ours[:13], _hf_logits(reference, doc_a[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
    )
    np.testing.assert_allclose(
        ours[13:29], _hf_logits(reference, doc_b[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
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
