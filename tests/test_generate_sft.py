"""`jaxlm generate --sft-out`: distillation data as chat SFT records, and their settings.

Two small exports: a randomly initialised `tiny` model (what is checked is the
plumbing: prompt rendering, batching, seeds, sampling options, counts, files, against
`jaxlm generate` and the Generator called directly), and a chain model
(tests/helpers/chain_model.py) whose answer to any chat prompt is exactly
"<think>why</think> ok<|im_end|>", so reasoning and truncation are checked on exact
text, and the written file is trained on through the data.format=chat pipeline.
"""

import dataclasses
import hashlib
import importlib.metadata
import json

import jax
import numpy as np
import pytest
from helpers.chain_model import save_chain_model

from jaxlm import cli
from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, DataConfig, apply_overrides
from jaxlm.data import posttrain_inputs
from jaxlm.data.chat import Message, encode_chat_prompt, encode_conversation, parse_conversation
from jaxlm.data.chat_template import CHATML
from jaxlm.data.tokenizer import IM_END_ID, train_tokenizer
from jaxlm.inference.decode import Generator
from jaxlm.inference.loading import load_model
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.inference.streaming import complete_text
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=96)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40
SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-gen")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V)
    cfg = Config(model=MODEL, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
    params = jax.tree.map(np.asarray, init_params(MODEL, jax.random.key(3)))
    return save_params(root / "export", params, cfg, tokenizer=tokenizer.path)


@pytest.fixture(scope="module")
def loaded(export_dir):
    model = load_model(export_dir)
    return model, Generator(model.cfg.model, model.graphdef, model.params)


@pytest.fixture(scope="module")
def thinking_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-think")
    text = "The quick brown fox jumps over the lazy dog. 你好，世界！\n" * 50
    tok = train_tokenizer(
        [text], root / "tok", vocab_size=300, user_symbols=("<think>", "</think>")
    )
    prompt_end = encode_chat_prompt([Message("user", "hi")], tok)[-1]  # every chat prompt's
    reply = [tok.piece_to_id("<think>"), *tok.encode("why"), tok.piece_to_id("</think>")]
    reply += [*tok.encode(" ok"), IM_END_ID]
    return save_chain_model(root, tok, [prompt_end, *reply])


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sft(model, prompts_file, out, *extra: str) -> dict:
    """Runs `jaxlm generate --sft-out`; returns the settings it wrote."""
    args = ["generate", str(model), "--prompts-file", str(prompts_file), "--sft-out", str(out)]
    assert cli.main([*args, *extra]) == 0
    return json.loads((out.parent / f"{out.name}.settings.json").read_text())


def test_greedy_records_are_the_prompts_turns_then_what_generate_writes(
    export_dir, loaded, tmp_path
):
    model, _ = loaded
    tok = model.tokenizer
    earlier_answer = {"role": "assistant", "content": "brown fox"}
    chats = [
        [SYSTEM, user("lazy dog")],
        [user("The quick"), earlier_answer, user("cat")],  # a multi-turn prompt
        [user("The quick")],
    ]
    records = [
        {"messages": chats[0]},
        {"conversations": chats[1]},
        {"prompt": "The quick", "answer": "an RL set's extra key, ignored"},
    ]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", records)
    out = tmp_path / "sft.jsonl"
    options = ["--max-new-tokens", "7", "--batch-size", "2"]
    settings = sft(export_dir, prompts, out, *options)
    written = read_jsonl(out)
    assert [r["conversations"][:-1] for r in written] == chats
    assert [r["conversations"][-1]["role"] for r in written] == ["assistant"] * 3
    assert set().union(*map(set, written)) == {"conversations"}
    assert (settings["records"], settings["temperature"], settings["prompts"]) == (3, 0.0, 3)

    # `jaxlm generate` (display mode, plain text) on the rendered conversations: the
    # same token ids, so greedy decoding must give the same answers.
    rendered = []
    for chat in chats:
        messages = parse_conversation({"messages": chat})
        text = CHATML.render(messages, add_generation_prompt=True)
        assert [tok.bos_id, *tok.encode(text)] == encode_chat_prompt(messages, tok)
        rendered.append({"prompt": text})
    plain = write_jsonl(tmp_path / "rendered.jsonl", rendered)
    args = ["generate", str(export_dir), "--prompts-file", plain, "--json", str(tmp_path / "o")]
    assert cli.main([*args, *options]) == 0
    shown = [r["completion"] for r in json.loads((tmp_path / "o").read_text())["results"]]
    assert [r["conversations"][-1]["content"] for r in written] == shown

    # A text file's line is the same single user turn as a {"prompt"} record.
    (tmp_path / "prompts.txt").write_text("\nThe quick\n\n")
    sft(export_dir, tmp_path / "prompts.txt", tmp_path / "txt.jsonl", *options)
    assert read_jsonl(tmp_path / "txt.jsonl") == written[2:]

    # SFT renders each record with the answer in exactly the context it was generated in.
    for record in written:
        messages = parse_conversation(record)
        encoded = encode_conversation(messages, tok, max_len=MODEL.max_seq_len)
        prompt_ids = encode_chat_prompt(messages[:-1], tok)
        assert encoded.tokens[: len(prompt_ids)].tolist() == prompt_ids
        # Trained: the answer and its <|im_end|>; the newline after it is context.
        assert encoded.train_token[len(prompt_ids) :].tolist() == [1] * (
            len(encoded.tokens) - len(prompt_ids) - 1
        ) + [0]


def test_samples_are_reproducible_differ_and_follow_the_settings(export_dir, loaded, tmp_path):
    model, generator = loaded
    tok = model.tokenizer
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The quick"}, {"prompt": "lazy dog"}])
    # Extra stop pieces make some of the sampled answers end before --max-new-tokens.
    stop_pieces = [tok.id_to_piece(i) for i in range(260, 280)]
    sampling = ["--temperature", "1", "--top-k", "200", "--top-p", "0.95", "--seed", "7"]
    options = [*sampling, "--max-new-tokens", "10", "--samples-per-prompt", "3"]
    options += ["--batch-size", "4", *(f"--stop={p}" for p in stop_pieces)]
    settings = sft(export_dir, prompts, tmp_path / "a.jsonl", *options)
    sft(export_dir, prompts, tmp_path / "b.jsonl", *options)
    first = (tmp_path / "a.jsonl").read_bytes()
    assert first == (tmp_path / "b.jsonl").read_bytes()  # same seed, same file
    answers = [r["conversations"][-1]["content"] for r in read_jsonl(tmp_path / "a.jsonl")]
    assert len(set(answers[:3])) == 3 and len(set(answers[3:])) == 3  # samples differ

    # What the Generator gives for the rows (prompt-major) with these settings and seeds.
    rows = [encode_chat_prompt([Message("user", p)], tok) for p in ("The quick", "lazy dog")]
    rows = [ids for ids in rows for _ in range(3)]
    stops = [tok.eos_id, IM_END_ID, *map(tok.piece_to_id, stop_pieces)]
    expected, stopped = [], []
    for start in (0, 4):
        out = generator.generate(
            rows[start : start + 4],
            max_new_tokens=10,
            sampling=SamplingConfig(temperature=1.0, top_k=200, top_p=0.95),
            stop_ids=stops,
            seed=7 + start,
        )
        expected += [complete_text(tok, t) for t in out.tokens]
        stopped += out.stopped
    assert answers == expected
    truncated = stopped.count(False)
    assert 0 < truncated < 6  # both kinds, so dropping is checked on a mix

    assert settings == {
        "format": "conversations",
        "model": str(export_dir.absolute()),
        "overrides": [],
        "tokenizer_sha256": tok.sha256,
        "jaxlm_version": importlib.metadata.version("jaxlm"),
        "prompts_file": str((tmp_path / "p.jsonl").absolute()),
        "prompts": 2,
        "samples_per_prompt": 3,
        "temperature": 1.0,
        "top_k": 200,
        "top_p": 0.95,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "seed": 7,
        "max_new_tokens": 10,
        "batch_size": 4,
        "stop": {"eos": True, "end_of_turn": True, "pieces": stop_pieces},
        "drop_truncated": False,
        "records": 6,
        "truncated": truncated,
        "dropped": 0,
        "sha256": hashlib.sha256(first).hexdigest(),
    }

    dropping = sft(export_dir, prompts, tmp_path / "c.jsonl", *options, "--drop-truncated")
    kept = [r["conversations"][-1]["content"] for r in read_jsonl(tmp_path / "c.jsonl")]
    assert kept == [a for a, done in zip(answers, stopped, strict=True) if done]
    counts = {k: dropping[k] for k in ("records", "truncated", "dropped", "drop_truncated")}
    assert counts == {
        "records": 6 - truncated,
        "truncated": truncated,
        "dropped": truncated,
        "drop_truncated": True,
    }
    # Atomic writes leave no temporary file behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _trained_answer(out, tok, think_loss_weight: float) -> list[int]:
    """Target ids with a loss weight in the first conversation of the first chat batch."""
    cfg = apply_overrides(
        Config(),
        [
            "data.format=chat",
            f"data.sources=jsonl:{out}",
            f"data.eval_sources=jsonl:{out}",  # train on all of it
            "data.seq_len=128",
            "data.batch_size=2",
            f"data.think_loss_weight={think_loss_weight}",
        ],
    )
    stream = posttrain_inputs.posttrain_train_stream(
        cfg, tok, 0, 1, cfg.data.batch_size, pipeline=posttrain_inputs.chat_pipeline
    )
    batch = next(iter(stream))
    first = batch["segment_ids"][0] == 1
    weights, targets = batch["loss_mask"][0][first], batch["targets"][0][first]
    assert set(weights.tolist()) <= {0, 1}
    return targets[weights == 1].tolist()


def test_reasoning_is_written_whole_and_trains_with_its_weight(thinking_export, tmp_path):
    (tmp_path / "prompts.txt").write_text("5加3等于几？\n")
    out = tmp_path / "r1.jsonl"
    settings = sft(thinking_export, tmp_path / "prompts.txt", out, "--think", "hide")
    (record,) = read_jsonl(out)
    assert record == {
        "conversations": [
            user("5加3等于几？"),
            {"role": "assistant", "content": "<think>why</think> ok"},
        ]
    }
    assert (settings["records"], settings["truncated"], settings["dropped"]) == (1, 0, 0)

    # data.format=chat reads the file; data.think_loss_weight=0 leaves the reasoning
    # (tags included) out of the loss and trains the answer and its <|im_end|>.
    tok = load_model(thinking_export).tokenizer
    answer = [*tok.encode_literal(" ok"), IM_END_ID]
    assert _trained_answer(out, tok, 0.0) == answer
    whole = _trained_answer(out, tok, 1.0)
    assert whole == [*tok.encode_literal("<think>why</think> ok"), IM_END_ID] != answer

    # Cut by --max-new-tokens: written and counted, or left out and counted.
    cut = sft(thinking_export, tmp_path / "prompts.txt", out, "--max-new-tokens", "3")
    assert read_jsonl(out)[0]["conversations"][-1]["content"] == "<think>wh"
    assert (cut["records"], cut["truncated"], cut["dropped"]) == (1, 1, 0)
    args = ("--max-new-tokens", "3", "--drop-truncated")
    dropped = sft(thinking_export, tmp_path / "prompts.txt", out, *args)
    assert out.read_text() == ""
    assert (dropped["records"], dropped["truncated"], dropped["dropped"]) == (0, 1, 1)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("p.jsonl", '{"prompt": "a"}\n{oops\n', "p.jsonl:2: not valid JSON"),
        ("p.jsonl", '\n{"text": "b"}\n', "p.jsonl:2: a prompt record needs 'prompt' (text) or"),
        ("p.jsonl", '["a"]\n', "p.jsonl:1: a prompt record is a JSON object, got list"),
        (
            "p.jsonl",
            json.dumps({"messages": [user("hi"), {"role": "assistant", "content": "yo"}]}),
            "p.jsonl:1: a chat prompt ends with a user turn",
        ),
        ("p.jsonl", '{"messages": [{"role": "bot", "content": "x"}]}', "p.jsonl:1: messages[0]"),
        ("p.txt", "\n\n", "p.txt: no prompts"),
    ],
)
def test_bad_prompts_are_refused_naming_file_and_line(
    export_dir, tmp_path, capsys, name, content, needle
):
    prompts = tmp_path / name
    prompts.write_text(content)
    args = ["generate", str(export_dir), "--prompts-file", str(prompts)]
    assert cli.main([*args, "--sft-out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.jsonl").exists()


def test_the_prompts_file_is_never_overwritten(export_dir, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "o.settings.json").write_text('{"prompt": "a"}\n')
    cases = [  # (prompts file, --sft-out): the same file, also spelt otherwise or as sidecar
        ("p.jsonl", "p.jsonl"),
        ("p.jsonl", f"{tmp_path}/./p.jsonl"),
        ("o.settings.json", "o"),
    ]
    for prompts, out in cases:
        args = ["generate", str(export_dir), "--prompts-file", str(tmp_path / prompts)]
        assert cli.main([*args, "--sft-out", str(tmp_path / out)]) == 2
        assert "is the prompts file" in capsys.readouterr().err
        assert (tmp_path / prompts).read_text() == '{"prompt": "a"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.settings.json", "p.jsonl"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["PROMPT"], "--sft-out reads --prompts-file only"),
        (["--json", "x.json"], "--json is for displayed runs"),
        (["--ignore-end-of-turn"], "--ignore-end-of-turn does not go with it"),
        (["--samples-per-prompt", "0"], "--samples-per-prompt 0 < 1"),
    ],
)
def test_options_that_do_not_go_with_sft_out_are_refused(
    export_dir, tmp_path, capsys, extra, needle
):
    (tmp_path / "p.txt").write_text("a\n")
    args = ["generate", str(export_dir), *extra, "--prompts-file", str(tmp_path / "p.txt")]
    assert cli.main([*args, "--sft-out", str(tmp_path / "o.jsonl")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_sampling_counts_options_need_sft_out(export_dir, capsys):
    assert cli.main(["generate", str(export_dir), "x", "--drop-truncated"]) == 2
    assert "go with --sft-out" in capsys.readouterr().err


def test_a_prompt_too_long_for_the_model_is_named(export_dir, tmp_path, capsys):
    long = "the lazy dog sleeps while the quick brown fox jumps over it"
    (tmp_path / "p.txt").write_text(f"cat\n{long}\n")
    args = ["generate", str(export_dir), "--prompts-file", str(tmp_path / "p.txt")]
    assert cli.main([*args, "--sft-out", str(tmp_path / "o"), "--max-new-tokens", "70"]) == 2
    err = capsys.readouterr().err
    assert "p.txt:2: the prompt is" in err and "at most 26 fit" in err, err
    assert not (tmp_path / "o").exists()
