"""`jaxlm data clean`: normalisation, quality filters, exact and near dedup, PII, reports."""

import json
import random

import pytest

from jaxlm import cli
from jaxlm.commands import data_clean
from jaxlm.data.atomic import atomic_text_writer
from jaxlm.errors import InputError
from jaxlm.prep.clean import STAGE_NAMES, CleanSettings, clean_corpus, report_path
from jaxlm.prep.filters import QUALITY_FILTER_NAMES, FilterSettings, parse_ngram_thresholds
from jaxlm.prep.minhash import MinHasher, estimated_jaccard, tokens
from jaxlm.prep.normalize import NormalizeStats, normalize_text
from jaxlm.prep.pii import PiiStats, scrub_pii
from jaxlm.prep.repetition import (
    TextView,
    duplicate_line_fractions,
    duplicate_ngram_fraction,
    top_ngram_fraction,
)
from jaxlm.prep.sources import expand_inputs

NO_QUALITY_FILTERS = CleanSettings(disabled=QUALITY_FILTER_NAMES)
CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"


def words(seed: int, n: int) -> list[str]:
    """`n` pseudo-words drawn from a large vocabulary: distinct seeds, unrelated texts."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ner", "tu", "sa", "vel", "dor", "pi", "qua", "ren", "zo"]
    return ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(n)]


def paragraph(seed: int, n: int = 300) -> str:
    ws = words(seed, n)
    return "\n".join(" ".join(ws[i : i + 12]) for i in range(0, n, 12))


def change_words(text: str, positions, seed: int) -> str:
    """`text` with the words at `positions` replaced (line structure kept)."""
    replacements = iter(words(10_000 + seed, len(positions)))
    out, index = [], 0
    for line in text.split("\n"):
        line_words = line.split(" ")
        for j in range(len(line_words)):
            if index in positions:
                line_words[j] = next(replacements) + "x"
            index += 1
        out.append(" ".join(line_words))
    return "\n".join(out)


def shingle_jaccard(a: str, b: str, k: int = 5) -> float:
    """The true Jaccard similarity of the k-token shingle sets (what MinHash estimates)."""

    def shingles(text):
        t = tokens(text)
        return {tuple(t[i : i + k]) for i in range(len(t) - k + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def write_jsonl(path, texts):
    with path.open("w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def read_output(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stage(report, name):
    return next(s for s in report.stages if s.name == name)


# --- deduplication -----------------------------------------------------------------


def test_dedup_removes_planted_duplicates_and_nothing_else(tmp_path):
    distinct = [paragraph(seed) for seed in range(12)]
    chinese = "".join(random.Random(7).choices(CJK, k=300))
    chinese_near = chinese[:100] + "猫" + chinese[101:200] + "狗" + chinese[201:]
    chinese_other = "".join(random.Random(8).choices(CJK, k=300))
    emoji = "Emoji 😀👍🏽 and a family 👨‍👩‍👧 in a note: " + paragraph(99, 60)
    planted = {
        # line (1-based) -> (text, what it is)
        1: (distinct[0], "keep"),
        2: (distinct[1], "keep"),
        3: (distinct[2], "keep"),
        4: (distinct[1], "exact_dup"),
        5: (distinct[3], "keep"),
        6: (change_words(distinct[3], {40, 140, 240}, seed=1), "near_dup"),  # 3 words changed
        7: (distinct[4], "keep"),
        8: (distinct[4].rsplit(" ", 8)[0], "near_dup"),  # the last 8 words cut off
        9: (distinct[5], "keep"),
        # similar but distinct: 15 of 300 words changed; half of one, half of another
        10: (change_words(distinct[5], set(range(10, 300, 20)), seed=2), "keep"),
        11: (distinct[6], "keep"),
        12: (distinct[6][: len(distinct[6]) // 2] + distinct[7][len(distinct[7]) // 2 :], "keep"),
        13: (distinct[2].replace("\n", "\r\n"), "exact_dup"),  # identical once normalised
        14: (chinese, "keep"),
        15: (chinese_near, "near_dup"),
        16: (chinese_other, "keep"),
        17: (emoji, "keep"),
        18: (emoji, "exact_dup"),
        19: (distinct[8], "keep"),
        20: (distinct[9], "keep"),
    }
    # The planted similarities are what the test claims they are.
    assert shingle_jaccard(planted[5][0], planted[6][0]) > 0.85
    assert shingle_jaccard(planted[7][0], planted[8][0]) > 0.9
    assert shingle_jaccard(planted[14][0], planted[15][0]) > 0.9
    assert shingle_jaccard(planted[9][0], planted[10][0]) < 0.65
    assert shingle_jaccard(planted[11][0], planted[12][0]) < 0.5

    src = write_jsonl(tmp_path / "corpus.jsonl", [planted[i][0] for i in sorted(planted)])
    out = tmp_path / "clean.jsonl"
    report = clean_corpus([src], out, NO_QUALITY_FILTERS)

    kept = [r["source"] for r in read_output(out)]
    assert kept == [f"{src}:{i}" for i, (_, kind) in sorted(planted.items()) if kind == "keep"]
    for name in ("exact_dup", "near_dup"):
        removed = {f"{src}:{i}" for i, (_, kind) in planted.items() if kind == name}
        assert {e.split(": ")[0] for e in stage(report, name).examples} == removed
        assert stage(report, name).documents == len(removed)
    # Each removal names the kept document it duplicates.
    assert f"{src}:6: J~" in stage(report, "near_dup").examples[0]
    assert stage(report, "near_dup").examples[0].endswith(f"with {src}:5")
    assert stage(report, "exact_dup").examples[0] == f"{src}:4: identical to {src}:2"
    # The unicode survives byte for byte.
    texts = {r["source"]: r["text"] for r in read_output(out)}
    assert texts[f"{src}:14"] == chinese and texts[f"{src}:17"] == emoji


def test_near_duplicate_of_a_dropped_document_is_kept(tmp_path):
    """Only kept documents are matched against: B ~ A is dropped, C ~ B but not ~ A stays."""
    a = paragraph(1)
    b = change_words(a, set(range(0, 300, 40)), seed=3)  # 8 words changed
    c = change_words(b, set(range(20, 300, 40)), seed=4)  # 8 more, elsewhere
    hasher = MinHasher()
    sig_a, sig_b, sig_c = (hasher.signature(t) for t in (a, b, c))
    # A chain at threshold 0.7, in truth and in the estimates the pipeline will see.
    assert shingle_jaccard(a, b) > 0.75 and shingle_jaccard(b, c) > 0.75
    assert shingle_jaccard(a, c) < 0.65
    assert estimated_jaccard(sig_a, sig_b) >= 0.75 and estimated_jaccard(sig_b, sig_c) >= 0.75
    assert estimated_jaccard(sig_a, sig_c) < 0.6
    src = write_jsonl(tmp_path / "chain.jsonl", [a, b, c])
    settings = CleanSettings(jaccard_threshold=0.7, disabled=QUALITY_FILTER_NAMES)
    report = clean_corpus([src], tmp_path / "out.jsonl", settings)
    assert [r["source"] for r in read_output(tmp_path / "out.jsonl")] == [f"{src}:1", f"{src}:3"]
    assert stage(report, "near_dup").documents == 1


def test_minhash_is_deterministic_and_estimates_jaccard():
    a, b = paragraph(1), change_words(paragraph(1), {50, 150, 250}, seed=5)
    sig_a = MinHasher(seed=0).signature(a)
    assert (sig_a == MinHasher(seed=0).signature(a)).all()
    assert not (sig_a == MinHasher(seed=1).signature(a)).all()
    estimate = float(estimated_jaccard(sig_a, MinHasher(seed=0).signature(b)))
    assert abs(estimate - shingle_jaccard(a, b)) < 0.12  # ~3 standard errors at 128 perms
    assert MinHasher().signature(" ,.;!? ") is None  # no tokens: nothing to compare


def test_dedup_stages_can_be_disabled(tmp_path):
    text = paragraph(3)
    src = write_jsonl(tmp_path / "d.jsonl", [text, text, change_words(text, {5}, seed=6)])
    settings = CleanSettings(disabled=(*QUALITY_FILTER_NAMES, "exact_dup", "near_dup"))
    report = clean_corpus([src], tmp_path / "o.jsonl", settings)
    assert report.documents_out == 3 and [s.name for s in report.stages] == []


# --- normalisation -----------------------------------------------------------------


def test_nfc_composes_and_nfkc_folds_compatibility_characters():
    decomposed = "Cafe\u0301 ﬁle Ａ²"
    assert normalize_text(decomposed, "NFC") == "Caf\u00e9 ﬁle Ａ²"
    assert normalize_text(decomposed, "NFKC") == "Caf\u00e9 file A2"
    assert normalize_text(decomposed, "none") == decomposed


def test_line_endings_and_control_characters():
    stats = NormalizeStats()
    raw = "\ufeffa\r\nb\rc\u2028d\x85e\tf\x00g\x07h\x0ci\x1b[0m \ud800!"
    assert normalize_text(raw, "NFC", stats) == "a\nb\nc\nd\ne\tfghi[0m \ufffd!"
    assert stats.line_breaks_converted == 4
    assert stats.control_chars_removed == 5  # BOM, NUL, BEL, form feed, ESC
    assert stats.surrogates_replaced == 1 and stats.documents_changed == 1


def test_chinese_and_emoji_are_unchanged_by_nfc():
    text = "中文文本，标点。😀👍🏽 👨‍👩‍👧 (zero-width joiners kept)"
    stats = NormalizeStats()
    assert normalize_text(text, "NFC", stats) == text
    assert stats.documents_changed == 0


# --- quality filters ---------------------------------------------------------------


def test_repetition_statistics_on_small_examples():
    view = TextView("a b\nc\na b\n\n  \na b \nd")
    assert duplicate_line_fractions(view) == (2 / 5, 6 / 11)  # 'a b' twice more
    # "x y" occurs 3 times: 3 * 2 chars of 9 word chars.
    assert top_ngram_fraction(TextView("x y x y q x y"), 2) == pytest.approx(6 / 7)
    assert top_ngram_fraction(TextView("one two three four"), 2) == 0.0  # nothing repeats
    # 3-grams: "aa bb cc" repeats once -> its 6 chars of 6 + 2 + 6 word chars.
    assert duplicate_ngram_fraction(TextView("aa bb cc dd aa bb cc"), 3) == pytest.approx(6 / 14)


def test_each_filter_removes_its_planted_document_and_the_report_counts_match(tmp_path):
    good = [paragraph(seed, 120) for seed in range(5)]
    base = words(50, 90)
    planted = {
        "min_bytes": "too short to keep",
        "max_chars": paragraph(60, 600),
        "dup_lines": "\n".join(["same line here"] * 6 + words(61, 8)),
        # Few repeated lines (1 of 8) but they hold most characters.
        "dup_line_chars": "\n".join([" ".join(words(62, 30))] * 2 + words(63, 6)),
        "top_ngram": " ".join(w + " hello world" for w in words(64, 40)),
        # A 90-word text followed by a repeat of its first 30 words: no line repeats.
        "dup_ngram": " ".join(base + base[:30]),
    }
    texts = [good[0], *planted.values(), *good[1:]]
    src = write_jsonl(tmp_path / "q.jsonl", texts)
    settings = CleanSettings(filters=FilterSettings(min_bytes=50, max_chars=3000))
    report = clean_corpus([src], tmp_path / "out.jsonl", settings)

    assert [s.name for s in report.stages] == list(STAGE_NAMES)
    for line, (name, text) in enumerate(planted.items(), start=2):
        s = stage(report, name)
        assert (s.documents, s.characters) == (1, len(text)), name
        assert s.examples[0].startswith(f"{src}:{line}: "), s.examples
    kept = [r["text"] for r in read_output(tmp_path / "out.jsonl")]
    assert kept == good
    assert report.documents_in == report.documents_out + sum(s.documents for s in report.stages)
    assert report.characters_in == report.characters_out + sum(s.characters for s in report.stages)
    saved = json.loads(report_path(tmp_path / "out.jsonl").read_text())
    assert [(s["name"], s["documents"]) for s in saved["stages"]] == [
        (s.name, s.documents) for s in report.stages
    ]

    # Each quality filter can be turned off: then that document is kept.
    for name in ("min_bytes", "dup_ngram"):
        settings_off = CleanSettings(
            filters=FilterSettings(min_bytes=50, max_chars=3000), disabled=(name,)
        )
        out = tmp_path / f"without_{name}.jsonl"
        report_off = clean_corpus([src], out, settings_off)
        assert name not in [s.name for s in report_off.stages]
        assert planted[name] in [r["text"] for r in read_output(out)]


def test_ngram_threshold_flags_are_parsed_and_checked():
    assert parse_ngram_thresholds("2:0.2, 3:0.18", "--top-ngram") == {2: 0.2, 3: 0.18}
    for bad in ("2", "x:0.1", "2:1.5", "0:0.1", ""):
        with pytest.raises(InputError, match="--top-ngram"):
            parse_ngram_thresholds(bad, "--top-ngram")


# --- PII ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, scrubbed",
    [
        ("mail john.doe+tag@example.co.uk today", "mail <EMAIL> today"),
        ("Call (202) 555-0147.", "Call <PHONE>."),
        ("202-555-0147 or 202.555.0147", "<PHONE> or <PHONE>"),
        ("toll free 1-800-555-0199", "toll free <PHONE>"),
        ("London +44 20 7946 0958, Paris +33 1 23 45 67 89", "London <PHONE>, Paris <PHONE>"),
        ("微信 +8613800138000 联系", "微信 <PHONE> 联系"),
    ],
)
def test_pii_positives(text, scrubbed):
    assert scrub_pii(text) == scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "python 3.11.4 and numpy 1.26.0",
        "released 2024-01-15 at 10:30:45, or 12/25/2023",
        "server 192.168.0.1 port 8080",
        "card = 4111111111111111; big = 12345678901234567890",
        "id-202-555-01478 and v202.555.0147",
        "part 202-555-0147-99, build 202.555.0147.3",
        "x = y +12 34; C++ 11; @property; user@localhost",
        "ISBN 978-3-16-148410-0, range(100, 200, 3000)",
    ],
)
def test_pii_negatives(text):
    stats = PiiStats()
    assert scrub_pii(text, stats) == text
    assert (stats.emails, stats.phones) == (0, 0)


def test_pii_counts_reach_the_report(tmp_path):
    texts = [
        paragraph(1, 40) + "\nwrite to a@b.org or c.d@e.io, call +1 202 555 0147",
        paragraph(2, 40) + "\nno contact details here, version 2.0.1",
    ]
    src = write_jsonl(tmp_path / "p.jsonl", texts)
    settings = CleanSettings(scrub_pii=True, disabled=QUALITY_FILTER_NAMES)
    report = clean_corpus([src], tmp_path / "o.jsonl", settings)
    assert report.pii == {"emails": 2, "phones": 1, "documents_changed": 1}
    out = read_output(tmp_path / "o.jsonl")
    assert out[0]["text"].endswith("write to <EMAIL> or <EMAIL>, call <PHONE>")
    assert out[1]["text"] == texts[1]


# --- inputs, bad lines, output -----------------------------------------------------


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    good = json.dumps({"text": paragraph(1, 20)})
    cases = {
        "broken": ('{"text": "unterminated', "not valid JSON"),
        "missing": ('{"body": "x"}', "no field 'text'"),
        "number": ('{"text": 42}', "field 'text' is int"),
        "list": ('["text"]', "expected a JSON object"),
    }
    for name, (line, why) in cases.items():
        src = tmp_path / f"{name}.jsonl"
        src.write_text(f"{good}\n\n{line}\n{good}\n", encoding="utf-8")
        out = tmp_path / f"{name}.out.jsonl"
        with pytest.raises(InputError, match=rf"{src}:3: {why}"):
            clean_corpus([src], out, CleanSettings())
        assert not out.exists() and not report_path(out).exists()


def test_skip_bad_lines_counts_and_reports_them(tmp_path):
    lines = [json.dumps({"text": paragraph(i, 20)}) for i in range(150)]
    lines[10] = "{not json"
    lines[20] = json.dumps({"other": "x"})
    src = tmp_path / "s.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = CleanSettings(skip_bad_lines=True, disabled=QUALITY_FILTER_NAMES)
    report = clean_corpus([src], tmp_path / "o.jsonl", settings)
    assert (report.documents_in, report.documents_out, report.bad_lines_skipped) == (148, 148, 2)
    assert report.bad_line_examples[0].startswith(f"{src}:11: not valid JSON")
    assert report.bad_line_examples[1].startswith(f"{src}:21: no field 'text'")
    saved = json.loads(report_path(tmp_path / "o.jsonl").read_text())
    assert saved["bad_lines_skipped"] == 2

    # Skipping still stops when a large share of the file is bad (probably a wrong file).
    src.write_text("\n".join(lines[:100] + ["junk"] * 5) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="malformed"):
        clean_corpus([src], tmp_path / "o2.jsonl", settings)


def test_text_files_and_globs_one_document_each(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text(paragraph(1, 30), encoding="utf-8")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("第二个文件 " + paragraph(2, 30), "utf-8")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    files = expand_inputs([f"{tmp_path}/docs/**/*.txt", str(tmp_path / "docs" / "a.txt")])
    assert [f.name for f in files] == ["a.txt", "bad.txt", "b.txt"]  # a.txt listed once
    with pytest.raises(InputError, match=r"bad\.txt: not valid UTF-8"):
        clean_corpus(files, tmp_path / "o.jsonl", CleanSettings())
    good = [f for f in files if f.name != "bad.txt"]
    clean_corpus(good, tmp_path / "o.jsonl", CleanSettings())
    assert [r["source"] for r in read_output(tmp_path / "o.jsonl")] == [str(f) for f in good]
    with pytest.raises(FileNotFoundError, match="nothing"):
        expand_inputs([f"{tmp_path}/nothing/*.txt"])


def test_refuses_to_overwrite_without_force_and_writes_atomically(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [paragraph(1, 40), paragraph(2, 40)])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(InputError, match=rf"{out}: already exists; pass --force"):
        clean_corpus([src], out, CleanSettings())
    assert out.read_text() == "precious\n"

    # With --force, a run that fails half-way leaves the old output untouched and no
    # temporary file behind.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(src.read_text() + "{oops\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{broken}:3"):
        clean_corpus([broken], out, CleanSettings(), force=True)
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl", "in.jsonl", "out.jsonl"]

    clean_corpus([src], out, CleanSettings(), force=True)
    assert len(read_output(out)) == 2 and report_path(out).exists()


def test_atomic_writer_publishes_only_complete_files(tmp_path):
    target = tmp_path / "t.txt"
    with pytest.raises(RuntimeError), atomic_text_writer(target) as f:
        f.write("half")
        assert not target.exists()  # nothing visible while writing
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_text_writer(target) as f:
        f.write("whole")
    assert target.read_text() == "whole"


# --- command line ------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, capsys):
    texts = [
        paragraph(1, 60),
        paragraph(2, 60),
        paragraph(1, 60),
        "tiny",
        "电话 +8613800138000 " * 9,
    ]
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "clean" / "out.jsonl"
    argv = ["data", "clean", str(src), "-o", str(out), "--scrub-pii", "--normalize", "nfkc"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "exact_dup" in printed and "kept 2 documents" in printed
    records = read_output(out)
    assert [r["source"] for r in records] == [f"{src}:1", f"{src}:2"]
    report = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert report["documents_in"] == 5 and report["documents_out"] == 2
    assert report["settings"]["normalization"] == "NFKC"
    removed = {s["name"]: s["documents"] for s in report["stages"] if s["documents"]}
    assert removed == {"min_bytes": 1, "top_ngram": 1, "exact_dup": 1}
    assert report["pii"]["phones"] == 9  # scrubbed before the filters saw the text

    first = out.read_bytes()
    assert cli.main(argv) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0
    assert out.read_bytes() == first  # deterministic


def test_cli_missing_input_exits_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert cli.main(["data", "clean", str(missing), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    bad_flag = ["data", "clean", str(missing), "-o", "o.jsonl", "--bands", "5"]
    assert cli.main(bad_flag) == 2
    assert "--bands (5) must divide --num-perm (128)" in capsys.readouterr().err


def test_help_lists_the_pipeline_stages():
    assert data_clean.STAGES == STAGE_NAMES


def test_the_minimum_length_is_in_bytes_so_short_chinese_documents_are_measured_fairly(
    tmp_path, capsys
):
    """A 20-character Chinese sentence says about as much as a 60-letter English one;
    the old 50-character minimum dropped it, the 50-byte minimum keeps it (60 bytes),
    and still drops a 30-letter English fragment and a 10-character Chinese one."""
    zh_sentence = "熊猫生活在中国西南的山区里，主要吃竹子。"  # 20 characters, 60 bytes
    en_sentence = "Pandas live in the mountains of south-west China."  # 49 chars
    zh_short, en_short = "熊猫吃竹子，很可爱。", "Pandas eat bamboo."  # 30 and 18 bytes
    texts = [zh_sentence, en_sentence + " They eat bamboo.", zh_short, en_short]
    assert len(zh_sentence) == 20 and len(zh_sentence.encode()) == 60
    src = write_jsonl(tmp_path / "mixed.jsonl", texts)
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "clean", str(src), "-o", str(out)]) == 0
    assert [r["text"] for r in read_output(out)] == texts[:2]
    report = json.loads(report_path(out).read_text(encoding="utf-8"))
    removed = {s["name"]: s["documents"] for s in report["stages"] if s["documents"]}
    assert removed == {"min_bytes": 2}
    # The character count is still there for who wants it, off by default.
    out_chars = tmp_path / "by_chars.jsonl"
    argv = ["data", "clean", str(src), "-o", str(out_chars), "--min-bytes", "0"]
    assert cli.main([*argv, "--min-chars", "50"]) == 0
    assert [r["text"] for r in read_output(out_chars)] == [texts[1]]
    capsys.readouterr()
