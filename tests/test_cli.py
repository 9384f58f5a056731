"""The `jaxlm` command: experiment lookup, config printing, and errors that name the key."""

import json
import os

import pytest

from jaxlm import cli


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_config_prints_resolved_overrides(capsys):
    assert cli.main(["config", "quickstart", "--set", "optim.lr=0.01"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.01 and cfg["name"] == "quickstart"


def test_unknown_key_is_an_error_naming_the_closest(capsys):
    assert cli.main(["config", "quickstart", "--set", "optim.lrate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrate'" in err and "did you mean 'optim.lr'" in err


def test_unknown_experiment_names_the_closest(capsys):
    assert cli.main(["train", "quickstrat"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'quickstrat'" in err and "did you mean 'quickstart'" in err


def test_presets_lists_exact_sizes(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "25,829,888" in out
