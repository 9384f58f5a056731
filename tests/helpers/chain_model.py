"""An exported model that writes a chosen token sequence: each token predicts the next.

Attention and MLP add nothing to the residual stream (`wo` and `w_down` are zero), so
the logits at a position depend only on the token there. The tokens of the chain get
orthonormal embeddings, and the unembedding maps each one onto its successor with a
margin of ~70 nats, so greedy generation after a prompt that ends with `chain[0]` is
`chain[1:]`, and a chain that comes back to one of its tokens repeats for ever.
Tests of stop tokens, cuts inside characters, hidden reasoning and Ctrl-C then check
exact text, with no training and no dependence on random weights.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, DataConfig
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset


def chain_params(model, chain: Sequence[int], seed: int = 0):
    """Params (numpy) of `model` in which token chain[i] predicts chain[i + 1]."""
    successors: dict[int, int] = {}
    for token, following in itertools.pairwise(chain):
        if successors.setdefault(token, following) != following:
            raise ValueError(f"token {token} is followed by two different tokens in {chain}")
    tokens = sorted(set(chain))
    d = model.d_model
    if len(tokens) > d:
        raise ValueError(f"{len(tokens)} distinct tokens need d_model >= {len(tokens)}")
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]  # orthonormal columns
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(seed)))

    def fill(path, shape):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            return np.ones(shape.shape, shape.dtype)
        if "wo" in name or "w_down" in name:
            return np.zeros(shape.shape, shape.dtype)
        return (0.02 * rng.standard_normal(shape.shape)).astype(shape.dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    embed = params["embed"].get_value()  # numpy, changed in place
    unembed = np.zeros_like(params["unembed"].get_value())
    for index, token in enumerate(tokens):
        embed[token] = basis[:, index]
    for token, following in successors.items():
        unembed[:, following] += 10.0 * basis[:, tokens.index(token)]
    params["unembed"].set_value(unembed)
    return params


def save_chain_model(
    directory: Path, tokenizer, chain: Sequence[int], *, max_seq_len: int = 256
) -> Path:
    """Exports a `tiny`-shaped chain model with `tokenizer` to `directory`/export."""
    vocab = tokenizer.vocab_size
    model = dataclasses.replace(get_preset("tiny"), vocab_size=vocab, max_seq_len=max_seq_len)
    cfg = Config(model=model, data=DataConfig(tokenizer_vocab_size=vocab, seq_len=32))
    params = chain_params(model, chain)
    return save_params(Path(directory) / "export", params, cfg, tokenizer=tokenizer.path)
