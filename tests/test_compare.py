"""`jaxlm compare`: figures and final-metrics tables for finished, running and NaN runs."""

import csv
import json
import math

import numpy as np
import pytest

from jaxlm import cli
from jaxlm.analysis.compare import load_run, smooth
from jaxlm.config import Config, DataConfig, ModelConfig
from jaxlm.errors import InputError
from jaxlm.models.flops import flops_per_token
from jaxlm.training.metrics import MetricsWriter

MODEL = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)
BATCH, SEQ = 4, 32


def write_config(workdir, model=MODEL, fmt="text"):
    cfg = Config(
        model=model,
        data=DataConfig(
            batch_size=BATCH, seq_len=SEQ, format=fmt, tokenizer_vocab_size=model.vocab_size
        ),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json())
    return cfg


def write_metrics(workdir, records):
    writer = MetricsWriter(workdir, tensorboard=False)
    for step, split, values in records:
        writer.write(step, split, values)
    writer.close()


def train_record(step, loss, *, new_format, step_time=0.5, mfu=0.25, interval=10):
    values = {"loss": loss, "grad_norm": 1.0, "lr": 1e-3, "step_time_s": step_time, "mfu": mfu}
    values["tokens_per_s"] = BATCH * SEQ / step_time
    if new_format:
        tokens = step * BATCH * SEQ
        values.update(tokens_seen=tokens, flops=tokens * 1e6, elapsed_s=3.0 + step * step_time)
    return (step, "train", values)


@pytest.fixture
def three_runs(tmp_path):
    """finished (new format), running (old format, a line still being written), NaN."""
    done, running, diverged = tmp_path / "done", tmp_path / "running", tmp_path / "diverged"
    write_config(done)
    records = [train_record(s, 5.0 - s / 100, new_format=True) for s in (10, 20, 30, 40)]
    records.insert(
        2,
        (20, "eval", {"loss": 4.9, "bits_per_byte": 1.5, "tokens": 777,
                      "tokens_seen": 20 * BATCH * SEQ, "flops": 20 * BATCH * SEQ * 1e6,
                      "elapsed_s": 14.0}),
    )  # fmt: skip
    records.append(
        (40, "eval", {"loss": 4.7, "bits_per_byte": 1.4, "tokens": 777,
                      "tokens_seen": 40 * BATCH * SEQ, "flops": 40 * BATCH * SEQ * 1e6,
                      "elapsed_s": 25.0}),
    )  # fmt: skip
    records.append((40, "summary", {"wall_s": 26.0, "goodput": 0.8, "steps": 40, "preempted": 0}))
    write_metrics(done, records)

    write_config(running)
    write_metrics(
        running,
        [
            (0, "eval", {"loss": 6.3, "bits_per_byte": 2.0, "tokens": 999.0, "eval_s": 2.0}),
            train_record(10, 6.0, new_format=False, step_time=0.5, mfu=0.2),
            train_record(20, 5.5, new_format=False, step_time=0.25, mfu=0.4),
            train_record(25, 5.25, new_format=False, step_time=1.0, mfu=0.3),
        ],
    )
    with (running / "metrics.jsonl").open("a") as f:
        f.write('{"step": 30, "split": "train", "lo')  # cut short: the run is writing

    write_config(diverged)
    write_metrics(
        diverged,
        [
            train_record(10, 4.0, new_format=True),
            train_record(20, 3.5, new_format=True),
            train_record(30, float("nan"), new_format=True),
        ],
    )
    return done, running, diverged


def read_csv(path):
    with path.open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_compare_writes_figures_and_tables_with_the_runs_values(three_runs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", *map(str, three_runs), "--out", str(out), "--smooth", "0.6", "--log-x"]
    assert cli.main(argv) == 0
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "loss_curves.svg").read_text()
    md = (out / "final_metrics.md").read_text()
    assert md in capsys.readouterr().out
    assert "| done | finished | 40 |" in md and "| 4.7000 |" in md
    assert "| diverged | NaN at step 30 | 30 | nan |" in md
    assert "running/metrics.jsonl:5: last line incomplete" in md
    assert "tokens/FLOPs derived from config.json" in md

    rows = read_csv(out / "final_metrics.csv")
    assert list(rows) == ["done", "running", "diverged"]
    done = rows["done"]
    assert done["status"] == "finished" and int(done["steps"]) == 40
    assert float(done["final_train_loss"]) == pytest.approx(4.6)
    assert float(done["final_eval_loss"]) == 4.7 and float(done["bits_per_byte"]) == 1.4
    assert float(done["tokens"]) == 40 * BATCH * SEQ
    assert float(done["flops"]) == 40 * BATCH * SEQ * 1e6
    assert float(done["wall_s"]) == 25.0  # the last logged elapsed_s
    assert float(done["mean_mfu"]) == pytest.approx(0.25) and float(done["goodput"]) == 0.8

    # Old format: tokens, FLOPs and time derived; the eval record's own "tokens" (held-out
    # token count) is not training progress.
    running = rows["running"]
    assert running["status"] == "in progress" and int(running["steps"]) == 25
    assert float(running["final_train_loss"]) == 5.25
    assert float(running["final_eval_loss"]) == 6.3 and float(running["bits_per_byte"]) == 2.0
    assert float(running["tokens"]) == 25 * BATCH * SEQ
    assert float(running["flops"]) == pytest.approx(25 * BATCH * SEQ * flops_per_token(MODEL, SEQ))
    assert float(running["wall_s"]) == pytest.approx(2.0 + 10 * 0.5 + 10 * 0.25 + 5 * 1.0)
    assert float(running["mean_mfu"]) == pytest.approx(0.3)
    assert running["goodput"] == ""

    diverged = rows["diverged"]
    assert diverged["status"] == "NaN at step 30" and math.isnan(
        float(diverged["final_train_loss"])
    )
    assert diverged["final_eval_loss"] == "" and float(diverged["tokens"]) == 30 * BATCH * SEQ


