"""Input-pipeline throughput: packed tokens/s per host, raw text vs pre-tokenized shards.

Both configurations read the stdlib corpus (train split) through the source layer and
the packer, in the shape of the training pipeline:

    open_source(spec) -> .shuffle(seed) -> .repeat() -> .map(to {"tokens": int32 doc})
    -> .to_iter_dataset() -> packed_batches(seq_len, batch_size) [-> .mp_prefetch(k)]

    text    `stdlib`, tokenized on the fly by a SentencePiece model (vocab 4096)
    tokens  `tokens:<workdir>/shards-...`, the same documents written once by
            `jaxlm data tokenize` (jaxlm.data.sources.tokenize)

for k = 0 (everything in this process), 1, 2 Grain worker processes. For each it
prints packed tokens/s (all B*T positions of the batches), the real-token fraction
(segment_ids != 0) and the longest wait for one batch, timed after --warmup-batches
(which absorb worker start-up).

The tokenizer and shards are built once and cached in --workdir. Run from the
repository root in the venv, on an otherwise idle machine:

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --workers 0 --modes tokens --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import grain
import numpy as np
from absl import flags

from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.packing import document_tokens, packed_batches
from jaxlm.data.sources import open_source
from jaxlm.data.sources.tokenize import tokenize_sources
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.source_spec import SourceSpec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Grain reads absl flags when it starts worker processes; nothing parses them outside
    # absl.app, so take the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    workdir = Path(args.workdir)
    tokenizer = cached_tokenizer(workdir, args.vocab_size)
    shards = cached_shards(workdir, tokenizer)
    print(machine_line())
    print(
        f"seq_len {args.seq_len}, batch {args.batch_size}, packer {args.packer}, shuffle "
        f"window {args.shuffle_window}, {args.read_threads} reader threads, "
        f"{args.seconds:g}s timed per configuration"
    )
    print(
        f"{'source':8s} {'workers':>7s} {'tokens/s':>12s} {'real':>6s} {'batches':>8s} "
        f"{'longest wait':>13s} {'warm-up':>8s}"
    )
    results = []
    for mode in args.modes.split(","):
        for workers in [int(k) for k in args.workers.split(",")]:
            batches = pipeline(mode, workers, tokenizer, shards, args)
            result = {"source": mode, "workers": workers, **measure(batches, args)}
            results.append(result)
            print(
                f"{mode:8s} {workers:7d} {result['tokens_per_s']:12,.0f} "
                f"{result['real_fraction']:6.3f} {result['batches']:8d} "
                f"{result['longest_wait_s']:12.3f}s {result['warmup_s']:7.1f}s",
                flush=True,
            )
    if args.json:
        report = {"machine": machine_line(), "args": vars(args), "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/jaxlm-data-bench", help="tokenizer/shard cache")
    parser.add_argument("--modes", default="text,tokens", help="comma-separated: text, tokens")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--packer", default="first_fit")
    # Grain's window shuffle fills a whole window, then drains it: with 16384 pieces
    # (~7M stdlib tokens) the rate comes in bursts ~1000 batches apart and a short timed
    # run measures part of one. Off by default so the rate is steady; `longest wait`
    # shows the stall a window fill causes when it is on.
    parser.add_argument("--shuffle-window", type=int, default=0, help="pieces; 0 = off")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per config")
    parser.add_argument(
        "--read-threads", type=int, default=16, help="reader threads (16: Grain default)"
    )
    parser.add_argument("--warmup-batches", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def cached_tokenizer(workdir: Path, vocab_size: int) -> Tokenizer:
    model = workdir / f"stdlib-{vocab_size}.model"
    if model.is_file():
        return Tokenizer.load(model)
    print(f"training a {vocab_size}-piece tokenizer on the stdlib train split -> {model}")
    texts = (read_text(path) for path in stdlib_files("train"))
    return train_tokenizer(texts, model.with_suffix(""), vocab_size=vocab_size, max_chars=5_000_000)


def cached_shards(workdir: Path, tokenizer: Tokenizer) -> Path:
    out = workdir / f"shards-stdlib-train-{tokenizer.sha256[:12]}"
    if not (out / "manifest.json").is_file():
        print(f"tokenizing the stdlib train split -> {out}")
        summary = tokenize_sources([SourceSpec("stdlib")], tokenizer, out, split="train")
        print(f"  {summary.documents} documents, {summary.tokens:,} tokens, {summary.seconds:.1f}s")
    return out


def text_document(text: str, *, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    return {"tokens": document_tokens(text, tokenizer)}


def token_document(tokens: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": tokens}


def pipeline(mode: str, workers: int, tokenizer: Tokenizer, shards: Path, args):
    if mode == "text":
        to_document = functools.partial(text_document, tokenizer=tokenizer)
        documents = open_source(SourceSpec("stdlib"), split="train")
    elif mode == "tokens":
        to_document = token_document
        spec = SourceSpec("tokens", str(shards))
        documents = open_source(spec, tokenizer_sha256=tokenizer.sha256)
    else:
        raise SystemExit(f"unknown mode {mode!r}; use text or tokens")
    documents = documents.shuffle(args.seed).repeat().map(to_document)
    documents = documents.to_iter_dataset(grain.ReadOptions(num_threads=args.read_threads))
    batches = packed_batches(
        documents,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        packer=args.packer,
        pad_id=tokenizer.pad_id,
        seed=args.seed,
        shuffle_window=args.shuffle_window,
    )
    if workers:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return batches


def measure(batches, args) -> dict:
    iterator = iter(batches)
    started = time.perf_counter()
    for _ in range(args.warmup_batches):
        next(iterator)
    warmup_s = time.perf_counter() - started
    count = positions = real = 0
    longest_wait = 0.0
    started = last = time.perf_counter()
    while last - started < args.seconds:
        batch = next(iterator)
        now = time.perf_counter()
        longest_wait, last = max(longest_wait, now - last), now
        count += 1
        positions += batch["segment_ids"].size
        real += int(np.count_nonzero(batch["segment_ids"]))
    del iterator  # stops worker processes before the next configuration starts its own
    return {
        "tokens_per_s": positions / (last - started),
        "real_fraction": real / positions,
        "batches": count,
        "longest_wait_s": longest_wait,
        "warmup_s": warmup_s,
    }


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores, {cpu}, Python {python}, grain {grain.__version__}"


if __name__ == "__main__":
    sys.exit(main())
