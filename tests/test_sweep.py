"""`jaxlm sweep`: points in their own workdirs, an index, resume, failures kept apart."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers.runs import TINY, make_tokenizer

from jaxlm import cli
from jaxlm.config import ConfigError
from jaxlm.training.experiment import load_experiment
from jaxlm.training.loop import RunResult
from jaxlm.training.sweep import run_sweep

EXPERIMENT = '''
"""A test sweep over two widths."""
from jaxlm.config import Config, apply_overrides

def get_config():
    return apply_overrides(Config(name="tsweep"), {overrides!r})

def sweep():
    return [("w32", ["model.d_model=32"]), ("w48", ["model.d_model=48"])]
'''


def write_experiment(directory: Path, overrides: list[str]) -> Path:
    path = directory / "tsweep.py"
    path.write_text(textwrap.dedent(EXPERIMENT.format(overrides=overrides)))
    return path


class FakeTrain:
    """Records calls; fails or preempts the points it is told to."""

    def __init__(self, fail=(), preempt=()):
        self.calls, self.fail, self.preempt = [], set(fail), set(preempt)

    def __call__(self, cfg, workdir):
        self.calls.append((cfg.model.d_model, Path(workdir).name))
        if Path(workdir).name in self.fail:
            raise RuntimeError("boom")
        return RunResult(
            workdir=Path(workdir),
            steps=cfg.train.steps,
            final_eval={"loss": cfg.model.d_model / 10, "bits_per_byte": 1.5},
            artefacts={},
            wall_seconds=2.0,
            preempted=Path(workdir).name in self.preempt,
        )


def test_points_run_in_their_workdirs_and_the_index_records_them(tmp_path):
    module = load_experiment(str(write_experiment(tmp_path, ["train.steps=3"])))
    fake = FakeTrain()
    index = run_sweep("tsweep", module, tmp_path / "root", train_fn=fake, log=lambda m: None)
    assert fake.calls == [(32, "w32"), (48, "w48")]
    saved = json.loads((tmp_path / "root" / "index.json").read_text())
    assert saved == index
    w48 = saved["points"]["w48"]
    assert w48["status"] == "done" and w48["eval_loss"] == 4.8 and w48["steps"] == 3
    assert w48["workdir"] == str(tmp_path / "root" / "w48")
    assert w48["overrides"] == ["model.d_model=48"]
    assert "| w32 | done | 3.2 |" in (tmp_path / "root" / "index.md").read_text()


def test_a_rerun_skips_done_points_and_retries_failed_and_preempted_ones(tmp_path):
    module = load_experiment(str(write_experiment(tmp_path, [])))
    root = tmp_path / "root"
    run_sweep("tsweep", module, root, train_fn=FakeTrain(fail={"w32"}), log=lambda m: None)
    index = json.loads((root / "index.json").read_text())
    assert index["points"]["w32"]["status"] == "failed"
    assert "RuntimeError: boom" in index["points"]["w32"]["error"]
    assert index["points"]["w48"]["status"] == "done"  # a failure does not stop the others

    again = FakeTrain()
    index = run_sweep("tsweep", module, root, train_fn=again, log=lambda m: None)
    assert again.calls == [(32, "w32")]
    assert index["points"]["w32"]["status"] == "done" and "error" not in index["points"]["w32"]


def test_a_preempted_point_stops_the_sweep_to_be_resumed(tmp_path):
    module = load_experiment(str(write_experiment(tmp_path, [])))
    fake = FakeTrain(preempt={"w32"})
    index = run_sweep("tsweep", module, tmp_path / "r", train_fn=fake, log=lambda m: None)
    assert fake.calls == [(32, "w32")]
    assert index["points"]["w32"]["status"] == "preempted"
    assert index["points"]["w48"]["status"] == "pending"


def test_only_runs_the_named_point_and_unknown_names_are_refused(tmp_path):
    module = load_experiment(str(write_experiment(tmp_path, [])))
    fake = FakeTrain()
    run_sweep("tsweep", module, tmp_path / "r", only=["w48"], train_fn=fake, log=lambda m: None)
    assert fake.calls == [(48, "w48")]
    with pytest.raises(ConfigError, match=r"--only \['w99'\]"):
        run_sweep("tsweep", module, tmp_path / "r", only=["w99"], train_fn=fake)


def test_a_bad_point_is_refused_before_anything_runs(tmp_path):
    module = load_experiment(str(write_experiment(tmp_path, [])))
    fake = FakeTrain()
    with pytest.raises(ConfigError, match=r"model\.d_modle"):
        run_sweep("tsweep", module, tmp_path / "r", extra=["model.d_modle=3"], train_fn=fake)
    assert fake.calls == []


@pytest.mark.slow  # ~36 s: trains real points; the sweep point and index tests here run by default
def test_sweep_cli_trains_real_points_and_lists_commands(tmp_path, capsys):
    tokenizer = make_tokenizer(tmp_path)
    overrides = [*TINY, f"data.tokenizer={tokenizer}", "train.steps=2", "data.eval_max_docs=1"]
    path = write_experiment(tmp_path, overrides)
    root = tmp_path / "root"
    assert cli.main(["sweep", str(path), "--root", str(root), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(
        f"jaxlm train {path} --workdir {root / 'w32'} --set model.d_model=32"
    )
    assert cli.main(["sweep", str(path), "--root", str(root)]) == 0
    index = json.loads((root / "index.json").read_text())
    for name in ("w32", "w48"):
        entry = index["points"][name]
        assert entry["status"] == "done" and entry["steps"] == 2
        assert entry["eval_loss"] > 0
        assert (root / name / "metrics.jsonl").is_file()
