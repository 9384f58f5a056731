"""RL prompt files (jaxlm.data.prompt_inputs): both record forms, one-line errors that
name file:line, the held-out split, and checkpointable prompt batches."""

import json

import numpy as np
import pytest
from helpers.runs import make_tokenizer

from jaxlm.config import Config, apply_overrides
from jaxlm.data import arithmetic_task as task
from jaxlm.data import prompt_inputs
from jaxlm.data.chat import encode_chat_prompt, parse_conversation
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import InputError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.load(make_tokenizer(tmp_path_factory.mktemp("tok")))


def _config(path, *more):
    return apply_overrides(
        Config(),
        [
            "data.format=rl",
            f"data.sources=jsonl:{path}",
            "model.max_seq_len=64",
            "data.seq_len=64",
            "rl.max_response_tokens=16",
            *more,
        ],
    )


def _write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_both_forms_encode_as_generation_continues(tmp_path, tokenizer):
    example = task.example("12+345")
    records = [task.prompt_record(example), task.prompt_record(example, chat=True)]
    path = _write(tmp_path, [json.dumps(r) for r in records])
    plain, chat = prompt_inputs.load_prompts(
        _config(path, f"data.eval_sources=jsonl:{path}"), tokenizer, held_out=False
    )
    assert plain.ids == (tokenizer.bos_id, *tokenizer.encode("12+345="))
    assert plain.record == records[0] and plain.where == f"{path}:1"
    messages = parse_conversation(records[1])
    assert list(chat.ids) == encode_chat_prompt(messages, tokenizer)
    assert chat.record["answer"] == "357"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "JSON"),
        ('["12+3=", "15"]', "a prompt record is a JSON object, got list"),
        ('{"prompt": "", "answer": "2"}', "'prompt' must be a non-empty string"),
        ('{"prompt": ["1+1="], "answer": "2"}', "'prompt' must be a non-empty string"),
        ('{"answer": "2"}', "needs 'prompt' (text) or 'messages'"),
        ('{"messages": [], "answer": "2"}', "non-empty list of messages"),
        (
            '{"messages": [{"role": "user", "content": "1+1?"}, '
            '{"role": "assistant", "content": "2"}], "answer": "2"}',
            "ends with a user turn",
        ),
        ('{"prompt": "' + "1+1=" * 40 + '", "answer": "2"}', "at most 48 fit"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, tokenizer, line, problem):
    good = json.dumps({"prompt": "1+1=", "answer": "2"})
    path = _write(tmp_path, [good, "", line, good])
    cfg = _config(path, f"data.eval_sources=jsonl:{path}")
    with pytest.raises(InputError) as error:
        prompt_inputs.load_prompts(cfg, tokenizer, held_out=False)
    message = str(error.value)
    assert message.startswith(f"{path}:3"), message
    assert problem in message and "\n" not in message


def test_held_out_split_is_disjoint_and_stable(tmp_path, tokenizer):
    examples = task.examples("train", 200, seed=0, max_digits=3, unique=True)
    path = _write(tmp_path, [json.dumps(task.prompt_record(e)) for e in examples])
    cfg = _config(path, "data.val_fraction=0.2")
    train = prompt_inputs.load_prompts(cfg, tokenizer, held_out=False)
    held = prompt_inputs.load_prompts(cfg, tokenizer, held_out=True)
    assert len(train) + len(held) == 200 and 20 <= len(held) <= 60
    assert not {p.where for p in train} & {p.where for p in held}
    again = prompt_inputs.load_prompts(cfg, tokenizer, held_out=True)
    assert [p.where for p in again] == [p.where for p in held]


def test_prompt_stream_resumes_and_numbers_its_batches(tmp_path, tokenizer):
    examples = task.examples("train", 40, seed=1, max_digits=2)
    path = _write(tmp_path, [json.dumps(task.prompt_record(e)) for e in examples])
    cfg = _config(path, f"data.eval_sources=jsonl:{path}")
    prompts = prompt_inputs.load_prompts(cfg, tokenizer, held_out=False)
    stream = dict(slots=48, pad_id=tokenizer.pad_id, process_count=2, batch_size=8, seed=3)
    it = iter(prompt_inputs.prompt_stream(prompts, process_index=0, **stream))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    later = [next(it) for _ in range(3)]
    resumed = iter(prompt_inputs.prompt_stream(prompts, process_index=0, **stream))
    resumed.set_state(state)
    for a, b in zip(later, [next(resumed) for _ in range(3)], strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [int(b["batch_index"][0]) for b in first + later] == [0, 1, 2, 3, 4, 5]
    b = first[0]
    for row in range(8):
        n = int(b["lengths"][row])
        ids = prompts[int(b["example_index"][row])].ids
        assert tuple(b["tokens"][row, :n]) == ids and (b["tokens"][row, n:] == 0).all()
        assert (b["segment_ids"][row] == (np.arange(48) < n)).all()
    other = iter(prompt_inputs.prompt_stream(prompts, process_index=1, **stream))
    mine, theirs = set(b["example_index"]), set(next(other)["example_index"])
    assert not mine & theirs  # each process draws its own shard of the prompts


def test_held_out_batches_pad_with_rows_scored_as_nothing(tmp_path, tokenizer):
    examples = task.examples("train", 11, seed=2, max_digits=2)
    path = _write(tmp_path, [json.dumps(task.prompt_record(e)) for e in examples])
    prompts = prompt_inputs.load_prompts(
        _config(path, f"data.eval_sources=jsonl:{path}"), tokenizer, held_out=True
    )
    batches = [
        prompt_inputs.held_out_batches(
            prompts, slots=48, pad_id=0, process_index=i, process_count=2, batch_size=4
        )
        for i in range(2)
    ]
    assert len(batches[0]) == len(batches[1]) == 2  # equal counts on every process
    seen = [int(i) for bs in batches for b in bs for i in b["example_index"] if i >= 0]
    assert sorted(seen) == list(range(11))
