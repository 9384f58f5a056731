"""`data.think_loss_weight`: the loss on `<think>…</think>` spans of assistant turns.

The weighted tokens are exactly those of the span, tags included; the answer after it
and the turn's `<|im_end|>` keep weight 1; 1.0 encodes as before; the weights reach
the batches' loss_mask (float32 when fractional) and the loss sums.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from helpers.batches import ByteTokenizer, byte_decode

from jaxlm.config import Config, ConfigError, apply_overrides
from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.data.chat import Message, encode_conversation
from jaxlm.data.preference import PreferenceStats, encode_pair
from jaxlm.data.sft import sft_dataset
from jaxlm.data.think import think_pieces
from jaxlm.training.losses import next_token_loss_sums, token_nll

THINK = "<think>\n先算 5+3，等于 8 🤔\n</think>"
ANSWER = "\n5加3等于8。"
CONVERSATION = [
    Message("system", "你是一个乐于助人的助手 🙂"),
    Message("user", "5加3等于几？"),
    Message("assistant", THINK + ANSWER),
    Message("user", "谢谢！"),
    Message("assistant", "不客气 👍"),
]


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("<think>a</think>b", [("<think>a</think>", True), ("b", False)]),
        (
            "x<think>a</think>y<think>b",
            [("x", 0), ("<think>a</think>", 1), ("y", 0), ("<think>b", 1)],
        ),
        ("reasoning</think>answer", [("reasoning</think>", True), ("answer", False)]),
        ("a</think>b</think>c", [("a</think>", True), ("b</think>c", False)]),
        ("no reasoning", [("no reasoning", False)]),
    ],
)
def test_think_pieces_cover_the_text_and_mark_the_spans(text, pieces):
    assert think_pieces(text) == [(piece, bool(flag)) for piece, flag in pieces]


def _find(tokens, part) -> slice:
    """Where the token ids `part` sit in `tokens` (once)."""
    tokens = list(tokens)
    at = [i for i in range(len(tokens)) if tokens[i : i + len(part)] == part]
    assert len(at) == 1
    return slice(at[0], at[0] + len(part))


@pytest.mark.parametrize("weight", [0.0, 0.25])
def test_exactly_the_think_span_is_weighted_tags_included(weight):
    tok = ByteTokenizer()
    default = encode_conversation(CONVERSATION, tok, max_len=512)
    encoded = encode_conversation(CONVERSATION, tok, max_len=512, think_weight=weight)
    np.testing.assert_array_equal(encoded.tokens, default.tokens)  # byte ids: same either way
    span = _find(encoded.tokens, tok.encode(THINK))
    # Everything but the span (tags included) keeps its flag: the answer after it, the
    # turn's <|im_end|>, the later assistant turn, and the untrained prompt turns.
    expected = default.train_token.astype(np.float32)
    expected[span] = weight
    np.testing.assert_array_equal(encoded.train_token, expected)
    assert byte_decode(encoded.tokens[span].tolist()) == THINK
    assert default.train_token[span].all() and encoded.tokens[span.stop - 1] == ord(">") + 10
    assert encoded.train_token.dtype == (np.int32 if weight == 0.0 else np.float32)


def test_weight_one_encodes_as_before_and_other_turns_are_untouched():
    tok = ByteTokenizer()
    default = encode_conversation(CONVERSATION, tok, max_len=512)
    one = encode_conversation(CONVERSATION, tok, max_len=512, think_weight=1.0)
    zero = encode_conversation(CONVERSATION, tok, max_len=512, think_weight=0.0)
    np.testing.assert_array_equal(one.tokens, default.tokens)
    np.testing.assert_array_equal(one.train_token, default.train_token)
    assert one.train_token.dtype == np.int32
    # Excluding the span removes exactly its tokens from the trained ones.
    span_tokens = len(tok.encode(THINK))
    assert default.train_token.sum() - zero.train_token.sum() == span_tokens


def _sft_file(tmp_path, copies=6):
    record = {"conversations": [{"role": m.role, "content": m.content} for m in CONVERSATION]}
    path = tmp_path / "r1.jsonl"
    path.write_text((json.dumps(record, ensure_ascii=False) + "\n") * copies, encoding="utf-8")
    return path


def test_weights_flow_into_the_packed_loss_mask_and_the_loss(tmp_path):
    path = _sft_file(tmp_path)
    kwargs = dict(seq_len=256, batch_size=2, shuffle=False, repeat=False)
    plain = next(iter(sft_dataset([path], ByteTokenizer(), **kwargs)))
    weighted = next(iter(sft_dataset([path], ByteTokenizer(), think_loss_weight=0.25, **kwargs)))
    np.testing.assert_array_equal(weighted["tokens"], plain["tokens"])  # ByteTokenizer: same ids
    assert weighted["loss_mask"].dtype == np.float32
    # Where the target is a token of the span the weight is 0.25, elsewhere the mask as before.
    think_ids = ByteTokenizer().encode(THINK)
    target_in_span = np.zeros_like(plain["loss_mask"], bool)
    for row in range(plain["tokens"].shape[0]):
        tokens = plain["tokens"][row].tolist()
        for start in range(len(tokens) - len(think_ids) + 1):
            if tokens[start : start + len(think_ids)] == think_ids:
                target_in_span[row, start - 1 : start - 1 + len(think_ids)] = True
    assert target_in_span.sum() > 0
    expected = np.where(target_in_span, 0.25 * plain["loss_mask"], plain["loss_mask"])
    np.testing.assert_array_equal(weighted["loss_mask"], expected)
    # The loss is the weight-scaled sum over the targets; the count is the weight sum.
    logits = np.random.default_rng(0).normal(size=(*plain["tokens"].shape, 300)).astype(np.float32)
    sums = next_token_loss_sums(jnp.asarray(logits), weighted["targets"], weighted["loss_mask"])
    nll, _ = token_nll(jnp.asarray(logits), weighted["targets"])
    np.testing.assert_allclose(sums.nll, float(np.sum(np.asarray(nll) * expected)), rtol=1e-5)
    np.testing.assert_allclose(sums.num_tokens, expected.sum(), rtol=1e-6)


def test_a_preference_response_keeps_its_answer_around_an_excluded_span():
    prompt = [{"role": "user", "content": "5加3？"}]
    record = {
        "chosen": [*prompt, {"role": "assistant", "content": "好的 " + THINK + ANSWER}],
        "rejected": [*prompt, {"role": "assistant", "content": "不知道"}],
    }
    pair = encode_pair(
        ("x:1", record), tokenizer=ByteTokenizer(), seq_len=128, stats=PreferenceStats(),
        think_weight=0.0,
    )  # fmt: skip
    chosen = pair["tokens"][0][pair["train_token"][0] == 1].tolist()
    assert byte_decode(chosen) == "好的 " + ANSWER  # before and after the span, not the span


def test_filler_eval_batches_share_the_runs_loss_mask_dtype(tmp_path):
    cfg = apply_overrides(Config(), ["data.format=chat", "data.think_loss_weight=0.5"])
    batch = run_inputs.equalize_batch_count([], lambda n: 1, cfg, 0)[0]
    assert batch["loss_mask"].dtype == np.float32
    # `jaxlm eval` of such a run on text data: text batches (and their fillers) are int32.
    text = apply_overrides(Config(), ["data.format=text", "data.think_loss_weight=0.5"])
    filler = run_inputs.equalize_batch_count([], lambda n: 1, text, 0)[0]
    assert filler["loss_mask"].dtype == np.int32
    pairs = posttrain_inputs.empty_pairs(2, 8, 0, think_loss_weight=0.5)
    assert pairs["loss_mask"].dtype == np.float32
    assert posttrain_inputs.empty_pairs(2, 8, 0)["loss_mask"].dtype == np.int32


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match=r"data.think_loss_weight=-1.0 must be >= 0"):
        apply_overrides(Config(), ["data.format=chat", "data.think_loss_weight=-1"])
