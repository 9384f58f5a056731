"""Post-training data from the stdlib: extraction, corruptions, determinism, held-out split,
the files' formats (read back by the SFT and preference pipelines) and `jaxlm data posttrain`.

The generated sets use only the first files of each split (--max-files) to stay fast.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm import cli
from jaxlm.data.chat import ChatStats, parse_conversation
from jaxlm.data.corpus import stdlib_files, stdlib_root
from jaxlm.data.posttrain.corruptions import (
    KINDS,
    corrupt,
    donor_pools,
    flipped_operator,
    swapped_body,
    swapped_statements,
    truncated,
)
from jaxlm.data.posttrain.functions import FunctionLimits, compiles, extract_functions
from jaxlm.data.preference import PreferenceStats, parse_preference, preference_dataset
from jaxlm.data.sft import sft_dataset
from jaxlm.data.stdlib_tasks import FILE_NAMES, MANIFEST, write_posttrain_sets
from jaxlm.errors import InputError

MAX_FILES = 20
ALL_FILES = [*FILE_NAMES.values(), MANIFEST]

SOURCE = '''
import os


def no_docstring(x):
    y = x + 1
    return y


def scale(values, factor=2):
    """Multiply each positive value by factor."""
    out = []
    for v in values:
        if v is not None and v > 0:
            out.append(v * factor)
    return out


class Box:
    """A box."""

    @staticmethod
    def independent():
        """Two imports: their order does not matter."""
        import os
        import sys

    def total(self, extra):
        """Sum of the items plus extra."""
        total = sum(self.items)
        total += extra
        return total

    def text(self):
        """Dedenting would change the string below, so this is no task."""
        x = """
        indented"""
        return x
'''


def functions_of(source=SOURCE, **limits):
    found = extract_functions(source, "pkg/mod.py", FunctionLimits(**limits))
    return {f.qualname.split(":")[1]: f for f in found}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("posttrain")
    manifest = write_posttrain_sets(out, max_files=MAX_FILES)
    return out, manifest


# --- extraction and corruptions on a hand-written module ------------------------------


def test_extracts_documented_functions_and_methods_within_limits():
    found = functions_of()
    assert sorted(found) == ["Box.independent", "Box.total", "scale"]
    independent = found["Box.independent"]
    assert independent.module == "pkg.mod" and independent.class_name == "Box"
    assert independent.signature == "@staticmethod\ndef independent():"
    assert independent.source.startswith('@staticmethod\ndef independent():\n    """Two')
    assert (
        found["Box.total"].body
        == "    total = sum(self.items)\n    total += extra\n    return total"
    )
    assert sorted(functions_of(min_body_lines=3)) == ["Box.total", "scale"]
    assert functions_of(max_answer_chars=100) == {}


def test_redefined_names_get_a_suffix():
    source = SOURCE + (
        "\n    @property\n    def size(self):\n        'Size.'\n        n = len(self.items)\n"
        "        return n\n\n    @size.setter\n    def size(self, n):\n        'Set size.'\n"
        "        self.items = [None] * n\n        self.dirty = True\n"
    )
    assert {"Box.size", "Box.size#2"} <= set(functions_of(source))


def test_truncated_drops_the_last_statement():
    total = functions_of()["Box.total"]
    assert truncated(total, {}, 0) == total.source.removesuffix("\n    return total")


def test_swapped_statements_only_swaps_dependent_neighbours():
    found = functions_of()
    total = found["Box.total"]
    lines = total.source.split("\n")
    swapped = swapped_statements(total, {}, 0).split("\n")
    assert swapped[:2] == lines[:2] and swapped[2:] == [lines[3], lines[2], lines[4]]
    assert swapped_statements(total, {}, 1).split("\n")[2:] == [lines[2], lines[4], lines[3]]
    assert swapped_statements(found["Box.independent"], {}, 0) is None  # two imports
    assert swapped_statements(found["scale"], {}, 0) is not None  # `out = []` / the loop


