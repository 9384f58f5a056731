"""Every experiment module: documented, its config (and each sweep point's) validates, and
it trains 2 steps when shrunk to a tiny model on a slice of its data.

Shrinking keeps what makes the experiment itself (data format, init_from, mesh, dtype,
remat, schedule) and replaces only sizes, so a broken experiment fails here rather
than hours into a run. Experiments with their own end-to-end test (the post-training
chain, context extension) still get the config check.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.runs import make_tokenizer

from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, apply_overrides
from jaxlm.models.params import init_params
from jaxlm.training.experiment import load_experiment, resolve_config
from jaxlm.training.loop import train
from jaxlm.training.sweep import point_config, sweep_points

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("[!_]*.py"))

SHRINK = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.vocab_size=384",
    "model.max_seq_len=64",
    "data.tokenizer_vocab_size=384",
    "data.seq_len=64",
    "data.batch_size=8",
    "data.eval_max_docs=2",
    "data.reader_threads=1",
    "train.steps=2",
    "train.eval_every=0",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "train.progress_bar=false",
    "train.generate_prompt=",
    "train.peak_flops=1e12",
    "optim.warmup_steps=1",
]


def test_there_are_the_experiments_the_docs_promise():
    assert {
        "quickstart",
        "posttrain_chain",
        "sft",
        "dpo",
        "stdlib_sizes",
        "scaling_sweep",
        "context_extension",
        "llama_1b",
        "moe_vs_dense",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_and_sweep_points_validate_and_the_module_is_documented(name):
    module = load_experiment(str(REPO / "experiments" / f"{name}.py"))
    doc = module.__doc__ or ""
    assert len(doc.strip().splitlines()) >= 3, f"{name}: say what it is for and how to run it"
    assert "jaxlm " in doc or "python -m experiments." in doc, f"{name}: no command in docstring"
    assert isinstance(resolve_config(module, [], name), Config)
    if hasattr(module, "sweep"):
        points = sweep_points(module)
        assert len(points) >= 2
        configs = [point_config(module, p, []) for p in points]
        assert len({c.to_json() for c in configs}) == len(configs)  # points differ


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A small tokenizer, a tiny base export and small SFT / preference files."""
    from jaxlm.data.stdlib_tasks import write_posttrain_sets

    root = tmp_path_factory.mktemp("experiments")
    tokenizer = make_tokenizer(root)
    data = root / "posttrain"
    write_posttrain_sets(data, max_pairs=40)
    for name in ("sft_train", "sft_val", "dpo_train", "dpo_val"):  # keep them small
        path = data / f"{name}.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:24]))
    from experiments.rl_arithmetic import write_data

    write_data(data, train_problems=64, held_out=8)  # rl_train.jsonl, rl_held_out.jsonl
    cfg = apply_overrides(Config(), [*SHRINK, f"data.tokenizer={tokenizer}"])
    params = jax.tree.map(np.asarray, init_params(cfg.model, jax.random.key(0)))
    export = save_params(root / "export", params, cfg, tokenizer=tokenizer)
    return {"tokenizer": tokenizer, "data": data, "export": export}


def shrunk_overrides(name: str, cfg: Config, shared) -> list[str]:
    extra = [f"data.tokenizer={shared['tokenizer']}"]
    data = shared["data"]
    if cfg.data.format != "text":  # whole functions: rows long enough to keep most
        extra += ["data.seq_len=256", "model.max_seq_len=256"]
    if cfg.data.format == "chat":
        extra += [
            f"data.sources=jsonl:{data / 'sft_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'sft_val.jsonl'}",
        ]
    elif cfg.data.format == "preference":
        extra += [
            f"data.sources=jsonl:{data / 'dpo_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'dpo_val.jsonl'}",
            "data.batch_size=8",
        ]
    elif cfg.data.format == "rl":
        extra += [
            f"data.sources=jsonl:{data / 'rl_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'rl_held_out.jsonl'}",
            "data.batch_size=8",
            "rl.group_size=2",
            "rl.max_response_tokens=4",
            "rl.eval_samples=2",
            "model.d_ff=0",  # the shared export's width (the RL experiments set their own)
            "rl.reward_model=",  # rlhf_arithmetic's reward model is another stage's export
            "rl.rewards=answer",
        ]
    else:
        extra += ["data.sources=stdlib", "data.eval_sources="]
    if cfg.train.init_from:
        extra.append(f"train.init_from={shared['export']}")
    if cfg.distill.enabled:  # distill_stdlib's teacher is another stage's run
        extra.append(f"distill.teacher={shared['export']}")
    if cfg.model.rope_scaling != "none" and cfg.model.rope_original_max_len:
        extra.append("model.rope_original_max_len=32")
    return [*SHRINK, *extra]  # later wins


# The longest to shrink and run (24-71 s each on 2 cores) run with the slow tests; the
# default run trains every other experiment, and the config/docstring test above covers
# every experiment.
# posttrain_chain: test_console_summaries.py runs the same pretrain -> SFT -> DPO chain by the CLI.
# hf_finetune: tests/test_hf_finetune_roundtrip.py runs its import -> SFT -> export path.
SLOW_EXPERIMENTS = {"context_extension", "llama_1b", "dpo", "posttrain_chain", "hf_finetune"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPERIMENTS else n for n in EXPERIMENTS],
)
def test_each_experiment_trains_two_shrunk_steps(name, shared, tmp_path):
    module = load_experiment(str(REPO / "experiments" / f"{name}.py"))
    cfg = resolve_config(module, [], name)
    cfg = apply_overrides(cfg, shrunk_overrides(name, cfg, shared))
    result = train(cfg, tmp_path / name)
    assert result.steps == 2
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_the_cli_loads_experiments_that_import_their_siblings():
    """`jaxlm sweep scaling_sweep --list` as the console script runs it: the working
    directory is not on sys.path (-P), yet scaling_sweep imports experiments.quickstart."""
    import subprocess
    import sys

    code = "import sys; from jaxlm.cli import main; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-P", "-c", code, "sweep", "scaling_sweep", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(load_experiment(str(REPO / "experiments/scaling_sweep.py")).sweep())
    assert all(line.startswith("jaxlm train scaling_sweep --workdir ") for line in lines)
