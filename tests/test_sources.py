"""Data sources: every kind as a random-access MapDataset, splits, errors, skipping, pickling."""

import json
import pickle
import re
import shutil

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from absl import flags
from array_record.python.array_record_module import ArrayRecordWriter

from jaxlm.data import corpus
from jaxlm.data.counters import DataCounters
from jaxlm.data.sources import TokenShards, open_documents, open_source
from jaxlm.data.sources.split import record_keys
from jaxlm.data.sources.token_shard_writer import TokenShardWriter
from jaxlm.errors import InputError
from jaxlm.source_spec import SourceSpec, parse_source

TEXTS = [f"document {i}: " + "word " * (i % 7) + "\n" for i in range(40)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def write_parquet(path, table, row_group_size=7):
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_arrayrecord(path, payloads):
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for payload in payloads:
        writer.write(payload)
    writer.close()
    return path


def write_tokens(path, documents):
    with TokenShardWriter(path, vocab_size=500, shard_tokens=50) as writer:
        for index, document in enumerate(documents):
            writer.add(np.asarray(document), int(record_keys("docs", len(documents))[index]))
        writer.commit({"tokenizer": {"sha256": "ab" * 32, "vocab_size": 500}})
    return path


@pytest.fixture
def sources(tmp_path):
    """The same 40 documents in every text kind: {kind: pattern}."""
    text_dir = tmp_path / "text" / "sub"
    text_dir.mkdir(parents=True)
    for i, text in enumerate(TEXTS):
        (text_dir / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "jsonl").mkdir()
    write_jsonl(tmp_path / "jsonl" / "a.jsonl", [{"text": t} for t in TEXTS[:25]])
    write_jsonl(tmp_path / "jsonl" / "b.jsonl", [{"text": t} for t in TEXTS[25:]])
    write_parquet(tmp_path / "docs.parquet", pa.table({"text": TEXTS, "n": range(40)}))
    write_arrayrecord(tmp_path / "docs.array_record", [t.encode() for t in TEXTS])
    return {
        "text": f"{tmp_path}/text/**/*.txt",
        "jsonl": f"{tmp_path}/jsonl/*.jsonl",
        "parquet": f"{tmp_path}/docs.parquet",
        "arrayrecord": f"{tmp_path}/docs.array_record",
    }


TEXT_KINDS = ["text", "jsonl", "parquet", "arrayrecord"]


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_every_text_kind_gives_the_documents_in_order_with_random_access(sources, kind):
    counters = DataCounters()
    ds = open_source(SourceSpec(kind, sources[kind]), counters=counters)
    assert isinstance(ds, grain.MapDataset) and len(ds) == len(TEXTS)
    assert [ds[i] for i in reversed(range(len(ds)))] == TEXTS[::-1]
    assert counters.take() == {"records": len(TEXTS)}
    assert sorted(ds.shuffle(3)) == sorted(TEXTS)


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    for kind in [*TEXT_KINDS, "tokens"]:
        pattern = f"{tmp_path}/none/*.x"
        with pytest.raises(FileNotFoundError, match=re.escape(f"matches '{pattern}'")):
            open_source(SourceSpec(kind, pattern))


def test_stdlib_uses_the_corpus_split():
    train = open_documents(SourceSpec("stdlib"), split="train")
    validation = open_documents(SourceSpec("stdlib"), split="validation")
    everything = open_documents(SourceSpec("stdlib"))
    assert train.paths == [str(p) for p in corpus.stdlib_files("train")]
    assert validation.paths == [str(p) for p in corpus.stdlib_files("validation")]
    assert sorted(everything.paths) == sorted(train.paths + validation.paths)
    assert isinstance(open_source(SourceSpec("stdlib"), split="validation")[0], str)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_split_is_disjoint_covering_deterministic_and_location_independent(sources, tmp_path, kind):
    def split(pattern, name):
        return list(open_source(SourceSpec(kind, pattern), split=name, val_fraction=0.3))

    train, validation = split(sources[kind], "train"), split(sources[kind], "validation")
    assert train and validation
    assert sorted(train + validation) == sorted(TEXTS)  # covering, and disjoint
    assert split(sources[kind], "validation") == validation
    # Moving the data keeps every document on its side: keys hash relative names.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("moved"))
    moved_pattern = sources[kind].replace(str(tmp_path), str(moved), 1)
    assert split(moved_pattern, "validation") == validation


def test_one_document_per_file_splits_by_the_stdlib_rule(sources):
    documents = open_documents(
        SourceSpec("text", sources["text"]), split="validation", val_fraction=0.3
    )
    names = [f"sub/doc{i:02d}.txt" for i in range(40)]  # relative to the glob's root
    expected = [TEXTS[i] for i, name in enumerate(names) if corpus.is_validation(name, 0.3)]
    assert expected and [documents[i] for i in range(len(documents))] == expected


def test_an_empty_split_is_an_error_naming_the_source(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "only"}])
    spec = SourceSpec("jsonl", str(path))
    sizes, errors = [], []
    for name in ("train", "validation"):
        try:
            sizes.append(len(open_source(spec, split=name, val_fraction=0.5)))
        except InputError as error:
            errors.append(str(error))
    assert sizes == [1] and len(errors) == 1
    assert f"jsonl:{path}: the " in errors[0] and "split is empty (1 documents" in errors[0]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, {"body": "no"}, {"text": 3}, [1]])
    ds = open_source(SourceSpec("jsonl", str(path)))
    assert ds[0] == "ok"
    with pytest.raises(InputError, match=rf"{path}:2: no field 'text' \(fields: \['body'\]\)"):
        ds[1]
    # With several bad lines, any read names the first in file order (line 2, not 3).
    with pytest.raises(InputError, match=rf"{path}:2: no field 'text'"):
        ds[2]
    assert open_source(SourceSpec("jsonl", str(path)), text_field="body")[1] == "no"
    # Each kind of bad line, where it is the first: named with its file:line.
    kinds = {
        "number": ({"text": 3}, "field 'text' is a number, not a string"),
        "array": ([1], "expected a JSON object"),
    }
    for name, (record, message) in kinds.items():
        one = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": "ok"}, {"text": "ok"}, record])
        with pytest.raises(InputError, match=rf"{one}:3: {message}"):
            open_source(SourceSpec("jsonl", str(one)))[2]
    cut = write_jsonl(tmp_path / "cut.jsonl", [{"text": "ok"}])
    with cut.open("a") as f:
        f.write('{"text": "cut\n')
    with pytest.raises(InputError, match=rf"{cut}:2: not valid JSON"):
        open_source(SourceSpec("jsonl", str(cut)))[1]


