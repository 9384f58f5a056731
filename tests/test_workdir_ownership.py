"""A workdir owns what it was trained with: its tokenizer, and a fingerprint of its data.

- The tokenizer is copied into the workdir at the start of a run and read from there by
  every later reader (resume, generate/chat/eval, export, convert), whatever directory
  they run in; a different file at the run's data.tokenizer path is refused, not used.
- `train.init_from` with a tokenizer other than the starting model's (same vocabulary
  size, other pieces) is refused unless `train.allow_tokenizer_change` says it is
  vocabulary surgery.
- A resume after the data's content changed (same document count) is refused, or with
  `data.allow_changed_data` continues with a warning.
"""

import json
import re
import shutil

import pytest
from helpers.runs import make_tokenizer
from test_train_loop import SMALL

from jaxlm import cli
from jaxlm.config import Config, apply_overrides
from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.run_inputs import check_fingerprint, ensure_tokenizer
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import InputError
from jaxlm.inference.loading import load_model
from jaxlm.training.loop import train
from jaxlm.training.tasks import task_for

FAST = [*SMALL, "train.peak_flops=1e12"]  # a number for MFU instead of measuring the CPU
ONE_STEP = [*FAST, "train.steps=1", "data.eval_max_docs=1"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Two 384-piece tokenizers with different pieces (trained on other files)."""
    root = tmp_path_factory.mktemp("tok")
    first = Tokenizer.load(make_tokenizer(root))
    texts = [read_text(path) for path in stdlib_files("train")[80:160]]
    second = train_tokenizer(texts, root / "other", vocab_size=384, max_chars=200_000)
    assert first.vocab_size == second.vocab_size and first.sha256 != second.sha256
    return first, second


def _place(tokenizer: Tokenizer, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer.path, path)
    shutil.copyfile(tokenizer.path.with_suffix(".json"), path.with_suffix(".json"))


# ------------------------------------------------------------------------ item 6


def test_a_workdir_reads_its_own_tokenizer_from_any_directory(tmp_path, monkeypatch, tokenizers):
    first, second = tokenizers
    dir_a, dir_b, dir_c = (tmp_path / name for name in "abc")
    _place(first, dir_a / "tok" / "t.model")
    dir_c.mkdir()
    workdir = tmp_path / "run"
    overrides = [*ONE_STEP, "data.tokenizer=tok/t.model"]  # relative to dir A
    monkeypatch.chdir(dir_a)
    train(apply_overrides(Config(), overrides), workdir)
    assert json.loads((workdir / "config.json").read_text())["data"]["tokenizer"] == "tok/t.model"

    # From another directory: generate/chat/eval (load_model), export and convert.
    monkeypatch.chdir(dir_c)
    assert load_model(workdir).tokenizer.sha256 == first.sha256
    assert cli.main(["export", str(workdir), str(tmp_path / "export")]) == 0
    assert Tokenizer.load(tmp_path / "export" / "tokenizer.model").sha256 == first.sha256
    assert cli.main(["convert", "--to-hf", str(workdir), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == first.path.read_bytes()

    # Resuming from there with the same file named by another relative path continues.
    same_file = [*ONE_STEP, "data.tokenizer=../a/tok/t.model"]
    assert train(apply_overrides(Config(), same_file), workdir).steps == 1

    # A different tokenizer at the run's relative path: never used, and a resume naming
    # it is refused with both files named.
    _place(second, dir_b / "tok" / "t.model")
    monkeypatch.chdir(dir_b)
    assert load_model(workdir).tokenizer.sha256 == first.sha256
    both = rf"{re.escape(str(dir_b / 'tok' / 't.model'))}.*{re.escape(str(workdir))}"
    with pytest.raises(InputError, match=both):
        train(apply_overrides(Config(), overrides), workdir)
    assert Tokenizer.load(workdir / "tokenizer.model").sha256 == first.sha256

    # A workdir from before tokenizer copies: loads where its relative path is found,
    # and says what is missing elsewhere.
    (workdir / "tokenizer.model").unlink()
    (workdir / "tokenizer.json").unlink()
    monkeypatch.chdir(dir_a)
    assert load_model(workdir).tokenizer.sha256 == first.sha256
    monkeypatch.chdir(dir_c)
    with pytest.raises(InputError, match=r"no tokenizer\.model.*'tok/t\.model'.*not found"):
        load_model(workdir)


# ------------------------------------------------------------------------ item 7


def _ensure(cfg, workdir, logged=None):
    workdir.mkdir(exist_ok=True)
    log = logged.append if logged is not None else lambda message: None
    return ensure_tokenizer(
        cfg,
        workdir,
        log=log,
        is_leader=True,
        barrier=lambda name: None,
        may_train=task_for(cfg).trains_tokenizer,
    )


def test_init_from_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, tokenizers):
    first, second = tokenizers
    export = tmp_path / "export"
    _place(first, export / "tokenizer.model")
    small = ["model.vocab_size=384", "data.tokenizer_vocab_size=384", f"train.init_from={export}"]

    other = apply_overrides(Config(), [*small, f"data.tokenizer={second.path}"])
    both = rf"{re.escape(str(second.path))}.*{re.escape(str(export / 'tokenizer.model'))}"
    with pytest.raises(InputError, match=rf"{both}.*train\.allow_tokenizer_change"):
        _ensure(other, tmp_path / "refused")
    assert not (tmp_path / "refused" / "tokenizer.model").exists()

    # The same content under another name is the same tokenizer.
    same = apply_overrides(Config(), [*small, f"data.tokenizer={first.path}"])
    assert _ensure(same, tmp_path / "same").sha256 == first.sha256

    # Vocabulary surgery says so, and is told what it does.
    logged = []
    surgery = apply_overrides(other, ["train.allow_tokenizer_change=true"])
    assert _ensure(surgery, tmp_path / "surgery", logged).sha256 == second.sha256
    assert any("train.allow_tokenizer_change" in line for line in logged)


# ------------------------------------------------------------------------ item 8


@pytest.fixture
def jsonl_run(tmp_path, tokenizers):
    data = tmp_path / "docs.jsonl"
    texts = [read_text(path)[:3000] for path in stdlib_files("train")[:60]]
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    overrides = [*ONE_STEP, f"data.sources=jsonl:{data}", "data.val_fraction=0.1"]
    overrides.append(f"data.tokenizer={tokenizers[0].path}")
    workdir = tmp_path / "run"
    train(apply_overrides(Config(), overrides), workdir)
    return data, texts, overrides, workdir


def test_resume_after_every_document_changed_is_refused_or_warned(jsonl_run, capsys):
    data, texts, overrides, workdir = jsonl_run
    # Same count, same sizes: only the content says the data is other data.
    data.write_text("".join(json.dumps({"text": text.swapcase()}) + "\n" for text in texts))
    with pytest.raises(
        InputError, match=rf"jsonl:{re.escape(str(data))}.*data\.allow_changed_data"
    ):
        train(apply_overrides(Config(), overrides), workdir)

    capsys.readouterr()
    allowed = apply_overrides(Config(), [*overrides, "data.allow_changed_data=true"])
    assert train(allowed, workdir).steps == 1
    assert re.search(rf"warning: .*jsonl:{re.escape(str(data))}.*changed", capsys.readouterr().out)


def _write_kind(kind, root, texts, tokenizer):
    """Writes `texts` as a `kind` source under `root`; returns its config overrides."""
    if kind == "text":
        root.mkdir(exist_ok=True)
        for i, text in enumerate(texts):
            (root / f"{i:02d}.txt").write_text(text)
        return [f"data.sources=text:{root}/*.txt"]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        root.mkdir(exist_ok=True)
        pq.write_table(pa.table({"text": texts}), root / "docs.parquet")
        return [f"data.sources=parquet:{root}/docs.parquet"]
    if kind == "tokens":
        from jaxlm.data.sources.tokenize import tokenize_sources
        from jaxlm.source_spec import parse_sources

        text_dir = root.with_name(root.name + "_text")
        _write_kind("text", text_dir, texts, tokenizer)
        specs = parse_sources(f"text:{text_dir}/*.txt")
        tokenize_sources(specs, tokenizer, root, shard_tokens=2000, force=True)
        return [f"data.sources=tokens:{root}", f"data.tokenizer={tokenizer.path}"]
    root.mkdir(exist_ok=True)
    if kind == "chat":
        lines = [
            {"conversations": [{"role": "user", "content": t}, {"role": "assistant", "content": t}]}
            for t in texts
        ]
    else:
        lines = [{"prompt": t, "chosen": t, "rejected": t[::-1]} for t in texts]
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [
        f"data.format={kind}",
        f"data.sources=jsonl:{root}/data.jsonl",
        f"data.tokenizer={tokenizer.path}",
    ]


@pytest.mark.parametrize("kind", ["text", "parquet", "tokens", "chat", "preference"])
def test_every_kind_of_source_fingerprints_its_content(kind, tmp_path, tokenizers):
    tokenizer = tokenizers[0]
    texts = [f"def f{i}(x):\n    return x * {i}  # {'word ' * (i % 7)}\n" * 5 for i in range(40)]
    base = ["model.vocab_size=384", "data.tokenizer_vocab_size=384", "data.val_fraction=0.1"]
    cfg = apply_overrides(Config(), [*base, *_write_kind(kind, tmp_path / "d", texts, tokenizer)])
    before = task_for(cfg).data_fingerprint(tokenizer.sha256)
    check_fingerprint(before, task_for(cfg).data_fingerprint(tokenizer.sha256), "ckpt", cfg, print)

    _write_kind(kind, tmp_path / "d", [text.swapcase() for text in texts], tokenizer)
    after = task_for(cfg).data_fingerprint(tokenizer.sha256)
    assert after["documents_per_source"] == before["documents_per_source"]
    with pytest.raises(InputError, match=r"ckpt: the content of the training data changed"):
        check_fingerprint(before, after, "ckpt", cfg, print)


def test_a_checkpoint_from_before_content_fingerprints_resumes_on_counts(tmp_path, tokenizers):
    tokenizer = tokenizers[0]
    cfg = apply_overrides(Config(), _write_kind("text", tmp_path / "d", ["a b c"] * 30, tokenizer))
    now = task_for(cfg).data_fingerprint(tokenizer.sha256)
    logged = []
    old = {"documents_per_source": now["documents_per_source"]}
    check_fingerprint(old, now, "ckpt", cfg, logged.append)
    assert len(logged) == 1 and "only document counts" in logged[0]


def test_a_precomputed_reference_table_is_refused_for_changed_pairs(tmp_path, tokenizers):
    from jaxlm.data.posttrain_inputs import jsonl_content, lines_per_file
    from jaxlm.training.reference_logps import FILE, reference_table, save_table

    texts = [f"pair {i}: " + "some words " * (i % 5 + 1) for i in range(20)]
    written = _write_kind("preference", tmp_path / "d", texts, tokenizers[0])
    cfg = apply_overrides(Config(), ["data.val_fraction=0.25", *written])
    lines = lines_per_file(cfg, with_eval=True)
    table = {"data.jsonl:1": [0.0, 0.0]}

    def reread():  # a workdir holding the table: read back, no model needed
        return reference_table(cfg, None, tmp_path, None, None, None, None, 1, lambda m: None)

    save_table(
        tmp_path / FILE,
        table,
        {"lines_per_file": lines, "content_per_file": jsonl_content(cfg, with_eval=True)},
    )
    assert reread().keys() == table.keys()
    _write_kind("preference", tmp_path / "d", [text.swapcase() for text in texts], tokenizers[0])
    assert lines_per_file(cfg, with_eval=True) == lines
    with pytest.raises(InputError, match=r"computed for other data"):
        reread()
    # A table from before content digests: checked on its line counts alone.
    save_table(tmp_path / FILE, table, lines)
    assert reread().keys() == table.keys()


# ------------------------------------------------------------- multi-process barriers


@pytest.mark.parametrize("given", [True, False], ids=["copied", "trained"])
def test_every_process_passes_the_same_barriers_whatever_it_finds(tmp_path, tokenizers, given):
    """Two processes as threads with a real barrier: the follower starts late, when the
    leader's copy (or trained tokenizer) may already be in the workdir. Both must pass
    the same barriers; before, the follower found the file and skipped one, and its
    next collective met the leader's barrier (gloo aborted two-process CI runs so)."""
    import threading
    import time

    first, _ = tokenizers
    extra = [f"data.tokenizer={first.path}"] if given else ["data.tokenizer_max_chars=100000"]
    cfg = apply_overrides(Config(), [*FAST, *extra])
    workdir = tmp_path / "run"
    workdir.mkdir()
    barriers, lock = {}, threading.Lock()
    passed = {"leader": [], "follower": []}
    errors = []

    def run(process):
        def barrier(name):
            passed[process].append(name)
            with lock:
                shared = barriers.setdefault(name, threading.Barrier(2, timeout=20))
            shared.wait()

        if process == "follower":  # late: after the leader's file appears, or 3 s
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not any(workdir.glob("tokenizer*")):
                time.sleep(0.01)
        try:
            ensure_tokenizer(
                cfg,
                workdir,
                log=lambda message: None,
                is_leader=process == "leader",
                barrier=barrier,
                may_train=task_for(cfg).trains_tokenizer,
            )
        except threading.BrokenBarrierError as error:
            errors.append((process, error))

    threads = [threading.Thread(target=run, args=(p,)) for p in passed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, (errors, passed)
    assert passed["leader"] and passed["leader"] == passed["follower"]
