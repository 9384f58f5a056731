"""Log-likelihood multiple choice (jaxlm.evaluation.multiple_choice) and the stdlib set.

Scores are checked against a full forward pass of the same tiny random model with
log_softmax, one (context, choice) at a time, so batching, padding, bucketing and
sorting cannot change a number unnoticed.
"""

import ast
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import cli
from jaxlm.data.chat import Message, encode_conversation
from jaxlm.data.corpus import stdlib_files
from jaxlm.data.stdlib_multiple_choice import build_multiple_choice
from jaxlm.data.stdlib_tasks import build_posttrain_sets
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.evaluation.multiple_choice import (
    Example,
    bucket_length,
    parse_example,
    read_examples,
    score_examples,
    summarize,
)
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=64)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(graphdef, params, tokenizer): a random tiny model and a 320-piece tokenizer."""
    tokenizer = train_tokenizer([TEXT], tmp_path_factory.mktemp("mc") / "tok", vocab_size=V)
    graphdef, _ = abstract_model(MODEL)
    return graphdef, init_params(MODEL, jax.random.key(3)), tokenizer


_DIRECT: dict = {}


@functools.partial(jax.jit, static_argnums=0)
def _log_softmax_forward(graphdef, params, inputs_BT):
    n = inputs_BT.shape[1]
    logits_BTV = nnx.merge(graphdef, params)(
        inputs_BT, positions=jnp.arange(n)[None], segment_ids=jnp.ones((1, n), jnp.int32)
    )
    return jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)


def direct_score(graphdef, params, tokenizer, context, choice, max_len=64):
    """Summed log_softmax of the choice's tokens from one unpadded forward pass (cached:
    the tests below ask for the same ones)."""
    key = (id(params), context, choice, max_len)
    if key not in _DIRECT:
        _DIRECT[key] = _direct_score(graphdef, params, tokenizer, context, choice, max_len)
    return _DIRECT[key]


def _direct_score(graphdef, params, tokenizer, context, choice, max_len):
    choice_ids = tokenizer.encode(choice)
    full = [tokenizer.bos_id, *tokenizer.encode(context), *choice_ids][-(max_len + 1) :]
    inputs = jnp.asarray(full[:-1])[None]
    n = inputs.shape[1]
    logp = np.asarray(_log_softmax_forward(graphdef, params, inputs)[0])
    scored = min(len(choice_ids), n)
    return float(sum(logp[t, full[t + 1]] for t in range(n - scored, n))), scored


EXAMPLES = [
    Example("def add(a, b):", (" return a + b", " return a - b\n", " pass"), 0, "ex:1"),
    Example("The quick brown", (" fox", " dog jumps", " cat sleeps over the lazy fox"), 2, "ex:2"),
    # acc and acc_norm disagree here (asserted below): the 1-byte choice has the best
    # summed score, the long one (few tokens for many bytes) the best score per byte.
    Example("", ("x", " the quick brown fox jumps over the lazy dog"), 1, "ex:3"),
    Example("The", (" cat", " lazy"), 1, "ex:4"),
]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scores_equal_direct_log_softmax(tiny, batch_size):
    graphdef, params, tokenizer = tiny
    results = score_examples(
        graphdef, params, tokenizer, EXAMPLES, max_len=64, batch_size=batch_size
    )
    assert [r.where for r in results] == [e.where for e in EXAMPLES]
    for example, result in zip(EXAMPLES, results, strict=True):
        assert result.answer == example.answer
        assert result.bytes == tuple(len(c.encode()) for c in example.choices)
        for choice, score, tokens in zip(
            example.choices, result.scores, result.tokens, strict=True
        ):
            expected, expected_tokens = direct_score(
                graphdef, params, tokenizer, example.context, choice
            )
            assert tokens == expected_tokens == len(tokenizer.encode(choice))
            np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-4)
        assert not result.context_truncated and result.choices_truncated == 0


def test_accuracy_and_acc_norm_are_the_hand_argmax(tiny):
    graphdef, params, tokenizer = tiny
    results = score_examples(graphdef, params, tokenizer, EXAMPLES, max_len=64, batch_size=3)
    hand, hand_norm = [], []
    for example, result in zip(EXAMPLES, results, strict=True):
        scores = [
            direct_score(graphdef, params, tokenizer, example.context, c)[0]
            for c in example.choices
        ]
        per_byte = [s / len(c.encode()) for s, c in zip(scores, example.choices, strict=True)]
        hand.append(max(range(len(scores)), key=scores.__getitem__))
        hand_norm.append(max(range(len(scores)), key=per_byte.__getitem__))
        assert (result.pred, result.pred_norm) == (hand[-1], hand_norm[-1])
    # The third example separates the two rules: raw picks "x", per byte the long one.
    assert (hand[2], hand_norm[2]) == (0, 1)
    summary = summarize(results)
    answers = [e.answer for e in EXAMPLES]
    assert summary["count"] == 4
    assert summary["accuracy"] == np.mean([p == a for p, a in zip(hand, answers, strict=True)])
    assert summary["acc_norm"] == np.mean([p == a for p, a in zip(hand_norm, answers, strict=True)])
    assert summary["accuracy"] != summary["acc_norm"]
    assert summary["chance"] == pytest.approx(np.mean([1 / 3, 1 / 3, 1 / 2, 1 / 2]))


def test_long_context_keeps_its_end(tiny):
    graphdef, params, tokenizer = tiny
    context = "The quick brown fox jumps over the lazy dog. " * 6
    example = Example(context, (" The cat sleeps.", " The dog"), 0, "long:1")
    max_len = 12
    assert len(tokenizer.encode(context)) > max_len  # the context must be cut
    [result] = score_examples(graphdef, params, tokenizer, [example], max_len=max_len)
    assert result.context_truncated and result.choices_truncated == 0
    for choice, score in zip(example.choices, result.scores, strict=True):
        expected, _ = direct_score(graphdef, params, tokenizer, context, choice, max_len)
        np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-4)
    # A choice longer than the window keeps only its last max_len tokens scored.
    [cut] = score_examples(
        graphdef, params, tokenizer, [Example("", (context, "x"), 0)], max_len=max_len
    )
    assert cut.choices_truncated == 1 and cut.tokens == (max_len, 1)


def test_bucket_lengths_are_powers_of_two_up_to_max_len():
    assert [bucket_length(n, 100) for n in (1, 16, 17, 33, 64, 65, 100)] == [
        16,
        16,
        32,
        64,
        64,
        100,
        100,
    ]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"context": "a", "choices": ["b", "c"], "answer": 1})


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"context": "a", "choices": ["b", "c"], "answer": 1', "not valid JSON"),
        (json.dumps({"choices": ["b", "c"], "answer": 0}), "missing key 'context'"),
        (json.dumps({"context": "a", "choices": ["b"], "answer": 0}), "'choices'"),
        (json.dumps({"context": "a", "choices": [], "answer": 0}), "'choices'"),
        (json.dumps({"context": "a", "choices": "bc", "answer": 0}), "'choices'"),
        (json.dumps({"context": "a", "choices": ["b", ""], "answer": 0}), "'choices[1]'"),
        (json.dumps({"context": "a", "choices": ["b", "c"], "answer": 2}), "out of range"),
        (json.dumps({"context": "a", "choices": ["b", "c"], "answer": -1}), "out of range"),
        (json.dumps({"context": "a", "choices": ["b", "c"], "answer": True}), "'answer'"),
        (json.dumps({"context": 3, "choices": ["b", "c"], "answer": 0}), "'context'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_records_name_file_line_and_key(tmp_path, bad, needle):
    path = write_lines(tmp_path / "mc.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(InputError) as error:
        read_examples(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ") and needle in message


def test_good_file_reads_and_empty_file_is_refused(tmp_path):
    path = write_lines(tmp_path / "mc.jsonl", [GOOD, "", json.dumps({**json.loads(GOOD), "id": 7})])
    examples = read_examples(path)
    assert [e.where for e in examples] == [f"{path}:1", f"{path}:3"]
    assert examples[1] == Example("a", ("b", "c"), 1, f"{path}:3", 7)
    with pytest.raises(InputError, match="no records"):
        read_examples(write_lines(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_examples(tmp_path / "missing.jsonl")


# --- the embedded set (jaxlm.data.stdlib_multiple_choice) ---------------------------

FILES = {"train": stdlib_files("train")[:40], "validation": stdlib_files("validation")[:6]}


@pytest.fixture(scope="module")
def stdlib_sets():
    functions = build_posttrain_sets(sources=FILES, max_sft=0, max_pairs=0)
    sets = {
        style: build_multiple_choice(style=style, sources=FILES) for style in ("chat", "completion")
    }
    return functions, sets


def test_stdlib_set_is_held_out_and_well_formed(stdlib_sets):
    functions, sets = stdlib_sets
    train_sources = {f.source for f in functions["train"].functions}
    real = {f.qualname: f for f in functions["validation"].functions}
    chat = sets["chat"]
    assert len(chat) >= 5
    for record in chat:
        function = real[record["id"]]  # only validation functions
        assert function.source not in train_sources
        assert record["kinds"][record["answer"]] == "real" and record["kinds"].count("real") == 1
        assert 2 <= len(record["choices"]) <= 4 and len(set(record["choices"])) == len(
            record["choices"]
        )
        assert record["choices"][record["answer"]] == function.source + "<|im_end|>"
        assert record["context"].startswith("<|im_start|>user\n")
        assert record["context"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        for choice in record["choices"]:  # every wrong choice is valid Python
            ast.parse(choice.removesuffix("<|im_end|>"))
        assert parse_example(record, "x").choices == tuple(record["choices"])
    for record, same in zip(chat, sets["completion"], strict=True):
        function = real[record["id"]]
        assert (same["id"], same["answer"], same["kinds"]) == (
            record["id"],
            record["answer"],
            record["kinds"],
        )
        assert same["context"] == function.head
        assert same["context"] + same["choices"][same["answer"]] == function.source + "\n\n"
    # Deterministic, and the answer is not always in one place.
    assert build_multiple_choice(style="chat", sources=FILES) == chat
    assert len({r["answer"] for r in chat}) > 1


def test_chat_items_tokenize_as_sft_conversations(stdlib_sets, tiny):
    _, _, tokenizer = tiny
    _, sets = stdlib_sets
    prefix, suffix = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    for record in sets["chat"]:
        prompt = record["context"].removeprefix(prefix).removesuffix(suffix)
        for choice in record["choices"]:
            answer = choice.removesuffix("<|im_end|>")
            sft = encode_conversation(
                [Message("user", prompt), Message("assistant", answer)], tokenizer, max_len=10**6
            )
            harness = [
                tokenizer.bos_id,
                *tokenizer.encode(record["context"]),
                *tokenizer.encode(choice),
            ]
            assert sft.tokens[: len(harness)].tolist() == harness


def test_cli_writes_the_set_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "mc.jsonl"
    args = ["data", "multiple-choice", str(out), "--max-files", "6", "--max-items", "3"]
    assert cli.main(args) == 0
    assert "3 validation items" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(set(r) >= {"context", "choices", "answer"} for r in records)
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err
