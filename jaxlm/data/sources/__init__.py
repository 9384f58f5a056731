"""Data sources: every `kind:pattern` of jaxlm.source_spec as random-access documents.

open_source.py         open_source(spec, ...) -> grain.MapDataset (the entry point)
documents.py           DocumentSource protocol; concatenation and selection views
split.py               train/validation split by a stable per-document key
paths.py               globs, and the relative names the split hashes
record_checks.py       raise or skip-and-count bad records; counter names
text_files.py          stdlib and text: one document per file
jsonl_texts.py         jsonl: record[text_field], errors name file:line
parquet_texts.py       parquet: column text_field, row groups decoded and cached
arrayrecord_texts.py   arrayrecord: one UTF-8 document per record
token_shards.py        tokens: the pre-tokenized shard layout and its reader
token_shard_writer.py  writes a shard directory atomically
tokenize.py            text sources -> shards, in parallel, deterministically
"""

from jaxlm.data.sources.documents import DocumentSource, is_blank_text
from jaxlm.data.sources.open_source import open_documents, open_source
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.data.sources.split import SPLITS
from jaxlm.data.sources.token_shards import TokenShards, TokenShardsError

__all__ = [
    "SPLITS",
    "DocumentSource",
    "RecordChecks",
    "TokenShards",
    "TokenShardsError",
    "is_blank_text",
    "open_documents",
    "open_source",
]
