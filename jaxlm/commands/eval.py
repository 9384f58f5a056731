"""`jaxlm eval`: loss, perplexity and bits per byte, or multiple-choice accuracy.

    jaxlm eval MODEL                                   the run's own held-out data
    jaxlm eval MODEL --data stdlib --split validation --max-docs 50
    jaxlm eval MODEL --data jsonl:web.jsonl --data text:notes/*.txt --json out.json
    jaxlm eval MODEL --format chat --data jsonl:data/sft_val.jsonl
    jaxlm eval MODEL --multiple-choice mc.jsonl --json mc_results.json
    jaxlm eval MODEL --pairs dpo.jsonl [--reference SFT_MODEL --beta 0.1]
    jaxlm eval MODEL --set model.max_seq_len=1024 --set model.rope_scaling=yarn ...

MODEL is an export directory (`jaxlm export`) or a training workdir (its newest good
checkpoint). Each --data SPEC (jaxlm.source_spec syntax; commas give several
sources) is read whole (--split all) or as the held-out part a run training on it
left out (--split validation), packed as the training run's eval packs its own, and
each source is reported separately: scored tokens, loss (nats/token), perplexity =
exp(loss), bits per byte = total nats / (ln 2 * UTF-8 bytes of the scored tokens'
text). Without --data (and without --multiple-choice) the run's own eval sources are
used, with its data.eval_max_docs; the numbers then match its metrics.jsonl `eval`
records. See jaxlm.evaluation.language_model.

--multiple-choice FILE scores jsonl records {"context", "choices", "answer"} by
summed log-likelihood (jaxlm.evaluation.multiple_choice) and reports accuracy,
length-normalised accuracy and the count; --json adds every example's scores.
`jaxlm data multiple-choice OUT.jsonl` writes an offline set.

--pairs FILE scores preference pairs (MiniMind's dpo.jsonl format): the reference-free
log-prob ranking accuracy, and with --reference the DPO implied-reward accuracy (ties
count half), loss and margin. See jaxlm.evaluation.preference_pairs.

--adapters DIR applies LoRA adapters (`jaxlm export RUN DIR --adapters-only`) to
MODEL, which must be the base they were trained on (jaxlm.inference.adapters).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxlm.errors import InputError
from jaxlm.source_spec import parse_sources

HELP = "loss / perplexity / bits per byte on data sources, or multiple-choice accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an export directory or a training workdir")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="SPEC",
        help="a data source (repeatable), e.g. stdlib, jsonl:data/*.jsonl, tokens:shards/x "
        "(default: the run's own eval sources)",
    )
    parser.add_argument(
        "--split",
        choices=["all", "validation"],
        default="all",
        help="of each --data source: every document, or the held-out part that a run "
        "training on it left out (default %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=["text", "chat"],
        default="text",
        help="--data holds documents (text), or conversations scored on assistant tokens "
        "(chat) (default %(default)s)",
    )
    parser.add_argument(
        "--text-field", default=None, help="jsonl/parquet field of the text (default: the run's)"
    )
    parser.add_argument(
        "--max-docs",
        type=int,
        default=None,
        metavar="N",
        help="at most N documents per source, 0 for all (default: the run's data.eval_max_docs)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        metavar="T",
        help="tokens per row (default: the run's data.seq_len; with --multiple-choice the "
        "longest row, default model.max_seq_len)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="rows per batch (default 16)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="model.KEY=VALUE",
        help="a model setting that keeps the weights' shapes (max_seq_len, rope_*, "
        "compute_dtype, attention_impl)",
    )
    parser.add_argument(
        "--multiple-choice",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="score multiple-choice records {context, choices, answer} (repeatable)",
    )
    parser.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="score preference pairs {chosen, rejected} (repeatable)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="REF",
        help="with --pairs: the reference model (e.g. the SFT export DPO started from) for "
        "DPO's implied-reward accuracy, loss and margin",
    )
    parser.add_argument(
        "--beta", type=float, default=0.1, help="with --reference: DPO's beta (default 0.1)"
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    from jaxlm.inference.cli_options import add_adapters_argument  # no JAX: parser only

    add_adapters_argument(parser)


def run(args: argparse.Namespace) -> int:
    from jaxlm.evaluation import language_model as lm
    from jaxlm.inference.loading import load_model

    batch_size = 16 if args.batch_size is None else args.batch_size
    for name, value in (("--batch-size", batch_size), ("--seq-len", args.seq_len)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be positive, got {value}")
    if args.max_docs is not None and args.max_docs < 0:
        raise InputError(f"--max-docs must be >= 0, got {args.max_docs}")
    mesh = lm.data_parallel_mesh(batch_size)
    model = load_model(args.model, overrides=args.overrides, mesh=mesh, adapters=args.adapters)
    print(f"model {model.source} ({model.cfg.name}, data.format={model.cfg.data.format})")
    out: dict = {"model": model.source, "overrides": list(args.overrides)}

    if args.reference and not args.pairs:
        raise InputError("--reference is for --pairs")
    if args.data or not (args.multiple_choice or args.pairs):
        if args.data:
            sources = [
                lm.EvalSource(str(spec), args.split, args.format)
                for text in args.data
                for spec in parse_sources(text, key="--data")
            ]
        else:
            sources = lm.run_sources(model.cfg)
        seq_len = args.seq_len or model.cfg.data.seq_len
        max_docs = model.cfg.data.eval_max_docs if args.max_docs is None else args.max_docs
        results = lm.evaluate_sources(
            model,
            sources,
            seq_len=seq_len,
            batch_size=batch_size,
            max_docs=max_docs,
            text_field=args.text_field,
        )
        rows = [*results, lm.combined(results)] if len(results) > 1 else results
        _print_loss_table(rows)
        out["seq_len"], out["max_docs"] = seq_len, max_docs
        out["sources"] = [r.to_json() for r in results]
        if len(results) > 1:
            out["total"] = rows[-1].to_json()

    if args.multiple_choice:
        out["multiple_choice"] = _multiple_choice(model, args, batch_size)

    if args.pairs:
        out["pairs"] = _pairs(model, args, batch_size, mesh)

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _print_loss_table(rows) -> None:
    width = max(len("source"), *(len(r.source) for r in rows))
    print(
        f"{'source':{width}s}  {'split':10s} {'tokens':>10s} {'loss':>8s} "
        f"{'ppl':>9s} {'bits/byte':>9s}"
    )
    for r in rows:
        print(
            f"{r.source:{width}s}  {r.split:10s} {r.tokens:10,d} {r.loss:8.4f} "
            f"{r.perplexity:9.3f} {r.bits_per_byte:9.4f}"
        )


def _pairs(model, args, batch_size: int, mesh) -> list[dict]:
    from jaxlm.evaluation.preference_pairs import score_pairs
    from jaxlm.inference.loading import load_model

    if args.beta <= 0:
        raise InputError(f"--beta must be > 0, got {args.beta}")
    reference = None
    if args.reference:
        reference = load_model(args.reference, overrides=args.overrides, mesh=mesh)
        if reference.tokenizer.sha256 != model.tokenizer.sha256:
            raise InputError(
                f"--reference {args.reference}: its tokenizer differs from {args.model}'s"
            )
    seq_len = args.seq_len or model.cfg.data.seq_len
    reports = []
    for path in args.pairs:
        if not Path(path).is_file():
            raise InputError(f"--pairs {path}: no such file")
        t0 = time.perf_counter()
        s = score_pairs(
            model, path, seq_len=seq_len, batch_size=batch_size, beta=args.beta, reference=reference
        )
        line = f"{path}: {s['pairs']} pairs"
        if s["pairs"]:
            line += (
                f", log-prob ranking accuracy {s['logp_accuracy']:.4f} (reference-free), "
                f"chosen log-prob {s['chosen_logp']:.2f}, rejected {s['rejected_logp']:.2f}"
            )
            if reference is not None:
                line += (
                    f"; against the reference: accuracy {s['accuracy']:.4f} "
                    f"({s['reward_ties']:.0%} ties, counted half), DPO loss {s['loss']:.4f}, "
                    f"margin {s['margin']:.4f} (beta {args.beta})"
                )
        print(f"{line} in {time.perf_counter() - t0:.1f}s")
        reports.append({"file": str(path), "seq_len": seq_len, **s})
    return reports


def _multiple_choice(model, args, batch_size: int) -> list[dict]:
    from jaxlm.evaluation import multiple_choice as mc

    max_len = args.seq_len or model.cfg.model.max_seq_len
    if max_len > model.cfg.model.max_seq_len:
        raise InputError(
            f"--seq-len {max_len} exceeds model.max_seq_len={model.cfg.model.max_seq_len} "
            "(raise it with --set model.max_seq_len=N)"
        )
    reports = []
    for path in args.multiple_choice:
        t0 = time.perf_counter()
        examples = mc.read_examples(path)
        results = mc.score_examples(
            model.graphdef,
            model.params,
            model.tokenizer,
            examples,
            max_len=max_len,
            batch_size=batch_size,
            mesh=model.mesh,
        )
        summary = mc.summarize(results)
        seconds = time.perf_counter() - t0
        print(
            f"{path}: {summary['count']} examples, accuracy {summary['accuracy']:.4f} "
            f"(±{summary['accuracy_stderr']:.4f}), acc_norm {summary['acc_norm']:.4f} "
            f"(±{summary['acc_norm_stderr']:.4f}), chance {summary['chance']:.4f} "
            f"in {seconds:.1f}s"
        )
        if summary["contexts_truncated"] or summary["choices_truncated"]:
            print(
                f"  {summary['contexts_truncated']} contexts and "
                f"{summary['choices_truncated']} choices cut to {max_len} tokens"
            )
        reports.append(
            {
                "file": str(path),
                "max_len": max_len,
                **summary,
                "seconds": seconds,
                "examples": [r.to_json() for r in results],
            }
        )
    return reports
