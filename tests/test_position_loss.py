"""Mean next-token loss by position (jaxlm.evaluation.position_loss).

A model whose logits are all zero has loss exactly ln V at every position; for a
random model the curve must equal per-document log-softmax losses computed directly,
one document at a time, averaged over exactly the documents long enough (the short
ones and the padding rows of the last batch left out).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import Config, DataConfig
from jaxlm.evaluation.position_loss import document_rows, mean_over, position_loss
from jaxlm.models.transformer import Transformer
from jaxlm.presets import get_preset

CFG = get_preset("tiny")
V = CFG.vocab_size


@pytest.fixture(scope="module")
def model():
    graphdef, params = nnx.split(Transformer(CFG, rngs=nnx.Rngs(3)))
    return graphdef, params


def docs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, n).astype(np.int32) for n in lengths]


def test_zero_logits_give_ln_v_everywhere(model):
    graphdef, params = model
    zero = jax.tree.map(jnp.zeros_like, params)  # zero (untied) unembedding: logits 0
    result = position_loss(CFG, graphdef, zero, docs([20, 30]), seq_len=16, batch_size=4)
    assert result.docs == 2 and result.loss.shape == (16,)
    np.testing.assert_allclose(result.loss, math.log(V), rtol=1e-6)


def test_matches_direct_log_softmax_per_document(model):
    graphdef, params = model
    seq_len = 12
    documents = docs([13, 5, 40, 12, 30, 13, 25], seed=1)  # 5 and 12 are too short
    result = position_loss(CFG, graphdef, params, documents, seq_len=seq_len, batch_size=3)
    m = nnx.merge(graphdef, params)
    per_doc = []
    for doc in documents:
        if len(doc) < seq_len + 1:
            continue
        logp = jax.nn.log_softmax(m(jnp.asarray(doc[None, :seq_len])), axis=-1)[0]
        per_doc.append([-float(logp[p, doc[p + 1]]) for p in range(seq_len)])
    assert result.docs == len(per_doc) == 5  # batches of 3: the last one has a padding row
    np.testing.assert_allclose(result.loss, np.mean(per_doc, axis=0), rtol=2e-5, atol=1e-6)
    # max_docs keeps the first ones, in order.
    first_two = position_loss(
        Config(model=CFG, data=DataConfig(seq_len=64, tokenizer_vocab_size=V)),
        graphdef,
        params,
        documents,
        seq_len=seq_len,
        max_docs=2,
    )
    assert first_two.docs == 2
    np.testing.assert_allclose(first_two.loss, np.mean(per_doc[:2], axis=0), rtol=2e-5, atol=1e-6)


def test_document_rows_cut_documents_to_t_plus_one():
    rows = document_rows(docs([3, 9, 4, 20]), seq_len=3)
    assert rows.shape == (3, 4) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows[1], docs([3, 9, 4, 20])[2][:4])
    assert document_rows(docs([3]), seq_len=3).shape == (0, 4)


def test_mean_over_windows():
    curve = np.arange(8, dtype=np.float64)
    assert mean_over(curve, 0, 4) == 1.5 and mean_over(curve, 4, 8) == 5.5
    with pytest.raises(ValueError, match="outside"):
        mean_over(curve, 8, 16)


def test_refusals(model):
    graphdef, params = model
    with pytest.raises(ValueError, match=r"seq_len=128 exceeds model.max_seq_len=64"):
        position_loss(CFG, graphdef, params, docs([200]), seq_len=128)
    with pytest.raises(ValueError, match="no document has 17 tokens"):
        position_loss(CFG, graphdef, params, docs([10, 16]), seq_len=16)
    other = dataclasses.replace(CFG, rope_scaling="linear", rope_scaling_factor=2.0)
    with pytest.raises(ValueError, match="another ModelConfig"):
        position_loss(other, graphdef, params, docs([20]), seq_len=16)