def test_skip_mode_returns_none_counts_and_still_caps_bad_records(tmp_path):
    lines = [json.dumps({"text": f"t{i}"}) for i in range(300)]
    lines[10], lines[20] = '{"text": ', json.dumps({"other": 1})
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    counters = DataCounters()
    ds = open_source(SourceSpec("jsonl", str(path)), on_error="skip", counters=counters)
    assert ds[10] is None and ds[20] is None and ds[11] == "t11"
    assert len(list(ds)) == 298  # Grain drops the skipped records when iterating
    assert counters.take() == {"records": 303, "malformed_records": 4}

    many_bad = [line if i % 4 else "{oops" for i, line in enumerate(lines)]
    path.write_text("\n".join(many_bad) + "\n")
    with pytest.raises(InputError, match=r"lines were malformed \(more than 1\.0%\)"):
        list(open_source(SourceSpec("jsonl", str(path)), on_error="skip"))


def test_parquet_nulls_are_empty_and_columns_are_checked(tmp_path):
    path = write_parquet(
        tmp_path / "n.parquet", pa.table({"text": ["a", None, "c"], "n": [1, 2, 3]}), 2
    )
    counters = DataCounters()
    assert list(open_source(SourceSpec("parquet", str(path)), counters=counters)) == ["a", "", "c"]
    assert counters.take() == {"records": 3, "empty_records": 1}
    with pytest.raises(InputError, match=rf"{path}: no column 'body' \(columns: \['text', 'n'\]\)"):
        open_source(SourceSpec("parquet", str(path)), text_field="body")
    with pytest.raises(InputError, match=rf"{path}: column 'n' has type int64"):
        open_source(SourceSpec("parquet", str(path)), text_field="n")


