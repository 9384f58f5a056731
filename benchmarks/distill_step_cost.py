"""What distillation costs per train step: the student alone vs with a teacher.

Times three jitted train steps on the same batch and state shapes:

    ce        the next-token step (jaxlm.training.steps.make_lm_step): the baseline
    online    the distillation step with the teacher's forward pass inside it
              (jaxlm.training.distill_steps.make_distill_step, teacher params passed in)
    top_k     the distillation step reading a top-k table from the batch (no teacher)

and, once, the teacher's top-k scoring of one batch (what building a table costs per
batch). The median of --repeats calls after one that compiles; the ratio to `ce` is
what a user pays per step. Params and data are random: speed does not depend on them.
Default shapes are experiments/distill_stdlib.py's (teacher = the quickstart model,
student 2 x 128, vocabulary 4096, 16 x 256 tokens).

Run (from the repository root, in the venv, on an otherwise idle machine):

    python benchmarks/distill_step_cost.py [--top-k 16] [--repeats 10] [--json out.json]

Not wired into benchmarks/run.py: it prints its record (and --json writes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    configure_cpu()  # same malloc tunables as the other benchmarks (jaxlm/runtime/cpu.py)

import environment  # benchmarks/environment.py: the machine each result was measured on
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import DistillConfig, ModelConfig, OptimConfig
from jaxlm.models.params import abstract_model, init_params
from jaxlm.training.distill_losses import teacher_topk
from jaxlm.training.distill_steps import make_distill_step
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import TrainState
from jaxlm.training.steps import forward, make_lm_step

SHAPE = dict(vocab_size=4096, max_seq_len=256, tie_embeddings=True)
TEACHER = ModelConfig(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, **SHAPE)
STUDENT = ModelConfig(d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, **SHAPE)


def median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    optim = OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0)
    optimizer, schedule = make_optimizer(optim, 100), learning_rate_schedule(optim, 100)
    s_graph, _ = abstract_model(STUDENT)
    t_graph, _ = abstract_model(TEACHER)
    params = init_params(STUDENT, jax.random.key(0))
    teacher = init_params(TEACHER, jax.random.key(1))
    rng = np.random.default_rng(0)
    B, T = args.batch, args.seq
    tokens = rng.integers(3, SHAPE["vocab_size"], (B, T)).astype(np.int32)
    batch = {
        "tokens": jnp.asarray(tokens),
        "positions": jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)),
        "segment_ids": jnp.ones((B, T), jnp.int32),
        "targets": jnp.asarray(np.roll(tokens, -1, axis=1)),
        "loss_mask": jnp.ones((B, T), jnp.int32),
    }
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jnp.zeros(()))
    dcfg = DistillConfig(teacher="t", top_k=args.top_k)

    # The state is not donated here, so every call starts from the same one.
    ce = jax.jit(make_lm_step(s_graph, optimizer, schedule))
    online = jax.jit(
        make_distill_step(s_graph, optimizer, schedule, dcfg, teacher_graphdef=t_graph)
    )
    offline = jax.jit(make_distill_step(s_graph, optimizer, schedule, dcfg))
    score = jax.jit(lambda p, b: teacher_topk(forward(t_graph, p, b), args.top_k, 1.0))
    ids, logps = score(teacher, batch)
    table_batch = {**batch, "teacher_ids": ids, "teacher_logps": logps}

    seconds = {
        "ce": median_time(lambda: ce(state, batch), args.repeats),
        "online": median_time(lambda: online(state, batch, teacher), args.repeats),
        "top_k": median_time(lambda: offline(state, table_batch, None), args.repeats),
        "table_batch": median_time(lambda: score(teacher, batch), args.repeats),
    }
    record = {
        "benchmark": "distill_step_cost",
        "cpu": environment.machine()["cpu"],
        "batch": B,
        "seq": T,
        "top_k": args.top_k,
        "teacher": "d256 L4",
        "student": "d128 L2",
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "vs_ce": {k: round(v / seconds["ce"], 3) for k, v in seconds.items() if k != "ce"},
    }
    print(json.dumps(record, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
