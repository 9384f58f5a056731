"""A run that continues a model reads text with that model's tokenizer, never a new one."""

from pathlib import Path

import pytest
from helpers.runs import make_tokenizer

from jaxlm.config import Config, apply_overrides
from jaxlm.data.run_inputs import ensure_tokenizer
from jaxlm.errors import InputError
from jaxlm.training.tasks import task_for

SMALL = ["model.vocab_size=384", "data.tokenizer_vocab_size=384"]


def _ensure(cfg, workdir):
    return ensure_tokenizer(
        cfg,
        workdir,
        log=lambda m: None,
        is_leader=True,
        barrier=lambda n: None,
        may_train=task_for(cfg).trains_tokenizer,
    )


@pytest.mark.parametrize("data_format", ["text", "chat"])
def test_init_from_brings_its_tokenizer(tmp_path, data_format):
    source = make_tokenizer(tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    (export / "tokenizer.model").write_bytes(Path(source).read_bytes())
    cfg = apply_overrides(
        Config(), [*SMALL, f"data.format={data_format}", f"train.init_from={export}"]
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    tokenizer = _ensure(cfg, workdir)
    assert (workdir / "tokenizer.model").read_bytes() == Path(source).read_bytes()
    assert tokenizer.path == workdir / "tokenizer.model"


def test_init_from_without_a_tokenizer_is_refused_rather_than_training_one(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = apply_overrides(Config(), [*SMALL, f"train.init_from={bare}"])
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match=r"train\.init_from needs the model's tokenizer"):
        _ensure(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "tokenizer.model").exists()
