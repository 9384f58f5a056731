"""`jaxlm generate` and `jaxlm chat` on a small exported model, and sharded generation.

The export is a randomly initialised `tiny` model with a tokenizer trained on a
repeated sentence: what is checked is the plumbing (prompt encoding, batching,
streaming, JSON output, chat layout and history, errors), against the Generator
called directly, not the quality of the text.
"""

import dataclasses
import io
import json

import jax
import numpy as np
import pytest

from jaxlm import cli
from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, DataConfig
from jaxlm.data.chat import Message, encode_chat_prompt
from jaxlm.data.tokenizer import IM_END_ID, train_tokenizer
from jaxlm.inference.chat_session import ChatSession
from jaxlm.inference.decode import Generator
from jaxlm.inference.loading import load_model
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=96)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V)
    cfg = Config(model=MODEL, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
    params = jax.tree.map(np.asarray, init_params(MODEL, jax.random.key(3)))
    return save_params(root / "export", params, cfg, tokenizer=tokenizer.path)


@pytest.fixture(scope="module")
def loaded(export_dir):
    model = load_model(export_dir)
    return model, Generator(model.cfg.model, model.graphdef, model.params)


def test_generate_cli_batches_prompts_from_a_file_and_writes_json(export_dir, loaded, tmp_path):
    model, generator = loaded
    prompts = ["The quick", "lazy dog", "cat"]
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "out.json"
    args = ["generate", str(export_dir), "--prompts-file", str(file), "--max-new-tokens", "7"]
    assert cli.main([*args, "--batch-size", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    tok = model.tokenizer
    direct = generator.generate(
        [[tok.bos_id, *tok.encode(p)] for p in prompts],
        max_new_tokens=7,
        stop_ids=[tok.eos_id, IM_END_ID],
    )
    assert [r["prompt"] for r in results] == prompts
    assert [r["completion"] for r in results] == [tok.decode(t) for t in direct.tokens]
    assert [r["new_tokens"] for r in results] == [len(t) for t in direct.tokens]


def test_a_single_prompt_streams_to_stdout(export_dir, loaded, capsys):
    model, generator = loaded
    args = ["generate", str(export_dir), "The quick", "--max-new-tokens", "9"]
    assert cli.main([*args, "--temperature", "0.9", "--top-k", "20", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    tok = model.tokenizer
    direct = generator.generate(
        [[tok.bos_id, *tok.encode("The quick")]],
        max_new_tokens=9,
        stop_ids=[tok.eos_id, IM_END_ID],
        seed=5,
        sampling=SamplingConfig(temperature=0.9, top_k=20),
    )
    assert printed == "The quick" + tok.decode(direct.tokens[0]) + "\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (
            '{"prompt": "a"}\n{"text": "b"}\n',
            'prompts.jsonl:2: expected an object with a string "prompt"',
        ),
        ('{"prompt": "a"}\n{oops\n', "prompts.jsonl:2: not valid JSON"),
    ],
)
def test_bad_prompt_files_name_the_line(export_dir, tmp_path, capsys, content, needle):
    file = tmp_path / "prompts.jsonl"
    file.write_text(content)
    assert cli.main(["generate", str(export_dir), "--prompts-file", str(file)]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--stop", "no-such-piece-xyz"], "not a piece of the tokenizer's vocabulary"),
        (["--set", "model.n_layers=2"], "refused: model.n_layers: 3 -> 2"),
        (["--top-p", "0"], "top_p=0.0 must be in (0, 1]"),
        (["--max-new-tokens", "500"], "exceeds model.max_seq_len=96"),
    ],
)
def test_generate_refusals_exit_2_naming_the_problem(export_dir, capsys, extra, needle):
    assert cli.main(["generate", str(export_dir), "The", *extra]) == 2
    assert needle in capsys.readouterr().err


def test_chat_session_keeps_history_in_the_training_layout(loaded):
    model, generator = loaded
    session = ChatSession(generator, model.tokenizer, system="Be brief.", max_new_tokens=6)
    pieces = []
    first = session.reply("Hello there", on_text=pieces.append)
    assert "".join(pieces) == first
    prompts = []
    original = generator.generate

    def spy(prompts_, **kwargs):
        prompts.append(prompts_[0])
        assert IM_END_ID in kwargs["stop_ids"]  # a set to the generator: order is moot
        return original(prompts_, **kwargs)

    generator.generate = spy
    try:
        session.reply("And again")
    finally:
        generator.generate = original
    expected = encode_chat_prompt(
        [
            Message("system", "Be brief."),
            Message("user", "Hello there"),
            Message("assistant", first),
            Message("user", "And again"),
        ],
        model.tokenizer,
    )
    assert prompts == [expected]


def test_chat_drops_the_oldest_exchange_when_the_context_is_full(loaded):
    model, generator = loaded
    session = ChatSession(generator, model.tokenizer, max_new_tokens=40)
    long = "the lazy dog " * 4
    session.reply(long)
    session.reply(long)
    assert session.dropped >= 2
    assert session.last_prompt == encode_chat_prompt(session.history[:-1], model.tokenizer)
    assert len(session.last_prompt) <= MODEL.max_seq_len - 40


def test_chat_cli_reads_messages_from_stdin(export_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/reset\nHi again\n/quit\n"))
    assert cli.main(["chat", str(export_dir), "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert "[conversation cleared]" in captured.err
    assert captured.out.count("\n") == 2  # two replies, each ended by a newline


# Slow: ~13 s; the default run checks generation on one device here and the same training
# on every mesh in test_sharding.py
@pytest.mark.slow
def test_generation_sharded_over_a_mesh_equals_one_device(export_dir, loaded):
    _, generator = loaded
    mesh = make_mesh((2, 2, 2))
    sharded = load_model(export_dir, mesh=mesh)
    wq = sharded.params["layers"]["wq"][...]
    assert len(wq.sharding.device_set) == 8
    assert wq.addressable_shards[0].data.shape[2] == MODEL.n_heads // 2  # heads split
    prompts = [[1, 5, 9, 2], [1, 7], [1, 3, 3], [1, 8, 8, 8, 8]]
    on_mesh = Generator(sharded.cfg.model, sharded.graphdef, sharded.params, mesh=mesh)
    assert on_mesh.generate(prompts, max_new_tokens=8).tokens == (
        generator.generate(prompts, max_new_tokens=8).tokens
    )
