"""Reward models: the Bradley-Terry loss, where the reward is read, training, export,
loading, `jaxlm reward score` and the Hugging Face sequence-classification export.

The run learns pairs whose chosen response is digits and whose rejected response is
letters, from a plain LM's params (train.init_from: the score head starts at zero, so
the step-0 eval is all ties). Its export must load and score held-out pairs exactly as
the run's own eval did, through the command as well.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from helpers.batches import ByteTokenizer
from helpers.runs import make_tokenizer
from safetensors.numpy import load_file

from jaxlm.checkpointing.params_io import restore_params, save_params
from jaxlm.cli import main
from jaxlm.config import Config, ConfigError, DataConfig, ModelConfig, apply_overrides
from jaxlm.data.chat import Message, encode_conversation
from jaxlm.data.preference import preference_dataset
from jaxlm.data.tokenizer import IM_END_ID, PAD_ID, Tokenizer
from jaxlm.errors import InputError
from jaxlm.inference.loading import load_model
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.sharding import make_mesh
from jaxlm.training.loop import train
from jaxlm.training.reward_model_steps import (
    bradley_terry_sums,
    pair_means,
    pair_rewards,
    response_end,
    sequence_scores,
)
from jaxlm.training.setup import init_params_from

TINY = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=384, max_seq_len=48)


def _random(params: nnx.State, seed: int) -> nnx.State:
    """Every leaf random (the score head too: a zero head would score every input 0)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    drawn = [
        0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, drawn)


def test_bradley_terry_loss_and_accuracy_match_a_numpy_reference():
    rewards = np.array(
        [
            [1.0, -0.5],
            [0.2, 0.7],
            [0.3, 0.3],
            [2.0, 1.0],
            [-1.0, -1.0],
            [5.0, -5.0],
            [0.0, 9.0],
            [4.0, 4.0],
        ],
        np.float32,
    )
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 1], bool)  # 5, 6: filler pairs count nothing
    w = 0.05
    sums = bradley_terry_sums(jnp.asarray(rewards), jnp.asarray(valid), w)
    means = pair_means(sums)
    c, r = rewards[valid, 0].astype(np.float64), rewards[valid, 1].astype(np.float64)
    loss = np.mean(np.log1p(np.exp(-(c - r))) + w * (c + r) ** 2)
    accuracy = np.mean((c > r) + 0.5 * (c == r))  # 2 right, 1 wrong, 3 ties (1.5)
    assert accuracy == pytest.approx(3.5 / 6)
    np.testing.assert_allclose(float(sums["loss_sum"] / sums["pairs"]), loss, rtol=1e-6)
    np.testing.assert_allclose(float(means["accuracy"]), accuracy, rtol=1e-6)
    np.testing.assert_allclose(float(means["chosen_reward"]), c.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(means["rejected_reward"]), r.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(means["margin"]), (c - r).mean(), rtol=1e-6)
    assert float(sums["pairs"]) == 6 and float(sums["ties"]) == 3


