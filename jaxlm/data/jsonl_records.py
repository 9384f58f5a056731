"""JSON-lines files as Grain record pipelines: the shared head of SFT and preference data.

`record_source` makes the lines of several files one random-access source (optionally
one side of a stable train/validation split), `record_stream` shuffles, shards and
repeats it and maps an encoder over it, `mixed_record_stream` draws from several such
streams by weight (a chat or preference mixture, `jsonl:a.jsonl@3,jsonl:b.jsonl`), and
`FirstErrorInFileOrder` makes an encoding error name the first bad record in file
order, whatever the shuffle. Lines themselves
are read by jaxlm.data.jsonl, which imports neither Grain nor the sources: corpus
cleaning uses it too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain

from jaxlm.data.jsonl import BadLineCounter, JsonlLines, OnError
from jaxlm.data.seeds import source_seed
from jaxlm.data.sources.documents import SelectedDocuments
from jaxlm.data.sources.split import kept_indices, record_keys
from jaxlm.data.usable import RequireUsable, any_usable
from jaxlm.errors import InputError


def record_source(
    files,
    *,
    on_error: OnError = "raise",
    bad_lines: BadLineCounter | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    names: list[str] | None = None,
):
    """`(where, record)` of every line of `files` in file order, as a Grain MapDataset.

    `split` "train" / "validation" keeps the lines whose stable key (the file's name in
    `names`, default its file name, mixed with the line's record index; see
    jaxlm.data.sources.split) falls on that side of `val_fraction`: the same held-out
    lines in every run, whatever the seed or process count. Files without a line are
    an InputError naming them."""
    if not files:
        raise ValueError("a jsonl pipeline needs at least one file, got none")
    bad_lines = bad_lines if bad_lines is not None else BadLineCounter()
    names = names or [Path(f).name for f in files]
    parts, total = [], 0
    for f, name in zip(files, names, strict=True):
        lines = JsonlLines(f, on_error=on_error, counter=bad_lines)
        total += len(lines)
        if split != "all":
            keep = kept_indices(record_keys(name, len(lines)), split, val_fraction)
            lines = SelectedDocuments(lines, keep)
        parts.append(grain.MapDataset.source(lines))
    if not total:
        raise InputError(f"{', '.join(map(str, files))}: no line to read (empty)")
    return grain.MapDataset.concatenate(parts)


def record_stream(
    files,
    *,
    seed: int,
    shuffle: bool,
    repeat: bool,
    process_index: int,
    process_count: int,
    on_error: OnError = "raise",
    bad_lines: BadLineCounter | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    names: list[str] | None = None,
    encode: Callable[[tuple[str, Any]], Any] | None = None,
    probe: Callable[[tuple[str, Any]], Any] | None = None,
    validate: Callable[[tuple[str, Any]], None] | None = None,
    nothing_usable: str = "no record is usable",
):
    """`record_source`'s lines: seeded shuffle, this process's shard, repeated per
    epoch. The shared head of the SFT and preference pipelines.

    With `encode`, the stream holds `encode((where, record))` instead (None: nothing
    to learn, dropped). An endless stream whose records all encode to None would
    look for an example forever; instead, after a whole epoch of them in a row, the
    records are checked in file order with `probe` (like `encode`, without side
    effects) and, when none is usable, an InputError "FILES: `nothing_usable`" ends it.
    `validate` raises the InputError of a record that `encode` would refuse; with it,
    such an error names the first bad record in file order (see FirstErrorInFileOrder).
    """

    bad_lines = bad_lines if bad_lines is not None else BadLineCounter()
    records = record_source(
        files,
        on_error=on_error,
        bad_lines=bad_lines,
        split=split,
        val_fraction=val_fraction,
        names=names,
    )
    lines = records.shuffle(seed) if shuffle else records
    lines = lines[process_index::process_count]
    epoch = len(lines)
    if repeat and not epoch:  # an endless repeat of nothing would never yield
        raise InputError(
            f"{', '.join(map(str, files))}: no line for process {process_index} of "
            f"{process_count} in the {split!r} split of {len(records)} lines"
        )
    bad_lines.expect(epoch)
    if repeat:
        lines = lines.repeat(None)
    if encode is None:
        return lines
    if validate is not None:
        encode = FirstErrorInFileOrder(encode, records, validate)
    if not repeat:  # a single pass ends by itself
        return lines.map(encode)
    guard = RequireUsable(
        encode,
        patience=epoch,
        has_usable=functools.partial(any_usable, records, probe or encode),
        message=f"{', '.join(map(str, files))}: {nothing_usable}",
    )
    return lines.map(guard)


@dataclasses.dataclass(frozen=True)
class WeightedFiles:
    """One source of a record mixture: its files, their split names, its weight."""

    files: list[Path]
    names: list[str] | None = None  # default: each file's name (see record_source)
    weight: float = 1.0


def mixed_record_stream(sources: Sequence[WeightedFiles], *, seed: int, repeat: bool, **kwargs):
    """`record_stream` of every source, drawn by weight (or read in turn, once).

    Endless (`repeat`): each next record comes from source i with probability
    weights[i] / sum, as jaxlm.data.pipeline mixes text sources (Grain's weighted
    mix, whose position is checkpointable). Each source is shuffled with a seed of its
    own, reshuffled every epoch, and repeats independently: a small source
    up-weighted among large ones is read many times per epoch of the others. One
    pass (`repeat=False`, evaluation) reads every record of every source once, in
    source order. One source is `record_stream` itself, unchanged.
    """
    if len(sources) == 1:
        only = sources[0]
        return record_stream(only.files, names=only.names, seed=seed, repeat=repeat, **kwargs)
    streams = [
        record_stream(
            source.files, names=source.names, seed=source_seed(seed, i), repeat=repeat, **kwargs
        )
        for i, source in enumerate(sources)
    ]
    if not repeat:
        return grain.MapDataset.concatenate(streams)
    return grain.MapDataset.mix(streams, [source.weight for source in sources])


class FirstErrorInFileOrder:
    """Stage: `stage(item)`; an InputError it raises is replaced by the first in file order.

    Records are read shuffled, so the record that failed need not be the first bad
    one. On an error the records are checked from the start with `validate` (parsing
    only, no encoding) and the first error found is raised; it is never later than
    the one that started the search.
    """

    def __init__(self, stage: Callable[[Any], Any], records, validate: Callable[[Any], None]):
        self.stage, self.records, self.validate = stage, records, validate

    def __call__(self, item: Any) -> Any:
        try:
            return self.stage(item)
        except InputError as error:
            raise self._first_error() or error from None

    def _first_error(self) -> InputError | None:
        for index in range(len(self.records)):
            try:
                self.validate(self.records[index])
            except InputError as error:
                return error
        return None