def test_flipped_operator_negates_one_body_operator():
    scale = functions_of()["scale"]
    assert "v is not None or v > 0" in flipped_operator(scale, {}, 0)
    assert "v is not None and v <= 0" in flipped_operator(scale, {}, 1)
    assert flipped_operator(functions_of()["Box.total"], {}, 0) is None


def test_swapped_body_takes_a_donor_of_the_same_kind():
    found = functions_of()
    donors = donor_pools(found.values())
    rejected = swapped_body(found["Box.total"], donors, 0)
    assert rejected == found["Box.total"].head + "\n    import os\n    import sys"
    assert swapped_body(found["scale"], donors, 0) is None  # the only plain function
    kind, rejected = corrupt(found["scale"], donors, 12345)
    assert kind in KINDS and rejected != found["scale"].source and compiles(rejected)


# --- the generated data set ------------------------------------------------------------


def test_same_bytes_whatever_the_listing_or_hash_seed(generated, tmp_path):
    out, manifest = generated
    reversed_sources = {s: stdlib_files(s)[::-1] for s in ("train", "validation")}
    again = write_posttrain_sets(
        tmp_path / "again", max_files=MAX_FILES, sources=reversed_sources, root=stdlib_root()
    )
    manifest_without_origin = {**manifest["params"], "stdlib": False}
    assert again["params"] == manifest_without_origin and again["files"] == manifest["files"]
    code = (
        "import sys; from jaxlm.data.stdlib_tasks import write_posttrain_sets; "
        f"write_posttrain_sets(sys.argv[1], max_files={MAX_FILES})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], env=env, check=True)
    for name in ALL_FILES:
        assert (tmp_path / "other" / name).read_bytes() == (out / name).read_bytes(), name


def test_splits_share_no_file_function_or_answer(generated):
    out, _ = generated
    root = stdlib_root()
    split_files = {
        s: {p.relative_to(root).as_posix() for p in stdlib_files(s)}
        for s in ("train", "validation")
    }
    ids, answers = {}, {}
    for (kind, split), name in FILE_NAMES.items():
        records = read_jsonl(out / name)
        assert len({r["id"] for r in records}) == len(records), name
        for record in records:
            file_name = record["id"].split(":")[0]
            assert file_name in split_files[split], (name, record["id"])
            ids.setdefault(split, set()).add(record["id"])
            answer = record["conversations" if kind == "sft" else "chosen"][-1]["content"]
            answers.setdefault(split, set()).add(answer)
    assert ids["train"] and ids["validation"]
    assert not ids["train"] & ids["validation"]
    assert not {i.split(":")[0] for i in ids["train"]} & {
        i.split(":")[0] for i in ids["validation"]
    }
    assert not answers["train"] & answers["validation"]


def test_pairs_share_the_prompt_and_reject_a_different_valid_function(generated):
    out, _ = generated
    kinds = set()
    for name in ("dpo_train.jsonl", "dpo_val.jsonl"):
        for i, record in enumerate(read_jsonl(out / name), start=1):
            chosen, rejected = parse_preference(record, where=f"{name}:{i}")
            assert [m.role for m in chosen] == ["user", "assistant"]
            assert chosen[0] == rejected[0]
            assert chosen[1].content != rejected[1].content
            assert compiles(chosen[1].content) and compiles(rejected[1].content)
            kinds.add(record["corruption"])
    assert kinds == set(KINDS)


def test_sft_records_are_conversations_answered_by_valid_source(generated):
    out, _ = generated
    for name in ("sft_train.jsonl", "sft_val.jsonl"):
        records = read_jsonl(out / name)
        assert records
        for i, record in enumerate(records, start=1):
            user, assistant = parse_conversation(record, where=f"{name}:{i}")
            assert (user.role, assistant.role) == ("user", "assistant")
            assert compiles(assistant.content)
            assert assistant.content.startswith(("def ", "async def ", "@"))


def test_manifest_describes_the_files(generated):
    out, manifest = generated
    assert manifest == json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        records = read_jsonl(out / name)
        assert info["records"] == len(records) and info["bytes"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        if name.startswith("dpo"):
            counted = {k: sum(r["corruption"] == k for r in records) for k in KINDS}
            assert info["corruptions"] == counted
    assert manifest["params"]["max_files"] == MAX_FILES
    assert manifest["splits"]["train"]["source_files"] == MAX_FILES


def test_caps_take_a_prefix_of_the_seeded_order(generated, tmp_path):
    out, _ = generated
    capped = write_posttrain_sets(tmp_path, max_files=MAX_FILES, max_sft=5, max_pairs=3)
    assert capped["files"]["sft_train.jsonl"]["records"] == 5
    assert capped["files"]["dpo_val.jsonl"]["records"] == 3
    full = (out / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert (tmp_path / "sft_train.jsonl").read_text(encoding="utf-8").splitlines() == full[:5]
    with pytest.raises(InputError, match="max_sft: must be >= 0"):
        write_posttrain_sets(tmp_path, max_sft=-1, force=True)
    empty = write_posttrain_sets(tmp_path / "empty", max_files=0)
    assert {info["records"] for info in empty["files"].values()} == {0}
    assert empty["files"]["sft_val.jsonl"]["mean_answer_chars"] == 0.0


def test_a_file_in_both_splits_is_refused(tmp_path):
    path = stdlib_files("train")[0]
    with pytest.raises(InputError, match=r"a source file is in both train and validation"):
        write_posttrain_sets(tmp_path, sources={"train": [path], "validation": [path]})


def test_files_flow_through_the_sft_and_preference_pipelines(generated, tmp_path):
    from jaxlm.data.tokenizer import train_tokenizer

    out, manifest = generated
    answers = [r["conversations"][-1]["content"] for r in read_jsonl(out / "sft_train.jsonl")]
    tokenizer = train_tokenizer(answers, tmp_path / "tok", vocab_size=384, max_chars=100_000)
    chat_stats = ChatStats()
    sft = sft_dataset(
        [out / "sft_val.jsonl"], tokenizer, seq_len=1024, batch_size=4, shuffle=False,
        repeat=False, stats=chat_stats, pad_id=tokenizer.pad_id,
    )  # fmt: skip
    trained = sum(int(batch["loss_mask"].sum()) for batch in sft)
    assert chat_stats.conversations == manifest["files"]["sft_val.jsonl"]["records"]
    assert chat_stats.encoded > 0 and trained > 0  # a prompt may not fit in 1024 tokens
    pair_stats = PreferenceStats()
    pairs = preference_dataset(
        [out / "dpo_val.jsonl"], tokenizer, seq_len=1024, batch_size=4, shuffle=False,
        repeat=False, stats=pair_stats, pad_id=tokenizer.pad_id,
    )  # fmt: skip
    batches = list(pairs)
    batch = batches[0]
    assert batch["tokens"].shape == (4, 2, 1024)
    assert (batch["loss_mask"].sum(axis=-1) > 0).all()  # chosen and rejected both trained
    assert pair_stats.pairs == manifest["files"]["dpo_val.jsonl"]["records"]


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    argv = ["data", "posttrain", str(tmp_path), "--max-files", "8", "--max-sft", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "sft_train.jsonl" in out and "4 records" in out
    before = (tmp_path / "sft_train.jsonl").read_bytes()
    assert cli.main(argv) == 2
    assert f"{tmp_path / 'sft_train.jsonl'}: already exists" in capsys.readouterr().err
    assert cli.main([*argv, "--max-sft", "2", "--force"]) == 0
    assert (tmp_path / "sft_train.jsonl").read_bytes() != before
    assert json.loads((tmp_path / MANIFEST).read_text())["params"]["max_sft"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