def test_parquet_binary_column_is_decoded_and_bad_utf8_names_the_row(tmp_path):
    # 40 good rows more: one bad row in 44 is within skip mode's cap (jaxlm.data.jsonl).
    more = [f"row {i}" for i in range(40)]
    values = [b"fine", "caf\u00e9".encode(), b"\xff\xfe", b"last", *(m.encode() for m in more)]
    path = write_parquet(tmp_path / "b.parquet", pa.table({"raw": pa.array(values, pa.binary())}))
    ds = open_source(SourceSpec("parquet", str(path)), text_field="raw")
    assert [ds[0], ds[1], ds[3]] == ["fine", "café", "last"]
    with pytest.raises(InputError, match=rf"{path}: row 2, column 'raw': not valid UTF-8"):
        ds[2]
    skipping = open_source(SourceSpec("parquet", str(path)), text_field="raw", on_error="skip")
    assert list(skipping) == ["fine", "café", "last", *more]


def test_arrayrecord_bad_utf8_names_file_and_record(tmp_path):
    # 40 good records more: one bad record in 43 is within skip mode's cap.
    more = [f"record {i}" for i in range(40)]
    records = [b"ok", b"\xc3(", "ü".encode(), *(m.encode() for m in more)]
    path = write_arrayrecord(tmp_path / "u.array_record", records)
    counters = DataCounters()
    ds = open_source(SourceSpec("arrayrecord", str(path)))
    with pytest.raises(InputError, match=rf"{path}: record 1: not valid UTF-8"):
        ds[1]
    skipping = open_source(SourceSpec("arrayrecord", str(path)), on_error="skip", counters=counters)
    assert list(skipping) == ["ok", "ü", *more]
    assert counters.take() == {"records": 43, "malformed_records": 1}


def test_text_file_bad_utf8_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    ds = open_source(parse_source(f"text:{tmp_path}/*.txt"))
    assert ds[1] == "fine"  # sorted: bad.txt, good.txt
    with pytest.raises(InputError, match=rf"{tmp_path / 'bad.txt'}: not valid UTF-8 \(byte 3"):
        ds[0]


def test_tokens_kind_gives_int32_documents_and_splits_by_stored_keys(tmp_path):
    documents = [[1, *range(10 + i, 20 + i), 2] for i in range(30)]
    path = write_tokens(tmp_path / "shards", documents)
    assert len(TokenShards(path).manifest["shards"]) > 1  # documents span shards
    ds = open_source(SourceSpec("tokens", str(path)))
    assert len(ds) == 30 and ds[7].dtype == np.int32
    assert [d.tolist() for d in ds] == documents
    keys = record_keys("docs", 30)
    validation = open_source(SourceSpec("tokens", str(path)), split="validation", val_fraction=0.3)
    expected = [documents[i] for i in np.flatnonzero(keys < np.uint64(0.3 * 2**64))]
    assert [d.tolist() for d in validation] == expected


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_a_source_dataset_pickles_after_use_without_open_files(sources, kind):
    ds = open_source(SourceSpec(kind, sources[kind]), split="train", val_fraction=0.3)
    ds = ds.map(str.upper)
    first = ds[0]  # opens readers / files / caches in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[0] == first and list(copy) == list(ds)


def test_sources_read_in_grain_worker_processes(sources, tmp_path):
    documents = [[1, i + 5, 2] for i in range(12)]
    tokens = open_source(SourceSpec("tokens", str(write_tokens(tmp_path / "t", documents))))
    parts = [open_source(SourceSpec(kind, sources[kind])) for kind in TEXT_KINDS]
    mixed = grain.MapDataset.concatenate([*parts, tokens.map(lambda d: str(d.tolist()))])
    expected = list(mixed)
    # Grain reads an absl flag when starting workers once a profiler (JAX's) is loaded;
    # outside absl.app nothing parses flags, so mark them parsed (defaults).
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    in_workers = mixed.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    assert list(in_workers) == expected
