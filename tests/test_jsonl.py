"""JSON-lines sources: random access, file:line errors, counted opt-in skipping."""

import json

import pytest

from jaxlm.data.jsonl import BadLineCounter, JsonlError, JsonlLines


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_random_access_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "a.jsonl", ['{"text": "one"}', "", '{"text": "二"}', "  ", '{"x": 3}'])
    src = JsonlLines(path)
    assert len(src) == 3
    assert src[1] == (f"{path}:3", {"text": "二"})
    assert src[2] == (f"{path}:5", {"x": 3})
    assert src[0] == (f"{path}:1", {"text": "one"})


def test_malformed_line_raises_with_file_and_line_by_default(tmp_path):
    path = write(tmp_path / "b.jsonl", ['{"text": "ok"}', '{"text": "broken', '{"text": "ok"}'])
    src = JsonlLines(path)
    with pytest.raises(JsonlError, match=rf"{path}:2: not valid JSON"):
        [src[i] for i in range(len(src))]


def test_skip_mode_counts_and_aborts_above_the_threshold(tmp_path):
    good = [json.dumps({"i": i}) for i in range(200)]
    few_bad = [*good[:100], "not json", *good[100:]]
    counter = BadLineCounter(max_bad_fraction=0.01)
    src = JsonlLines(write(tmp_path / "c.jsonl", few_bad), on_error="skip", counter=counter)
    records = [src[i] for i in range(len(src))]
    assert sum(r is None for _, r in records) == 1
    assert (counter.read, counter.bad) == (201, 1)
    assert counter.examples[0].startswith(f"{tmp_path / 'c.jsonl'}:101")

    many_bad = [line if i % 10 else "{oops" for i, line in enumerate(good)]
    counter = BadLineCounter(max_bad_fraction=0.05)
    src = JsonlLines(write(tmp_path / "d.jsonl", many_bad), on_error="skip", counter=counter)
    with pytest.raises(JsonlError, match=r"lines were malformed \(more than 5\.0%\)"):
        [src[i] for i in range(len(src))]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.jsonl")):
        JsonlLines(tmp_path / "nope.jsonl")


def test_record_stream_needs_files():
    from jaxlm.data.jsonl_records import record_stream

    with pytest.raises(ValueError, match="at least one file"):
        record_stream([], seed=0, shuffle=False, repeat=False, process_index=0, process_count=1)