def _byte_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [
        {"prompt": "pick", "chosen": "1234", "rejected": "abcdefg"},
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "99"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = preference_dataset(
        [path], ByteTokenizer(), seq_len=40, batch_size=8, shuffle=False, repeat=False
    )
    (batch,) = list(data)
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def test_reward_is_read_at_the_response_end_token(tmp_path):
    model = ModelConfig(**TINY, score_head=True)
    graphdef, _ = abstract_model(model)
    params = _random(init_params(model, jax.random.key(0)), 1)
    batch = _byte_pairs(tmp_path)

    def rewards(b):
        return np.asarray(
            pair_rewards(graphdef, params, {k: jnp.asarray(v) for k, v in b.items()})[0]
        )

    base = rewards(batch)
    last, has = (
        np.asarray(x) for x in response_end(jnp.asarray(batch["loss_mask"].reshape(16, 40)))
    )
    last = last.reshape(8, 2)
    assert has.reshape(8, 2)[:2].all() and not has.reshape(8, 2)[2:].any()
    # The position whose input is the response's end token: the model has read it all.
    for b in range(2):
        for c in range(2):
            assert batch["tokens"][b, c, last[b, c]] == IM_END_ID
            assert (
                batch["loss_mask"][b, c, last[b, c] - 1] == 1
                and batch["loss_mask"][b, c, last[b, c]] == 0
            )

    after = {k: v.copy() for k, v in batch.items()}
    after["tokens"][0, 0, last[0, 0] + 1] += 7  # the newline after <|im_end|>
    after["tokens"][1, 1, last[1, 1] + 3] = 50  # padding
    np.testing.assert_array_equal(rewards(after), base)
    end = {k: v.copy() for k, v in batch.items()}
    end["tokens"][0, 0, last[0, 0]] = 60  # the end token itself
    end["tokens"][1, 1, last[1, 1] - 1] += 1  # the response's last content token
    changed = rewards(end) != base
    assert changed[0, 0] and changed[1, 1] and not changed[0, 1] and not changed[1, 0]

    # The scorer RL calls: any row, at a given index.
    rows = {
        k: jnp.asarray(batch[k].reshape(16, 40)) for k in ("tokens", "positions", "segment_ids")
    }
    scorer = jax.jit(functools.partial(sequence_scores, graphdef))
    got = scorer(
        params,
        rows["tokens"],
        rows["positions"],
        rows["segment_ids"],
        jnp.asarray(last.reshape(16)),
    )
    np.testing.assert_allclose(np.asarray(got).reshape(8, 2)[:2], base[:2], rtol=0, atol=1e-6)
    full = nnx.merge(graphdef, params).scores(
        rows["tokens"], positions=rows["positions"], segment_ids=rows["segment_ids"]
    )
    assert full.dtype == jnp.float32 and full.shape == (16, 40)


def test_response_end_is_one_past_the_last_supervised_position():
    mask = np.array(
        [
            [0, 1, 1, 0, 0, 0],  # last target at 2: its input (the last token) is at 3
            [0, 0, 0, 0, 0, 0],  # nothing supervised (a filler row): invalid
            [1, 0, 1, 0, 1, 0],  # a 0-weighted span inside the response changes nothing
            [0, 0, 0, 0, 1, 0],  # the last target a row can have (T - 2)
        ],
        np.float32,
    )
    last, has = (np.asarray(x) for x in response_end(jnp.asarray(mask)))
    np.testing.assert_array_equal(has, [True, False, True, True])
    np.testing.assert_array_equal(last[has], [3, 5, 5])


def test_lora_with_a_score_head_is_refused():
    with pytest.raises(ConfigError, match=r"score_head with model\.lora_rank"):
        ModelConfig(**TINY, score_head=True, lora_rank=4)


def test_reward_format_without_a_score_head_is_refused(tmp_path):
    overrides = [*(f"model.{k}={v}" for k, v in TINY.items()), "data.format=reward"]
    cfg = apply_overrides(Config(), [*overrides, f"data.sources=jsonl:{tmp_path / 'none'}"])
    with pytest.raises(InputError, match=r"data\.format=reward .*model\.score_head=true"):
        train(cfg, tmp_path / "run")


def _pair(i, rng):
    digits = "".join(str(d) for d in rng.integers(0, 10, 4))
    letters = "".join(chr(97 + int(x)) for x in rng.integers(0, 26, 4))
    return {"prompt": f"Reply to message {i}.", "chosen": digits, "rejected": letters}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, tokenizer path, Config, RunResult, LM params) of a reward run from an LM."""
    root = tmp_path_factory.mktemp("rm")
    tok = make_tokenizer(root)
    rng = np.random.default_rng(0)
    (root / "train.jsonl").write_text("".join(json.dumps(_pair(i, rng)) + "\n" for i in range(96)))
    (root / "eval.jsonl").write_text("".join(json.dumps(_pair(i, rng)) + "\n" for i in range(24)))
    lm = Config(model=ModelConfig(**TINY), data=DataConfig(tokenizer=str(tok), seq_len=48))
    lm_params = init_params(lm.model, jax.random.key(3))
    save_params(root / "lm", lm_params, lm, tokenizer=tok)
    overrides = [
        *(f"model.{k}={v}" for k, v in TINY.items()),
        "model.score_head=true",
        "data.format=reward",
        f"data.sources=jsonl:{root / 'train.jsonl'}",
        f"data.eval_sources=jsonl:{root / 'eval.jsonl'}",
        "data.seq_len=48",
        "data.batch_size=8",
        f"train.init_from={root / 'lm'}",
        "train.steps=40",
        "train.eval_every=0",
        "train.eval_at_start=true",
        "train.progress_bar=false",
        "train.generate_prompt=",
        "train.peak_flops=1e12",
        "optim.lr=0.01",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
        "reward.center_weight=0.01",
    ]
    cfg = apply_overrides(Config(), overrides)
    result = train(cfg, root / "run")
    return root, tok, cfg, result, lm_params


def test_training_raises_held_out_pair_accuracy_from_ties(trained):
    root, _, _, result, _ = trained
    lines = (root / "run" / "metrics.jsonl").read_text().splitlines()
    evals = [json.loads(x) for x in lines if '"eval"' in x]
    assert [e["step"] for e in evals] == [0, 40]
    # From an LM the head starts at zero: every pair a tie, counted half.
    assert (
        evals[0]["pairs"] == 24 and evals[0]["accuracy"] == 0.5 and evals[0]["reward_ties"] == 1.0
    )
    assert evals[0]["loss"] == pytest.approx(np.log(2), rel=1e-6)
    ev = result.final_eval
    assert ev["accuracy"] >= 0.9 and ev["margin"] > 1.0 and ev["loss"] < np.log(2) / 2
    train_lines = [json.loads(x) for x in lines if '"train"' in x]
    assert {"accuracy", "margin", "chosen_reward", "rejected_reward"} <= set(train_lines[-1])


def test_score_head_model_starts_from_a_plain_lm(trained):
    _, _, cfg, _, lm_params = trained
    mesh = make_mesh((1, 8, 1))
    shardings = param_shardings(abstract_model(cfg.model)[1], mesh)
    fresh = _random(init_params(cfg.model, jax.random.key(9)), 2)
    logged = []
    with jax.set_mesh(mesh):
        params = init_params_from(cfg, shardings, logged.append, fresh)
    assert "the score head starts at zero" in logged[0]
    flat = dict(nnx.to_flat_state(params))
    lm_flat = dict(nnx.to_flat_state(lm_params))
    assert set(flat) == set(lm_flat) | {("score",)}
    for path, value in lm_flat.items():
        np.testing.assert_array_equal(
            np.asarray(flat[path].get_value()), np.asarray(value.get_value())
        )
    np.testing.assert_array_equal(
        np.asarray(flat[("score",)].get_value()), np.asarray(fresh["score"].get_value())
    )


def test_export_loads_and_scores_as_the_run_evaluated(trained, tmp_path, capsys):
    root, _, _, result, _ = trained
    export = tmp_path / "export"
    assert main(["export", str(root / "run"), str(export)]) == 0
    restored, _, _ = restore_params(root / "run")
    model = load_model(export)
    assert model.cfg.model.score_head
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(model.params["score"].get_value())).max() > 0

    # Pairs scored by the command rank as the run's own eval ranked them.
    out = tmp_path / "scored.jsonl"
    capsys.readouterr()
    args = ["reward", "score", "--model", str(export), "--input", str(root / "eval.jsonl")]
    assert main([*args, "--output", str(out), "--batch-size", "6"]) == 0
    assert "pair accuracy" in capsys.readouterr().out
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    pairs = np.array([[s["chosen_score"], s["rejected_score"]] for s in scored])
    margin = pairs[:, 0] - pairs[:, 1]
    ev = result.final_eval
    assert len(pairs) == ev["pairs"] == 24
    assert np.mean((margin > 0) + 0.5 * (margin == 0)) == pytest.approx(ev["accuracy"], abs=1e-9)
    np.testing.assert_allclose(pairs[:, 0].mean(), ev["chosen_reward"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(margin.mean(), ev["margin"], rtol=1e-5, atol=1e-6)

    # Single responses (both record forms) score as that side of the pair.
    first = json.loads((root / "eval.jsonl").read_text().splitlines()[0])
    msgs = [
        {"role": "user", "content": first["prompt"]},
        {"role": "assistant", "content": first["rejected"]},
    ]
    singles = tmp_path / "singles.jsonl"
    singles.write_text(
        json.dumps({"prompt": first["prompt"], "response": first["chosen"]})
        + "\n\n"
        + json.dumps({"messages": msgs})
        + "\n"
        + json.dumps(first)
        + "\n"
    )
    capsys.readouterr()
    assert main(["reward", "score", "--model", str(export), "--input", str(singles)]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert "3 records, 4 responses" in captured.err and "1 pairs" in captured.err
    np.testing.assert_allclose(lines[0]["score"], scored[0]["chosen_score"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lines[1]["score"], scored[0]["rejected_score"], rtol=1e-6, atol=1e-6)
    assert lines[2]["chosen_score"] == pytest.approx(lines[0]["score"], abs=1e-6)

    # A bad record: one line naming file and line, and no output file.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(first) + "\n" + json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    failed = tmp_path / "failed.jsonl"
    capsys.readouterr()
    assert (
        main(
            [
                "reward",
                "score",
                "--model",
                str(export),
                "--input",
                str(bad),
                "--output",
                str(failed),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2:" in err and "expected one of" in err
    assert not failed.exists() and not list(tmp_path.glob("failed.jsonl*"))
    # A plain LM is not a reward model.
    assert main(["reward", "score", "--model", str(root / "lm"), "--input", str(singles)]) == 2
    assert "not a reward model" in capsys.readouterr().err


def test_hf_sequence_classification_export_gives_the_same_scores(tmp_path):
    tok = make_tokenizer(tmp_path)
    for family, extra in (
        ("Llama", dict(tie_embeddings=False)),
        ("Qwen2", dict(attention_bias=True)),
    ):
        model = ModelConfig(**TINY, score_head=True, **extra)
        cfg = Config(model=model, data=DataConfig(tokenizer=str(tok), seq_len=48))
        params = _random(init_params(model, jax.random.key(0)), 5)
        save_params(tmp_path / family / "jaxlm", params, cfg, tokenizer=tok)
        hf_dir = tmp_path / family / "hf"
        assert main(["convert", "--to-hf", str(tmp_path / family / "jaxlm"), str(hf_dir)]) == 0
        config = json.loads((hf_dir / "config.json").read_text())
        assert config["architectures"] == [f"{family}ForSequenceClassification"]
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
        assert reference.config.num_labels == 1 and reference.config.pad_token_id == PAD_ID

        # Two conversations of different lengths, each cut after its <|im_end|> (where
        # jaxlm reads the reward) and right-padded: HF reads the last non-pad token.
        tokenizer = Tokenizer.load(tok)
        rows, last = np.full((2, 48), PAD_ID, np.int32), []
        for i, reply in enumerate(["4821", "a much longer reply than that"]):
            conv = [Message("user", "Reply, please."), Message("assistant", reply)]
            ids = encode_conversation(conv, tokenizer, max_len=48).tokens.tolist()
            ids = ids[: ids.index(IM_END_ID) + 1]
            rows[i, : len(ids)] = ids
            last.append(len(ids) - 1)
        with torch.no_grad():
            theirs = reference(torch.as_tensor(rows, dtype=torch.long)).logits.numpy()
        graphdef, _ = abstract_model(model)
        scorer = jax.jit(functools.partial(sequence_scores, graphdef))
        positions = np.broadcast_to(np.arange(48, dtype=np.int32), (2, 48))
        ours = np.asarray(scorer(params, rows, positions, np.ones_like(rows), np.asarray(last)))
        assert theirs.shape == (2, 1) and np.abs(ours).max() > 0.1
        np.testing.assert_allclose(ours, theirs[:, 0], rtol=0, atol=1e-4, err_msg=family)
        stored = set(load_file(hf_dir / "model.safetensors"))
        assert "score.weight" in stored
        # The classifier has no LM head: Llama's untied one is left out.
        assert ("unembed" in params) == (family == "Llama")
        assert "lm_head.weight" not in stored
