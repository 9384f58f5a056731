"""A resumed run that would read other data, or run with other
settings, is refused with a message naming what changed."""

import json
import re

import pytest
from test_train_loop import SMALL

from jaxlm.analysis.metrics_file import read_metrics
from jaxlm.checkpointing.resume_rules import check_resume_config
from jaxlm.config import Config, apply_overrides
from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.errors import InputError
from jaxlm.training.loop import train


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
    """One finished 2-step run that every test resumes (each refused, so none changes it)."""
    tmp_path = tmp_path_factory.mktemp("refusals")
    data = tmp_path / "docs.jsonl"
    files = stdlib_files("train")[:60]  # real, varied text for a 384-piece tokenizer
    lines = [json.dumps({"text": read_text(path)[:3000]}) for path in files]
    data.write_text("\n".join([*lines, json.dumps({"text": ""})]) + "\n")
    overrides = [*SMALL, f"data.sources=jsonl:{data}", "data.val_fraction=0.1", "train.steps=2"]
    workdir = tmp_path / "run"
    train(apply_overrides(Config(), overrides), workdir)
    return data, overrides, workdir


def test_changed_settings_are_refused_by_name(jsonl_run):
    _, overrides, workdir = jsonl_run
    changed = apply_overrides(Config(), [*overrides, "data.seed=7", "data.workers=1"])
    message = "data.seed: 0 -> 7; data.workers: 0 -> 1"
    with pytest.raises(InputError, match=re.escape(message)):
        train(changed, workdir)


def test_changed_data_is_refused_by_name(jsonl_run):
    data, overrides, workdir = jsonl_run
    original = data.read_bytes()
    with data.open("a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    try:
        with pytest.raises(
            InputError, match=rf"jsonl:{re.escape(str(data))}: \d+ -> \d+ documents"
        ):
            train(apply_overrides(Config(), overrides), workdir)
    finally:
        data.write_bytes(original)  # the shared run's data as it was, for the other tests


def test_data_counts_reach_the_metrics(jsonl_run):
    _, _, workdir = jsonl_run
    summary = [r for r in read_metrics(workdir / "metrics.jsonl") if r["split"] == "summary"]
    assert summary[-1]["data_documents"] > 0
    assert 0.5 < summary[-1]["real_token_fraction"] <= 1.0


def test_a_run_saved_before_a_config_section_existed_resumes():
    """A checkpoint's config.json written before a section (e.g. `rl`, `reward`) was
    added lacks it whole: absent leaves that hold their defaults are no difference,
    a non-default value in the new section still is."""
    saved = Config().to_dict()
    del saved["rl"], saved["reward"]
    assert check_resume_config(saved, Config(), "ckpt") == []
    changed = apply_overrides(Config(), ["rl.group_size=4"])
    with pytest.raises(InputError, match=r"rl\.group_size: '<absent>' -> 4"):
        check_resume_config(saved, changed, "ckpt")


def test_the_layer_loop_may_change_on_resume():
    """Scanned and unrolled layers read the same weights and compute the same function
    (tests/test_golden_losses.py), so a run saved with either resumes under the other
    or under "auto", which picks by backend; the change is logged, not refused."""
    saved = apply_overrides(Config(), ["model.scan_layers=true"]).to_dict()
    assert check_resume_config(saved, Config(), "ckpt") == ["model.scan_layers: True -> 'auto'"]
    unrolled = apply_overrides(Config(), ["model.scan_layers=false"])
    assert check_resume_config(saved, unrolled, "ckpt") == ["model.scan_layers: True -> False"]
    with pytest.raises(InputError, match=r"model\.n_layers: 4 -> 3"):  # still refused
        check_resume_config(saved, apply_overrides(Config(), ["model.n_layers=3"]), "ckpt")
