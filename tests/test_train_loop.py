"""The host loop stops on a non-finite step, naming it, and writes no checkpoint after it."""

import pytest

from jaxlm.config import Config, apply_overrides
from jaxlm.train import NonFiniteError, train

SMALL = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.vocab_size=384",
    "model.max_seq_len=32",
    "data.tokenizer_vocab_size=384",
    "data.tokenizer_max_chars=200000",
    "data.seq_len=32",
    "data.batch_size=8",
    "data.eval_max_docs=2",
    "train.steps=5",
    "train.eval_every=0",
    "train.progress_bar=false",
    "optim.warmup_steps=0",
    "optim.clip_norm=0",
]


def test_non_finite_stops_the_run_naming_the_step(tmp_path):
    # An infinite learning rate makes the very first update non-finite.
    cfg = apply_overrides(Config(), [*SMALL, "optim.lr=inf", "optim.schedule=constant"])
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite loss, gradient or update at step 1 \(.*not applied; no checkpoint",
    ):
        train(cfg, tmp_path)
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))
