"""The host loop stops on a non-finite step or a run of loss spikes, naming the steps,
and writes no checkpoint after them."""

import json

import pytest

from jaxlm.config import Config, apply_overrides
from jaxlm.training.loop import LossSpikeError, NonFiniteError, train

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
    # A learning rate past float32's range (the config refuses inf itself) is inf in
    # the step, so the very first update is non-finite.
    cfg = apply_overrides(Config(), [*SMALL, "optim.lr=1e300", "optim.schedule=constant"])
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite loss, gradient or update at step 1 \(.*not applied; no checkpoint",
    ):
        train(cfg, tmp_path)
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


# Slow: ~21 s; the stop path (a run ended before the update, naming the step) is the
# non-finite test's above, which runs by default
@pytest.mark.slow
def test_consecutive_loss_spikes_stop_the_run_and_are_counted(tmp_path):
    # spike_factor < 1: once 2 updates are applied every loss counts as a spike.
    spiky = ["optim.spike_factor=0.5", "optim.spike_warmup_steps=2"]
    stop_after_3 = [*spiky, "optim.max_consecutive_spikes=3", "train.log_every=1"]
    cfg = apply_overrides(Config(), [*SMALL, "train.steps=8", *stop_after_3])
    with pytest.raises(
        LossSpikeError,
        match=r"steps 3\.\.5 were all skipped as loss spikes \(the last: loss .* vs moving "
        r"average .*optim.max_consecutive_spikes=3\).*\(no checkpoint yet\)",
    ):
        train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_spike"] for r in records if r["split"] == "train"}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 1}  # step 5 raised before it was logged
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))

    # 0 never stops; the summary counts this run's skipped steps.
    cfg = apply_overrides(Config(), [*SMALL, *spiky, "optim.max_consecutive_spikes=0"])
    train(cfg, tmp_path / "never")
    lines = (tmp_path / "never" / "metrics.jsonl").read_text().splitlines()
    summary = [json.loads(line) for line in lines if '"summary"' in line][-1]
    assert (summary["skipped_spike"], summary["skipped_empty"]) == (3, 0)
