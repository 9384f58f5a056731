"""experiments/context_extension.py end to end, shrunk: a tiny base model, two
fine-tuning steps per RoPE setting, four evaluation documents.

Checks the files it promises (plot as PNG and SVG, summary, raw curves), that every
variant is evaluated out to E * T on the same documents, that each fine-tune ran with
its own RoPE setting at the longer length from the base export, and that the summary
windows are the means of the curves.
"""

import json

import numpy as np
import pytest

from experiments import context_extension
from jaxlm.checkpointing.params_io import read_params_config

T, E = 32, 4
SHRINK = [
    "--seq-len", str(T), "--extend", str(E), "--base-steps", "4", "--finetune-steps", "2",
    "--finetune-batch", "8", "--eval-docs", "4", "--eval-batch", "3", "--smooth", "4",
    "--set", "model.vocab_size=512", "--set", "data.tokenizer_vocab_size=512",
    "--set", "data.tokenizer_max_chars=300000", "--set", "model.d_model=64",
    "--set", "model.n_layers=2", "--set", "data.batch_size=8",
    "--set", "data.eval_max_docs=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("context_extension")
    assert context_extension.main(["--workdir", str(root), *SHRINK]) == 0
    return root


@pytest.mark.slow
def test_experiment_writes_plot_summary_and_curves(run, capsys):
    for name in ("position_loss.png", "position_loss.svg"):
        assert (run / name).stat().st_size > 1000
    assert (run / "position_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (run / "position_loss.svg").read_bytes()[:2000]
    summary = json.loads((run / "context_extension_summary.json").read_text())
    curves = json.loads((run / "position_curves.json").read_text())
    names = [f"{m}{s}" for m in ("none", "linear", "ntk", "yarn") for s in ("", "+ft")]
    assert sorted(summary["variants"]) == sorted(curves) == sorted(names)
    assert summary["eval_docs"] == 4 and summary["seq_len"] == T and summary["extend"] == E
    spans = {"[0,32)": (0, 32), "[32,64)": (32, 64), "[64,128)": (64, 128)}
    for name, row in summary["variants"].items():
        curve = np.asarray(curves[name])
        assert curve.shape == (E * T,) and np.all(np.isfinite(curve))
        for span, (a, b) in spans.items():
            assert row[span] == pytest.approx(curve[a:b].mean(), abs=1e-4)
    # Scaling changes the base model's function: the curves are not all one curve.
    assert np.abs(np.subtract(curves["linear"], curves["none"])).max() > 0
    # A second run finds every stage done and only re-evaluates.
    assert context_extension.main(["--workdir", str(run), *SHRINK]) == 0
    again = json.loads((run / "context_extension_summary.json").read_text())
    assert again["variants"] == summary["variants"]
    assert again["seconds"]["base"] == 0.0 and again["seconds"]["ft_yarn"] == 0.0
    assert "YaRN + fine-tune" in capsys.readouterr().out


@pytest.mark.slow
def test_finetunes_start_from_the_base_with_their_rope_setting(run):
    base = read_params_config(run / "base_export")
    assert base.model.rope_scaling == "none" and base.model.max_seq_len == T
    for method in ("none", "linear", "ntk", "yarn"):
        cfg = read_params_config(run / f"ft_{method}_export")
        assert cfg.model.rope_scaling == method
        assert cfg.model.rope_scaling_factor == (1.0 if method == "none" else float(E))
        assert cfg.model.rope_original_max_len == (T if method == "yarn" else 0)
        assert cfg.data.seq_len == cfg.model.max_seq_len == E * T
        assert cfg.train.init_from == str(run / "base_export")
        records = (run / f"ft_{method}" / "metrics.jsonl").read_text().splitlines()
        assert any(json.loads(r).get("step") == 2 for r in records)
