"""Decode speed of jaxlm's KV-cached Generator, and its speedup over recomputing the prefix.

For each preset and batch size it times `Generator.generate` (greedy, no stop token,
so every row makes exactly --new-tokens tokens) after one untimed call that compiles,
and reports decode tokens/s = batch * (new_tokens - 1) / decode wall time (the prefill
makes the first token and is timed apart; see jaxlm/inference/decode.py).

Speedup at context C (default 512): one cached decode step with C - 1 tokens already
in the cache, against what generation without a cache does per token: the full
forward pass over all C tokens (jitted, [batch, C] -> logits). Both are medians over
--repeats timed calls after a compile, both block on their result.

Params are random (speed does not depend on their values). `tiny`'s max_seq_len is
raised to C so it can hold the context (RoPE has no position table, nothing else
changes).

Run (from the repository root, in the venv, on an otherwise idle machine):

    python benchmarks/decode_throughput.py                        # tiny, minimind-26m
    python benchmarks/decode_throughput.py --presets 1b --batches 1 16 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    configure_cpu()  # same malloc tunables as training benchmarks (jaxlm/runtime/cpu.py)

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.inference.decode import Generator
from jaxlm.inference.kv_cache import forward_cached, init_cache
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_rate(gen: Generator, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, vocab, (batch, prompt_len)).tolist()
    gen.generate(prompts, max_new_tokens=new_tokens)  # compiles prefill and decode
    out = gen.generate(prompts, max_new_tokens=new_tokens)
    made = batch * (new_tokens - 1)
    return {
        "batch": batch,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "prefill_s": round(out.prefill_s, 4),
        "decode_s": round(out.decode_s, 4),
        "decode_tokens_per_s": round(made / out.decode_s, 1),
        "ms_per_step": round(1000 * out.decode_s / (new_tokens - 1), 3),
    }


def cache_speedup(cfg, graphdef, params, batch: int, context: int, repeats: int) -> dict:
    """One cached step at `context` vs one full forward over `context` tokens."""
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (batch, context)), jnp.int32)
    model_forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)[:, -1])
    full_s = _median_time(lambda: model_forward(params, tokens), repeats)

    cache = init_cache(cfg, batch, context)
    positions = jnp.broadcast_to(jnp.arange(context - 1), (batch, context - 1))
    _, cache = jax.jit(
        lambda p, c: forward_cached(
            cfg,
            graphdef,
            p,
            c,
            tokens[:, :-1],
            positions,
            jnp.ones_like(positions, bool),
            jnp.int32(0),
            logits_at_B=jnp.full((batch,), context - 2),
        )
    )(params, cache)
    last = tokens[:, -1:]
    position = jnp.full((batch, 1), context - 1)
    step = jax.jit(
        lambda p, c: forward_cached(
            cfg, graphdef, p, c, last, position, jnp.ones_like(last, bool), jnp.int32(context - 1)
        )[0]
    )
    cached_s = _median_time(lambda: step(params, cache), repeats)
    return {
        "batch": batch,
        "context": context,
        "full_forward_ms": round(1000 * full_s, 3),
        "cached_step_ms": round(1000 * cached_s, 3),
        "speedup": round(full_s / cached_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "minimind-26m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=129)
    parser.add_argument("--context", type=int, default=512, help="for the speedup")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32", help="model.compute_dtype")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    results = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "runs": [],
    }
    for name in args.presets:
        cfg = get_preset(name)
        needed = max(args.context, args.prompt + args.new_tokens)
        cfg = dataclasses.replace(
            cfg, max_seq_len=max(cfg.max_seq_len, needed), compute_dtype=args.dtype
        )
        graphdef, _ = abstract_model(cfg)
        params = init_params(cfg, jax.random.key(0))
        gen = Generator(cfg, graphdef, params)
        for batch in args.batches:
            rate = decode_rate(gen, batch, args.prompt, args.new_tokens, cfg.vocab_size)
            speed = cache_speedup(cfg, graphdef, params, batch, args.context, args.repeats)
            row = {"preset": name, **rate, **{f"at_{k}": v for k, v in speed.items()}}
            results["runs"].append(row)
            print(
                f"{name:14s} batch {batch:3d}: {rate['decode_tokens_per_s']:9.1f} tokens/s "
                f"({rate['ms_per_step']:.2f} ms/step, prompt {args.prompt}); at context "
                f"{args.context}: full forward {speed['full_forward_ms']:.2f} ms vs cached "
                f"step {speed['cached_step_ms']:.2f} ms -> {speed['speedup']:.1f}x",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
