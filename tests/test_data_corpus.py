"""The stdlib corpus: usable files only, and a split that depends on paths alone."""

import re

import pytest

from jaxlm.data import corpus


def _make_tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}\nx = 1\n", encoding="utf-8")


def _is_nonempty_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(data)


def test_stdlib_splits_are_disjoint_cover_every_usable_file_and_exist():
    train = corpus.stdlib_files("train")
    validation = corpus.stdlib_files("validation")
    assert not set(train) & set(validation)
    root = corpus.stdlib_root()
    every_py = {
        path for path in root.rglob("*.py") if "site-packages" not in path.relative_to(root).parts
    }
    skipped = every_py - set(train) - set(validation)
    # Only files that are empty or not UTF-8 may be left out.
    assert all(not _is_nonempty_utf8(path.read_bytes()) for path in skipped)
    assert len(skipped) < 0.05 * len(every_py)
    assert all(path.is_file() and path.suffix == ".py" for path in train + validation)
    assert 0.01 < len(validation) / (len(train) + len(validation)) < 0.035


def test_split_is_sorted_and_deterministic():
    train = corpus.stdlib_files("train")
    root = corpus.stdlib_root()
    relative = [path.relative_to(root).as_posix() for path in train]
    assert relative == sorted(relative)
    assert corpus.stdlib_files("train") == train


def test_split_depends_only_on_each_relative_path(tmp_path):
    names = [f"pkg{i % 7}/mod_{i}.py" for i in range(600)]
    _make_tree(tmp_path / "a", names)
    before = corpus.stdlib_files("validation", val_fraction=0.2, root=tmp_path / "a")
    # Another root holding a subset plus new files, created in another order.
    kept = names[::2]
    _make_tree(tmp_path / "b", [*reversed(kept), *(f"new/extra_{i}.py" for i in range(50))])
    after = corpus.stdlib_files("validation", val_fraction=0.2, root=tmp_path / "b")

    def relative(paths, root):
        return {path.relative_to(root).as_posix() for path in paths}

    before_names = relative(before, tmp_path / "a")
    assert relative(after, tmp_path / "b") & set(kept) == before_names & set(kept)
    assert 0.15 * len(names) < len(before_names) < 0.25 * len(names)


def test_skips_site_packages_empty_and_non_utf8_files(tmp_path):
    _make_tree(tmp_path, ["good.py", "site-packages/third_party.py", "sub/also_good.py"])
    (tmp_path / "empty.py").write_bytes(b"")
    (tmp_path / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (tmp_path / "notes.txt").write_text("not python\n")
    found = corpus.stdlib_files("train", val_fraction=1e-9, root=tmp_path)
    found += corpus.stdlib_files("validation", val_fraction=0.999999, root=tmp_path)
    names = {path.relative_to(tmp_path).as_posix() for path in found}
    assert names == {"good.py", "sub/also_good.py"}


def test_missing_root_error_names_it(tmp_path):
    missing = tmp_path / "no_such_stdlib"
    with pytest.raises(FileNotFoundError, match="no_such_stdlib"):
        corpus.stdlib_files("train", root=missing)


def test_bad_split_name_is_refused():
    with pytest.raises(ValueError, match="split"):
        corpus.stdlib_files("test")


def test_read_text_round_trips_and_errors_name_the_path(tmp_path):
    text = "def f():\n\treturn '中文 😀'  \r\n"
    good = tmp_path / "good.py"
    good.write_bytes(text.encode("utf-8"))
    assert corpus.read_text(good) == text
    bad = tmp_path / "bad_encoding.py"
    bad.write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        corpus.read_text(bad)
    absent = tmp_path / "absent.py"
    with pytest.raises(OSError, match=re.escape(str(absent))):
        corpus.read_text(absent)
