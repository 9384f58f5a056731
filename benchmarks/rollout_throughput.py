"""RL rollout speed: response tokens per second of jaxlm's jitted rollout.

For each preset and number of rows it times one call of the rollout program
(jaxlm/inference/rollout.py: prefill + a while_loop of cached decode steps, all in
one jit) with temperature-1 sampling and no stop token, so every row makes exactly
--response tokens: tokens/s = rows * response / wall time of the call, the prefill
included (in RL the prefill is part of every rollout). The median of --repeats calls
after one that compiles. Rows are what an RL step samples: prompts x group size.

Params are random (speed does not depend on their values).

Run (from the repository root, in the venv, on an otherwise idle machine):

    python benchmarks/rollout_throughput.py                     # arithmetic-sized model
    python benchmarks/rollout_throughput.py --presets tiny minimind-26m --rows 64 256 \\
        --prompt 64 --response 128 --json out.json

Not wired into benchmarks/run.py yet: it prints its records (and --json writes them).
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
    configure_cpu()  # same malloc tunables as the other benchmarks (jaxlm/runtime/cpu.py)

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.inference.rollout import make_rollout
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset

# The model of experiments/rl_arithmetic.py.
ARITHMETIC = ModelConfig(
    d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384, vocab_size=384, max_seq_len=64
)


def model_config(name: str) -> ModelConfig:
    return ARITHMETIC if name == "arithmetic" else get_preset(name)


def rollout_rate(cfg: ModelConfig, rows: int, prompt: int, response: int, repeats: int) -> dict:
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, prompt + response))
    graphdef, _ = abstract_model(cfg)
    params = init_params(cfg, jax.random.key(0))
    rollout = jax.jit(
        make_rollout(
            cfg, graphdef, max_new_tokens=response, sampling=SamplingConfig(1.0), stop_ids=()
        )
    )
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(3, cfg.vocab_size, (rows, prompt)), jnp.int32)
    lengths = jnp.full((rows,), prompt, jnp.int32)
    jax.block_until_ready(rollout(params, prompts, lengths, jax.random.key(0)))  # compile
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(rollout(params, prompts, lengths, jax.random.key(i + 1)))
        times.append(time.perf_counter() - start)
    made = int(np.asarray(out.num_tokens).sum())
    assert made == rows * response, "every row must make all its tokens (no stop token)"
    seconds = statistics.median(times)
    return {
        "rows": rows,
        "prompt": prompt,
        "response": response,
        "seconds": seconds,
        "tokens_per_s": made / seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["arithmetic", "tiny"])
    p.add_argument("--rows", nargs="+", type=int, default=[128, 256])
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--response", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    records = []
    for name in args.presets:
        for rows in args.rows:
            r = rollout_rate(model_config(name), rows, args.prompt, args.response, args.repeats)
            r = {"preset": name, **r, "backend": jax.default_backend(), "cpu": platform.processor()}
            print(json.dumps(r), flush=True)
            records.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
