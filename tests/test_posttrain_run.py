"""SFT through the training loop: data.format=chat from a pretrained workdir.

The held-out loss must count exactly the assistant tokens of the held-out
conversations (computed here independently of the pipeline), the tokenizer must come
from train.init_from, and the pipeline's counts must reach metrics.jsonl.
"""

import json

import numpy as np
import pytest
from test_train_loop import SMALL

from jaxlm.config import Config, apply_overrides
from jaxlm.data.chat import encode_conversation, parse_conversation
from jaxlm.data.sources.split import kept_indices, record_keys
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import InputError
from jaxlm.training.loop import train

QUESTIONS = ["What does len do?", "How do I sort a list?", "What is a dict?", "Name a loop."]
ANSWERS = ["It counts items.", "Use sorted(xs).", "A mapping of keys.", "for x in xs: ..."]


def chat_file(path, n=40):
    lines = []
    for i in range(n):
        q, a = QUESTIONS[i % 4], ANSWERS[i % 4]
        turns = [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}]
        lines.append(json.dumps({"conversations": turns}))
    lines.append(json.dumps({"conversations": [{"role": "user", "content": "no answer"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("base")
    train(apply_overrides(Config(), [*SMALL, "train.steps=3", "model.max_seq_len=64"]), workdir)
    return workdir


def test_sft_trains_and_evaluates_exactly_the_held_out_assistant_tokens(pretrained, tmp_path):
    data = chat_file(tmp_path / "chat.jsonl")
    overrides = [
        *SMALL,
        "data.format=chat",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.25",
        f"train.init_from={pretrained}",
        "train.log_every=1",
        "train.eval_at_start=true",
        "model.max_seq_len=64",
        "data.seq_len=64",
    ]
    result = train(apply_overrides(Config(), overrides), tmp_path / "sft")

    tokenizer = Tokenizer.load(pretrained / "tokenizer.model")
    records = [json.loads(line) for line in data.read_text().splitlines()]
    held_out = kept_indices(record_keys("chat.jsonl", len(records)), "validation", 0.25)
    expected = 0
    for i in held_out:
        enc = encode_conversation(parse_conversation(records[i]), tokenizer, max_len=64)
        expected += 0 if enc is None else int(np.sum(enc.train_token))
    assert expected > 0 and result.final_eval["tokens"] == expected

    lines = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    evals = [json.loads(x) for x in lines if '"eval"' in x]
    assert [e["step"] for e in evals] == [0, 5]  # the base model's, then the SFT model's
    assert evals[0]["tokens"] == expected and evals[-1]["loss"] < evals[0]["loss"]
    summary = [json.loads(x) for x in lines if '"summary"' in x][-1]
    assert summary["data_chat_encoded"] > 0
    # The one conversation without an assistant turn is skipped and counted, if it
    # fell in the training split.
    in_train = len(records) - 1 not in set(held_out.tolist())
    assert summary.get("data_chat_skipped_no_assistant", 0) >= int(in_train)


def test_post_training_without_a_tokenizer_is_refused(tmp_path):
    data = chat_file(tmp_path / "chat.jsonl")
    cfg = apply_overrides(Config(), [*SMALL, "data.format=chat", f"data.sources=jsonl:{data}"])
    with pytest.raises(InputError, match=r"data.format=chat needs the model's tokenizer"):
        train(cfg, tmp_path / "run")


def preference_file(path, n=40):
    lines = []
    for i in range(n):
        q, a = QUESTIONS[i % 4], ANSWERS[i % 4]
        prompt = [{"role": "user", "content": f"{q} ({i})"}]
        chosen = [*prompt, {"role": "assistant", "content": a}]
        rejected = [*prompt, {"role": "assistant", "content": ANSWERS[(i + 1) % 4]}]
        lines.append(json.dumps({"chosen": chosen, "rejected": rejected}))  # MiniMind's format
    path.write_text("\n".join(lines) + "\n")
    return path


# sigmoid (DPO) runs by default; IPO and SimPO (~14 s each) with the slow tests: their
# formulas are checked against references in test_preference_losses.py.
@pytest.mark.parametrize(
    "loss", ["sigmoid", *(pytest.param(x, marks=pytest.mark.slow) for x in ("ipo", "simpo"))]
)
def test_preference_training_raises_held_out_accuracy_from_the_start(pretrained, tmp_path, loss):
    data = preference_file(tmp_path / "dpo.jsonl")
    overrides = [
        *SMALL,
        "data.format=preference",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.25",
        f"train.init_from={pretrained}",
        "train.eval_at_start=true",
        "train.steps=60",
        "model.max_seq_len=64",
        "data.seq_len=64",
        f"preference.loss={loss}",
        "preference.beta=0.5",
        "optim.lr=0.02",
        "optim.schedule=constant",
    ]
    result = train(apply_overrides(Config(), overrides), tmp_path / "dpo")
    lines = (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()
    evals = [json.loads(x) for x in lines if '"eval"' in x]
    assert [e["step"] for e in evals] == [0, 60]
    assert evals[0]["pairs"] == evals[1]["pairs"] > 0
    if loss != "simpo":  # policy == reference at the start: every implied reward is 0,
        # every pair a tie, counted half
        assert evals[0]["accuracy"] == 0.5 and evals[0]["margin"] == 0.0
        assert evals[0]["reward_ties"] == 1.0
    assert result.final_eval["accuracy"] > max(evals[0]["accuracy"], 0.75)


# Slow: ~35 s: two DPO runs; test_workdir_ownership.py builds and checks a precomputed table by
# default
@pytest.mark.slow
def test_precomputed_reference_log_probs_train_like_the_reference_model(
    pretrained, tmp_path, capsys
):
    data = preference_file(tmp_path / "dpo.jsonl")
    overrides = [
        *SMALL,
        "data.format=preference",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.25",
        f"train.init_from={pretrained}",
        "train.steps=6",
        "train.log_every=1",
        "model.max_seq_len=64",
        "data.seq_len=64",
        "optim.lr=0.02",
    ]
    in_step = train(apply_overrides(Config(), overrides), tmp_path / "model")
    pre_cfg = apply_overrides(Config(), [*overrides, "preference.reference=precomputed"])
    pre = train(pre_cfg, tmp_path / "pre")
    table = tmp_path / "pre" / "reference_logps.npz"
    with np.load(table, allow_pickle=False) as saved:
        assert len(saved["where"]) == 40  # every line: training and held-out pairs
    np.testing.assert_allclose(pre.train_losses, in_step.train_losses, rtol=1e-5)
    for key in ("loss", "accuracy", "margin"):
        np.testing.assert_allclose(pre.final_eval[key], in_step.final_eval[key], rtol=1e-4)

    # A longer run in the same workdir resumes and reads the table back.
    capsys.readouterr()
    longer = [*overrides, "preference.reference=precomputed", "train.steps=8"]
    longer.append("train.allow_config_change=train.steps")
    train(apply_overrides(Config(), longer), tmp_path / "pre")
    assert f"reference log-probs from {table}" in capsys.readouterr().out


# Slow: ~43 s; test_lora.py covers adapter-only updates and the merged export by default
@pytest.mark.slow
def test_lora_sft_then_lora_dpo_train_only_adapters_and_export_merged(pretrained, tmp_path):
    """LoRA: the base stays bitwise the pretrained params; the merged export evaluates
    like the adapted model; DPO with LoRA uses the base as its reference (no copy)."""
    from jaxlm import cli
    from jaxlm.checkpointing.params_io import load_params, restore_latest_params
    from jaxlm.models.params import count_lora

    chat = chat_file(tmp_path / "chat.jsonl")
    common = [*SMALL, "model.max_seq_len=64", "data.seq_len=64", "data.val_fraction=0.25"]
    lora = ["model.lora_rank=4", "model.lora_alpha=8", "optim.lr=0.02", "train.steps=8"]
    sft = [*common, *lora, "data.format=chat", f"data.sources=jsonl:{chat}"]
    sft_cfg = apply_overrides(Config(), [*sft, f"train.init_from={pretrained}"])
    result = train(sft_cfg, tmp_path / "sft")

    # Only the adapters trained: the checkpoint's frozen base is the pretrained params.
    from jaxlm.checkpointing.manager import Checkpointer

    checkpointer = Checkpointer(tmp_path / "sft" / "checkpoints", read_only=True)
    saved = checkpointer.manager.item_metadata(8)["state"]
    checkpointer.close()
    saved = getattr(saved, "tree", saved)
    n_adapters, _ = count_lora(sft_cfg.model)
    adapter_sizes = [int(np.prod(x.shape)) for x in jax_leaves(saved["params"])]
    assert sum(adapter_sizes) == n_adapters
    base, _, _ = restore_latest_params(pretrained)
    export = tmp_path / "sft_export"
    assert cli.main(["export", str(tmp_path / "sft"), str(export)]) == 0
    merged, merged_cfg = load_params(export)
    assert merged_cfg.model.lora_rank == 0
    changed = [
        not np.array_equal(np.asarray(m), np.asarray(b))
        for m, b in zip(jax_leaves(merged), jax_leaves(base), strict=True)
    ]
    assert any(changed) and not all(changed)  # adapted projections moved; norms, embed not

    # The merged export, as a plain model, evaluates like the LoRA model did.
    check = apply_overrides(
        Config(),
        [
            *common,
            "data.format=chat",
            f"data.sources=jsonl:{chat}",
            "train.steps=1",
            f"train.init_from={export}",
            "train.eval_at_start=true",
            "optim.lr=0",
        ],
    )
    train(check, tmp_path / "check")
    lines = (tmp_path / "check" / "metrics.jsonl").read_text().splitlines()
    first = next(json.loads(x) for x in lines if '"eval"' in x)
    assert first["step"] == 0
    assert first["loss"] == pytest.approx(result.final_eval["loss"], rel=1e-5)

    # LoRA DPO from the merged SFT export: reference = base with adapters off.
    pairs = preference_file(tmp_path / "dpo.jsonl")
    dpo = [*common, *lora, "data.format=preference", f"data.sources=jsonl:{pairs}"]
    dpo_cfg = apply_overrides(
        Config(),
        [*dpo, f"train.init_from={export}", "train.eval_at_start=true", "train.log_every=1"],
    )
    train(dpo_cfg, tmp_path / "dpo")
    lines = (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()
    evals = [json.loads(x) for x in lines if '"eval"' in x]
    assert evals[0]["accuracy"] == 0.0 and evals[0]["margin"] == 0.0  # policy == reference
    steps = [json.loads(x) for x in lines if '"train"' in x]
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # adapters start at 0
    assert steps[-1]["accuracy"] > 0.5 and steps[-1]["margin"] > 0

    adapters_dir = tmp_path / "adapters"
    assert cli.main(["export", str(tmp_path / "dpo"), str(adapters_dir), "--adapters-only"]) == 0
    adapters, adapters_cfg = load_params(adapters_dir)
    assert adapters_cfg.model.lora_rank == 4
    assert sum(int(np.prod(np.shape(x))) for x in jax_leaves(adapters)) == n_adapters


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