def test_nan_run_is_drawn_up_to_the_nan(three_runs):
    run = load_run(three_runs[2])
    assert run.nan_step == 30
    np.testing.assert_array_equal(run.train["step"], [10, 20])
    np.testing.assert_array_equal(run.train["loss"], [4.0, 3.5])


def test_old_run_axes_are_derived(three_runs):
    run = load_run(three_runs[1])
    np.testing.assert_array_equal(run.train["tokens"], np.array([10, 20, 25]) * BATCH * SEQ)
    np.testing.assert_allclose(run.train["elapsed_s"], [7.0, 9.5, 14.5])
    np.testing.assert_array_equal(run.eval["tokens"], [0.0])  # not the logged 999


def test_preference_run_counts_both_rows(tmp_path):
    write_config(tmp_path, fmt="preference")
    write_metrics(tmp_path, [train_record(10, 0.69, new_format=False)])
    assert load_run(tmp_path).final["tokens"] == 10 * BATCH * SEQ * 2


def test_resumed_run_supersedes_relogged_steps(tmp_path):
    write_config(tmp_path)
    first = [train_record(s, 9.0, new_format=True) for s in (10, 20, 30)]
    second = [train_record(s, 5.0, new_format=True) for s in (20, 30, 40)]
    write_metrics(tmp_path, [*first, (30, "summary", {"preempted": 1}), *second])
    run = load_run(tmp_path)
    np.testing.assert_array_equal(run.train["step"], [10, 20, 30, 40])
    np.testing.assert_array_equal(run.train["loss"], [9.0, 5.0, 5.0, 5.0])
    assert run.status == "in progress"  # the summary came before the resumed steps
    assert any("step 20 logged again" in n for n in run.notes)


def test_preempted_status(tmp_path):
    write_config(tmp_path)
    write_metrics(
        tmp_path, [train_record(10, 3.0, new_format=True), (10, "summary", {"preempted": 1})]
    )
    assert load_run(tmp_path).status == "preempted"


def test_smoothing():
    np.testing.assert_allclose(smooth(np.full(5, 3.0), 0.9), 3.0)  # bias-corrected EMA
    np.testing.assert_allclose(smooth(np.array([1.0, 0.0]), 0.5), [1.0, 1 / 3])
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0]), 2), [1.0, 2.0, 4.0])
    with pytest.raises(InputError, match=r"--smooth 2\.5"):
        smooth(np.ones(3), 2.5)


def test_errors_name_the_path(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli.main(["compare", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: no such run directory" in capsys.readouterr().err

    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}: not found" in capsys.readouterr().err

    (tmp_path / "metrics.jsonl").write_text("garbage\n")
    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}: no metrics records" in capsys.readouterr().err

    write_metrics(tmp_path, [train_record(10, 3.0, new_format=True)])
    argv = ["compare", str(tmp_path), "--out", str(tmp_path / "o"), "--labels", "a,b"]
    assert cli.main(argv) == 2
    assert "--labels has 2 names for 1 runs" in capsys.readouterr().err

    (tmp_path / "config.json").write_text("{")
    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'config.json'}:1: not valid JSON" in capsys.readouterr().err


def test_bad_model_in_config_names_the_file(tmp_path):
    write_config(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["n_kv_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_metrics(tmp_path, [train_record(10, 3.0, new_format=False)])
    with pytest.raises(InputError, match=r"config\.json: model\.n_heads=4 must be a multiple"):
        load_run(tmp_path)


def test_end_of_run_plot_reads_runs_like_compare(tmp_path):
    from jaxlm.analysis.plotting import plot_loss_curves

    write_config(tmp_path)
    first = [train_record(s, 9.0, new_format=True) for s in (10, 20, 30)]
    second = [train_record(s, 5.0, new_format=True) for s in (20, 30)]
    write_metrics(tmp_path, [*first, *second])
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "spl')
    png = plot_loss_curves([tmp_path / "metrics.jsonl"], tmp_path / "c.png", x_axis="tokens")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_file_that_is_not_metrics_is_refused(tmp_path):
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(InputError, match=r"index\.json: not a run directory"):
        load_run(tmp_path / "index.json")


def test_any_logged_metric_is_drawn_against_step(tmp_path, capsys):
    """`jaxlm compare --metrics reward,accuracy` on RL-like runs: train lines and eval
    markers of metrics other than the loss, one panel each (metrics.png); an eval record
    without a loss (an RL run's) still counts for the metric panels."""
    for name, rewards in (("a", [0.1, 0.3, 0.5]), ("b", [0.2, 0.2, 0.2])):
        workdir = tmp_path / name
        write_config(workdir)
        records = []
        for step, reward in zip((10, 20, 30), rewards, strict=True):
            step_, split, values = train_record(step, 0.01, new_format=True)
            records.append((step_, split, {**values, "reward": reward}))
        records.append((30, "eval", {"accuracy": rewards[-1], "reward": rewards[-1]}))
        write_metrics(workdir, records)
    run = load_run(tmp_path / "a")
    np.testing.assert_array_equal(run.metric("train", "reward")[1], [0.1, 0.3, 0.5])
    np.testing.assert_array_equal(run.metric("eval", "accuracy")[0], [30])
    assert run.metric("train", "accuracy")[0].size == 0
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]
    assert cli.main([*argv, "--metrics", "reward,accuracy,not_logged"]) == 0
    assert (out / "metrics.png").stat().st_size > 0 and (out / "metrics.svg").is_file()
    assert "not_logged" in (out / "metrics.svg").read_text()  # its panel says so
