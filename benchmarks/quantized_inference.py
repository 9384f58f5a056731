"""Weight-only int8 and an int8 KV cache on a trained model: memory, decode speed, quality.

For a trained model (an export or a training workdir) it loads the weights as stored
(float) and as int8 (`load_model(..., quantize="int8")`, jaxlm/inference/quantize.py)
and measures, for each weights x KV cache (auto = the compute dtype, or int8):

    params_bytes       the loaded params in memory (the arrays' nbytes)
    kv_cache_bytes     an empty cache of --cache-batch rows x --cache-slots slots
                       (auto, bfloat16, int8: shapes only, nothing is run)
    decode             Generator tokens/s at each --batches size: greedy, no stop token,
                       --prompt-tokens prompt tokens, --decode-tokens new tokens; one call
                       compiles, then the median over --repeats calls (the four runs
                       take turns) of decode tokens/s = batch * (new - 1) / decode
                       wall time (the prefill is timed apart)
    bits_per_byte      held-out bits per byte on the model's own validation split, the
                       first --eval-docs documents, by `jaxlm eval`'s machinery
                       (jaxlm.evaluation.language_model); depends on the weights only
    agreement          greedy continuations of --prompts held-out documents (their first
                       --prompt-tokens tokens) for --new-tokens tokens, against the float
                       model with the auto cache: `prefix` = share of the tokens made
                       before each row's first divergence, `overall` = share of equal
                       tokens position by position

Run (from the repository root, in the venv, on an otherwise idle machine):

    python benchmarks/quantized_inference.py /tmp/exp/distill/teacher \\
        --out experiments/results/serving/int8_amd_epyc.json

Not wired into benchmarks/run.py: it prints its record (and --out writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    configure_cpu()  # same malloc tunables as the other benchmarks (jaxlm/runtime/cpu.py)

import environment  # benchmarks/environment.py: the machine each result was measured on
import jax
import numpy as np

from jaxlm.data.packing import document_prefix
from jaxlm.data.run_inputs import eval_texts
from jaxlm.evaluation import language_model as lm
from jaxlm.inference.decode import Generator
from jaxlm.inference.kv_cache import KV_CACHE_DTYPES, empty_cache
from jaxlm.inference.loading import load_model

RUNS = [("float", "auto"), ("float", "int8"), ("int8", "auto"), ("int8", "int8")]


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def decode_rates(gens: dict, prompts: list[list[int]], new: int, repeats: int) -> dict:
    """{run: decode timing} for every Generator in `gens` on the same prompts.

    The runs take turns within each repeat, so a load that comes and goes on the
    machine slows them alike instead of whichever happened to run then.
    """
    for gen in gens.values():
        gen.generate(prompts, max_new_tokens=new)  # compiles prefill and decode
    seconds = {run: [] for run in gens}
    for _ in range(repeats):
        for run, gen in gens.items():
            seconds[run].append(gen.generate(prompts, max_new_tokens=new).decode_s)
    return {
        run: {
            "batch": len(prompts),
            "decode_tokens_per_s": round(len(prompts) * (new - 1) / statistics.median(s), 1),
            "ms_per_step": round(1000 * statistics.median(s) / (new - 1), 3),
        }
        for run, s in seconds.items()
    }


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict:
    equal = [np.asarray(a) == np.asarray(b) for a, b in zip(ref, got, strict=True)]
    prefix = [int(np.argmin(e)) if not e.all() else len(e) for e in equal]
    total = sum(len(e) for e in equal)
    return {
        "prefix": round(sum(prefix) / total, 4),
        "overall": round(sum(int(e.sum()) for e in equal) / total, 4),
        "rows_identical": sum(bool(e.all()) for e in equal),
        "rows": len(equal),
    }


def held_out_bpb(model, docs: int, batch_size: int) -> dict:
    [result] = lm.evaluate_sources(
        model,
        lm.run_sources(model.cfg),
        seq_len=model.cfg.data.seq_len,
        batch_size=batch_size,
        max_docs=docs,
    )
    return {
        "bits_per_byte": round(result.bits_per_byte, 5),
        "loss": round(result.loss, 5),
        "tokens": result.tokens,
        "seconds": round(result.seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an export directory or a training workdir")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--eval-docs", type=int, default=60)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--cache-batch", type=int, default=8)
    parser.add_argument("--cache-slots", type=int, default=0, help="0: model.max_seq_len")
    parser.add_argument("--out", default=None, metavar="JSON")
    args = parser.parse_args(argv)
    load_start = round(os.getloadavg()[0], 2)  # recorded: other work skews the speeds

    models, loaded_s = {}, {}
    for weights in ("float", "int8"):
        t0 = time.perf_counter()
        models[weights] = load_model(args.model, quantize=None if weights == "float" else weights)
        jax.block_until_ready(models[weights].params)
        loaded_s[weights] = round(time.perf_counter() - t0, 2)
    base = models["float"]
    cfg = base.cfg.model
    tokenizer = base.tokenizer
    texts = eval_texts(base.cfg)
    prefix = document_prefix(tokenizer)
    prompts = [[*prefix, *tokenizer.encode(t)][: args.prompt_tokens] for t in texts]
    prompts = [p for p in prompts if len(p) == args.prompt_tokens][: args.prompts]
    slots = args.cache_slots or cfg.max_seq_len

    weights_report = {}
    for weights, model in models.items():
        weights_report[weights] = {
            "params_bytes": nbytes(model.params),
            "load_s": loaded_s[weights],
            **held_out_bpb(model, args.eval_docs, args.eval_batch),
        }
        print(weights, json.dumps(weights_report[weights]), flush=True)
    cache_bytes = {
        dtype: nbytes(jax.eval_shape(lambda d=dtype: empty_cache(cfg, args.cache_batch, slots, d)))
        for dtype in KV_CACHE_DTYPES
    }

    gens = {
        (weights, kv): Generator(
            cfg, models[weights].graphdef, models[weights].params, kv_cache_dtype=kv
        )
        for weights, kv in RUNS
    }
    made = {
        run: gen.generate(prompts, max_new_tokens=args.new_tokens).tokens
        for run, gen in gens.items()
    }
    timings = [
        decode_rates(gens, prompts[:batch], args.decode_tokens, args.repeats)
        for batch in args.batches
    ]
    runs = []
    for run in RUNS:
        runs.append(
            {
                "weights": run[0],
                "kv_cache": run[1],
                "decode": [timing[run] for timing in timings],
                "agreement": agreement(made[RUNS[0]], made[run]),
            }
        )
        print(json.dumps(runs[-1]), flush=True)

    record = {
        "benchmark": "quantized_inference",
        "model": base.source,
        "cpu": environment.machine()["cpu"],
        "cpu_count": environment.machine()["cpu_count"],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "shape": {
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "vocab_size": cfg.vocab_size,
            "max_seq_len": cfg.max_seq_len,
            "tie_embeddings": cfg.tie_embeddings,
            "compute_dtype": cfg.compute_dtype,
            "param_dtype": cfg.param_dtype,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out")},
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "weights": weights_report,
        "kv_cache_bytes": {"batch": args.cache_batch, "slots": slots, **cache_bytes},
        "runs": runs,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
