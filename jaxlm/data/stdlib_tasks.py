"""Post-training data made from the Python standard library: SFT chats and preference pairs.

Nothing is downloaded: the tasks are the documented functions of the interpreter's
own standard library (the embedded corpus, jaxlm.data.corpus). For each function

    user       "Write the function with this signature and docstring ..."
    assistant  its real source                                (SFT, and `chosen`)
    rejected   a plausible wrong version of it                (preference pairs)

`jaxlm data posttrain OUT_DIR` (or `write_posttrain_sets`) writes

    sft_train.jsonl  sft_val.jsonl    {"conversations": [...], "id": ...}
    dpo_train.jsonl  dpo_val.jsonl    {"chosen": [...], "rejected": [...], "id", "corruption"}
    manifest.json                     counts, corruption kinds, parameters, sha256s

which `data.format=chat` / `data.format=preference` runs read as `jsonl:` sources.

Held out by construction: train tasks come only from the corpus's train files and
validation tasks only from its validation files (the same stable split that
pretraining uses), and a validation function whose source equals a train function's
is dropped, so no function trained on is evaluated on. Within a split an exact
duplicate answer is kept once.

Deterministic: files are sorted by relative path, every choice (order, phrasing,
corruption) comes from sha256 of the seed and the function's name, and the records
are written with a fixed key order; the same Python version gives the same bytes.

The stages, to copy for data of your own (jaxlm.data.posttrain):
functions.extract_functions -> prompts.sft_record / corruptions.corrupt ->
prompts.preference_record.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxlm.data.atomic import atomic_text_writer, refuse_overwrite
from jaxlm.data.corpus import Split, read_text, stdlib_files, stdlib_root
from jaxlm.data.posttrain.corruptions import corrupt, donor_pools
from jaxlm.data.posttrain.functions import Function, FunctionLimits, extract_functions
from jaxlm.data.posttrain.output import record_stats, write_jsonl
from jaxlm.data.posttrain.prompts import Record, preference_record, sft_record, stable_int
from jaxlm.errors import InputError

SPLITS: tuple[Split, ...] = ("train", "validation")
FILE_NAMES = {
    ("sft", "train"): "sft_train.jsonl",
    ("sft", "validation"): "sft_val.jsonl",
    ("dpo", "train"): "dpo_train.jsonl",
    ("dpo", "validation"): "dpo_val.jsonl",
}
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_LIMITS = FunctionLimits()

__all__ = ["FunctionLimits", "SplitTasks", "build_posttrain_sets", "write_posttrain_sets"]


@dataclasses.dataclass(frozen=True)
class SplitTasks:
    """The records of one split and what was found on the way to them."""

    split: Split
    source_files: int
    unparsable_files: int  # not Python 3 (lib2to3 test data): skipped
    extracted: int  # functions within the limits
    duplicates: int  # dropped: same source as one kept before (or, here in validation, in train)
    functions: list[Function]  # kept, in the seeded order of the records
    sft: list[Record]
    pairs: list[Record]


def build_posttrain_sets(
    *,
    seed: int = 0,
    max_sft: int | None = None,
    max_pairs: int | None = None,
    limits: FunctionLimits = DEFAULT_LIMITS,
    val_fraction: float = 0.02,
    max_files: int | None = None,
    sources: Mapping[Split, Sequence[Path]] | None = None,
    root: Path | None = None,
) -> dict[Split, SplitTasks]:
    """Both splits' records in memory (write_posttrain_sets writes them).

    `max_sft` / `max_pairs` cap each split's files (None: all); the records kept are the
    first in the seeded order, so a cap takes an unbiased sample. `max_files` uses only
    the first files of each split (by path), for a quick look. `sources` replaces the
    stdlib files (named relative to `root`) and must keep the splits disjoint.
    """
    _check_arguments(max_sft=max_sft, max_pairs=max_pairs, max_files=max_files)
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    root = Path(root) if root is not None else stdlib_root()
    if sources is None:
        sources = {split: stdlib_files(split, val_fraction=val_fraction) for split in SPLITS}
    files = {split: _sorted_files(sources[split], root)[:max_files] for split in SPLITS}
    _check_disjoint(files)
    tasks: dict[Split, SplitTasks] = {}
    seen_sources: set[str] = set()  # train sources, then also validation's
    for split in SPLITS:
        tasks[split] = split_tasks(
            split,
            files[split],
            seed=seed,
            max_sft=max_sft,
            max_pairs=max_pairs,
            limits=limits,
            seen_sources=seen_sources,
        )
    return tasks


def split_tasks(
    split: Split,
    files: Sequence[tuple[str, Path]],
    *,
    seed: int,
    max_sft: int | None,
    max_pairs: int | None,
    limits: FunctionLimits,
    seen_sources: set[str],
) -> SplitTasks:
    """The records of one split from its `(relative name, path)` files, in sorted order.

    `seen_sources` holds the answers of earlier splits (none are reused here) and gets
    this split's answers added.
    """
    found, unparsable = _collect(files, limits)
    kept = []
    for function in found:
        if function.source not in seen_sources:
            seen_sources.add(function.source)
            kept.append(function)
    ordered = sorted(kept, key=lambda f: (stable_int(str(seed), "order", f.qualname), f.qualname))
    sft = [sft_record(f, seed) for f in ordered[:max_sft]]
    pairs = _pairs(ordered, seed, max_pairs)
    return SplitTasks(
        split=split,
        source_files=len(files),
        unparsable_files=unparsable,
        extracted=len(found),
        duplicates=len(found) - len(kept),
        functions=ordered,
        sft=sft,
        pairs=pairs,
    )


def write_posttrain_sets(
    out_dir: Path | str,
    *,
    seed: int = 0,
    max_sft: int | None = None,
    max_pairs: int | None = None,
    limits: FunctionLimits = DEFAULT_LIMITS,
    val_fraction: float = 0.02,
    max_files: int | None = None,
    sources: Mapping[Split, Sequence[Path]] | None = None,
    root: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Writes the four jsonl files and manifest.json into `out_dir`; returns the manifest.

    Refuses (InputError naming the path) to replace an existing output unless `force`.
    Each file is written to a temporary name and renamed into place, the manifest last,
    so a crash never leaves a half-written file that looks complete. Arguments as for
    build_posttrain_sets.
    """
    out_dir = Path(out_dir)
    if not force:
        refuse_overwrite(*(out_dir / name for name in [*FILE_NAMES.values(), MANIFEST]))
    tasks = build_posttrain_sets(
        seed=seed,
        max_sft=max_sft,
        max_pairs=max_pairs,
        limits=limits,
        val_fraction=val_fraction,
        max_files=max_files,
        sources=sources,
        root=root,
    )
    files = {}
    for (kind, split), name in FILE_NAMES.items():
        records = tasks[split].sft if kind == "sft" else tasks[split].pairs
        files[name] = {**write_jsonl(out_dir / name, records), **record_stats(kind, records)}
    params = {
        "seed": seed,
        "max_sft": max_sft,
        "max_pairs": max_pairs,
        "val_fraction": val_fraction,
        "max_files": max_files,
        "stdlib": sources is None,
        **dataclasses.asdict(limits),
    }
    manifest = _manifest(tasks, files, params)
    with atomic_text_writer(out_dir / MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_arguments(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and value < 0:
            raise InputError(f"{name}: must be >= 0 (or None for no limit), got {value}")


def _sorted_files(paths: Iterable[Path], root: Path) -> list[tuple[str, Path]]:
    """(name relative to root, path), sorted by name: independent of listing order."""
    named = []
    for path in paths:
        path = Path(path)
        try:
            name = path.absolute().relative_to(root.absolute()).as_posix()
        except ValueError:  # a file of your own outside the stdlib
            name = path.as_posix()
        named.append((name, path))
    return sorted(named)


def _check_disjoint(files: Mapping[Split, Sequence[tuple[str, Path]]]) -> None:
    both = {n for n, _ in files["train"]} & {n for n, _ in files["validation"]}
    if both:
        raise InputError(f"{sorted(both)[0]}: a source file is in both train and validation")


def _collect(
    files: Sequence[tuple[str, Path]], limits: FunctionLimits
) -> tuple[list[Function], int]:
    """(functions of all files in file and source order, number of unparsable files)."""
    functions, unparsable = [], 0
    for name, path in files:
        try:
            text = read_text(path)
        except (OSError, ValueError) as error:  # their messages name the path
            raise InputError(str(error)) from error
        try:
            functions += extract_functions(text, name, limits)
        except SyntaxError:
            unparsable += 1
    return functions, unparsable


def _pairs(ordered: Sequence[Function], seed: int, max_pairs: int | None) -> list[Record]:
    """Preference records for the first functions (in `ordered`) that a corruption fits."""
    donors = donor_pools(ordered)
    pairs = []
    for function in ordered:
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        made = corrupt(function, donors, stable_int(str(seed), "corrupt", function.qualname))
        if made is not None:
            pairs.append(preference_record(function, seed, *made))
    return pairs


def _manifest(
    tasks: Mapping[Split, SplitTasks], files: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    # No paths or times: the manifest is as reproducible as the data it describes.
    return {
        "generator": __name__,
        "format_version": FORMAT_VERSION,
        "python_version": platform.python_version(),
        "params": params,
        "splits": {
            split: {
                "source_files": t.source_files,
                "unparsable_files": t.unparsable_files,
                "functions_extracted": t.extracted,
                "duplicates_dropped": t.duplicates,
                "functions": len(t.functions),
            }
            for split, t in tasks.items()
        },
        "files": files,
    }
