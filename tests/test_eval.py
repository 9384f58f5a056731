"""`jaxlm eval`: loss, perplexity, bits per byte and multiple choice of an exported model.

The export is a tiny random model written with save_params (no training needed); every
number the command reports is recomputed here from unpacked, unpadded forward passes
over the same documents, so packing, padding, batching and the byte count are checked.
"""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import cli
from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, DataConfig
from jaxlm.data.chat import encode_conversation, parse_conversation
from jaxlm.data.packing import document_tokens, split_long_document
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.evaluation.language_model import run_sources
from jaxlm.evaluation.multiple_choice import read_examples, score_examples
from jaxlm.inference.loading import load_model
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=64)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40
DOCS = [
    "The quick brown fox.",
    "The lazy dog sleeps while the cat jumps over the fox. " * 5,  # several pieces
    "A cat.",
    "Über die Brücke: the fox jumps.\n",  # non-ASCII: bytes != characters
    "The dog.",
    "While the quick cat sleeps, the brown dog jumps over the lazy fox.",
]
CHATS = [
    [{"role": "user", "content": "Say fox."}, {"role": "assistant", "content": "The fox."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What jumps?"},
        {"role": "assistant", "content": "The quick brown fox jumps over the dog."},
    ],
]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An export whose run evaluated on the first 4 documents of docs.jsonl (seq_len 32)."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    (root / "notes").mkdir()
    for i, doc in enumerate(DOCS[:3]):
        (root / "notes" / f"{i}.txt").write_text(doc, encoding="utf-8")
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    data = DataConfig(
        tokenizer_vocab_size=V,
        seq_len=32,
        batch_size=8,
        sources="stdlib",
        eval_sources=f"jsonl:{docs}",
        eval_max_docs=4,
    )
    out = root / "export"
    save_params(
        out,
        init_params(MODEL, jax.random.key(5)),
        Config(model=MODEL, data=data),
        tokenizer=tokenizer.path,
    )
    return out, root


@functools.partial(jax.jit, static_argnums=0)
def _log_softmax(graphdef, params, tokens_BT):
    n = tokens_BT.shape[1]
    logits = nnx.merge(graphdef, params)(
        tokens_BT, positions=jnp.arange(n)[None], segment_ids=jnp.ones((1, n), jnp.int32)
    )
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def direct_sums(model, rows):
    """(nats, scored tokens, bytes) over (tokens, mask of scored targets) rows."""
    token_bytes = model.tokenizer.token_bytes()
    nats, count, nbytes = 0.0, 0, 0
    for tokens, scored in rows:
        if len(tokens) < 2:
            continue
        logp = np.asarray(_log_softmax(model.graphdef, model.params, jnp.asarray(tokens)[None]))
        for t in range(len(tokens) - 1):
            if scored[t]:
                nats -= float(logp[0, t, tokens[t + 1]])
                count += 1
                nbytes += int(token_bytes[tokens[t + 1]])
    return nats, count, nbytes


def text_rows(model, docs, seq_len):
    """Each document as `[BOS] + text + [EOS]` cut into pieces; every target scored."""
    rows = []
    for doc in docs:
        for piece in split_long_document(document_tokens(doc, model.tokenizer), seq_len):
            rows.append((piece.tolist(), [1] * (len(piece) - 1)))
    return rows


def check(result, nats, tokens, nbytes):
    assert result["tokens"] == tokens and result["bytes"] == nbytes
    np.testing.assert_allclose(result["loss"], nats / tokens, rtol=1e-5)
    np.testing.assert_allclose(result["perplexity"], math.exp(result["loss"]), rtol=1e-12)
    np.testing.assert_allclose(result["bits_per_byte"], nats / (math.log(2) * nbytes), rtol=1e-5)


def run_eval(*args):
    return cli.main(["eval", *map(str, args)])


@pytest.fixture(scope="module")
def model(export):
    return load_model(export[0])


def test_default_is_the_runs_own_eval_set(export, model, tmp_path, capsys):
    out, root = export
    assert run_eval(out, "--json", tmp_path / "r.json") == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    [source] = result["sources"]
    assert source["source"] == f"jsonl:{root / 'docs.jsonl'}" and source["split"] == "all"
    assert (result["seq_len"], result["max_docs"]) == (32, 4)  # the run's
    nats, tokens, nbytes = direct_sums(model, text_rows(model, DOCS[:4], 32))
    check(source, nats, tokens, nbytes)
    assert f"{source['loss']:.4f}" in printed and "bits/byte" in printed


def test_several_sources_each_reported_and_totalled(export, model, tmp_path):
    out, root = export
    code = run_eval(
        out,
        "--data",
        f"jsonl:{root / 'docs.jsonl'}",
        "--data",
        f"text:{root / 'notes'}/*.txt",
        "--max-docs",
        0,
        "--seq-len",
        16,
        "--batch-size",
        3,
        "--json",
        tmp_path / "r.json",
    )
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    jsonl, text = result["sources"]
    per_source = [direct_sums(model, text_rows(model, docs, 16)) for docs in (DOCS, DOCS[:3])]
    check(jsonl, *per_source[0])
    check(text, *per_source[1])
    check(result["total"], *(sum(x) for x in zip(*per_source, strict=True)))


def test_chat_format_scores_assistant_tokens(export, model, tmp_path):
    out, root = export
    code = run_eval(
        out, "--format", "chat", "--data", f"jsonl:{root / 'chats.jsonl'}",
        "--seq-len", 64, "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0
    [source] = json.loads((tmp_path / "r.json").read_text())["sources"]
    rows = []
    for chat in CHATS:
        encoded = encode_conversation(
            parse_conversation({"messages": chat}), model.tokenizer, max_len=64
        )
        rows.append((encoded.tokens.tolist(), encoded.train_token[1:].tolist()))
    check(source, *direct_sums(model, rows))


def test_multiple_choice_writes_scores(export, model, tmp_path, capsys):
    out, _ = export
    mc = tmp_path / "mc.jsonl"
    records = [
        {"context": "The quick", "choices": [" brown fox", " cat"], "answer": 0, "id": "a"},
        {"context": "The lazy", "choices": [" dog", " fox", " jumps over"], "answer": 2},
    ]
    mc.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_eval(out, "--multiple-choice", mc, "--json", tmp_path / "r.json") == 0
    assert "2 examples, accuracy" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert "sources" not in result  # --multiple-choice alone scores no data source
    [report] = result["multiple_choice"]
    expected = score_examples(
        model.graphdef, model.params, model.tokenizer, read_examples(mc), max_len=64
    )
    assert report["count"] == 2 and report["max_len"] == 64
    assert report["accuracy"] == np.mean([r.pred == r.answer for r in expected])
    assert report["acc_norm"] == np.mean([r.pred_norm == r.answer for r in expected])
    for got, want in zip(report["examples"], expected, strict=True):
        np.testing.assert_allclose(got["scores"], want.scores, rtol=1e-5, atol=1e-4)
        assert got["where"] == want.where and got["pred"] == want.pred
    assert report["examples"][0]["id"] == "a"


def test_bad_requests_are_input_errors(export, tmp_path, capsys):
    out, _ = export
    assert run_eval(out, "--seq-len", 65) == 2
    assert "exceeds model.max_seq_len=64" in capsys.readouterr().err
    assert run_eval(out, "--set", "data.seq_len=16") == 2
    assert "refused" in capsys.readouterr().err
    assert run_eval(out, "--data", "nosuchkind:x") == 2
    assert "--data" in capsys.readouterr().err
    preference = Config(
        model=MODEL,
        data=DataConfig(format="preference", sources="jsonl:p", seq_len=32, tokenizer_vocab_size=V),
    )
    with pytest.raises(InputError, match="pass --data"):
        run_sources(preference)
