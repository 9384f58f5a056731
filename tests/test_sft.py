"""The SFT pipeline end to end on a hand-written jsonl: masks, skips, errors, resume."""

import collections
import json

import pytest
from helpers.batches import ByteTokenizer

from jaxlm.data.chat import ChatFormatError, ChatStats, encode_conversation, parse_conversation
from jaxlm.data.jsonl import BadLineCounter, JsonlError
from jaxlm.data.sft import sft_dataset


def conv(*turns: tuple[str, str], key: str = "messages") -> dict:
    return {key: [{"role": role, "content": content} for role, content in turns]}


RECORDS = [
    conv(("user", "hi"), ("assistant", "hello!"), key="conversations"),
    conv(
        ("system", "be brief"),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "and 3+3?"),
        ("assistant", "6"),
    ),
    conv(("user", "no answer here")),
    conv(("user", "中文?"), ("assistant", "是的 🙂"), key="conversations"),
]


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_pass_trains_exactly_the_assistant_tokens_and_counts_skips(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", RECORDS)
    tok, stats = ByteTokenizer(), ChatStats()
    ds = sft_dataset(
        [path], tok, seq_len=64, batch_size=2, shuffle=False, repeat=False, stats=stats
    )
    trained = collections.Counter()
    for batch in ds:
        trained.update(batch["targets"][batch["loss_mask"] == 1].tolist())
    expected = collections.Counter()
    for i, record in enumerate(RECORDS):
        enc = encode_conversation(parse_conversation(record, where=f"x:{i}"), tok, max_len=64)
        if enc is not None:
            expected.update(enc.tokens[enc.train_token == 1].tolist())
    assert trained == expected and sum(expected.values()) > 0
    assert (stats.conversations, stats.encoded, stats.skipped_no_assistant) == (4, 3, 1)


def test_unknown_role_is_an_error_naming_file_and_line(tmp_path):
    bad = {"messages": [{"role": "wizard", "content": "?"}]}
    path = write_jsonl(tmp_path / "sft.jsonl", [*RECORDS[:2], bad])
    ds = sft_dataset([path], ByteTokenizer(), seq_len=64, batch_size=2, shuffle=False, repeat=False)
    with pytest.raises(ChatFormatError, match=rf"{path}:3: messages\[0\]: unknown role 'wizard'"):
        list(ds)


def test_malformed_line_raises_by_default_and_is_counted_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", RECORDS, extra_lines=['{"messages": [}'])
    kwargs = dict(seq_len=64, batch_size=2, shuffle=False, repeat=False)
    with pytest.raises(JsonlError, match=rf"{path}:5: not valid JSON"):
        list(sft_dataset([path], ByteTokenizer(), **kwargs))
    counter = BadLineCounter(max_bad_fraction=0.5)
    batches = list(
        sft_dataset([path], ByteTokenizer(), on_error="skip", bad_lines=counter, **kwargs)
    )
    assert batches and (counter.read, counter.bad) == (5, 1)


def test_iterator_state_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", RECORDS * 5)
    ds = sft_dataset([path], ByteTokenizer(), seq_len=48, batch_size=2, seed=3)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]
    resumed = iter(ds)
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(4)], strict=True):
        for key in a:
            assert (a[key] == b[key]).all(), key
