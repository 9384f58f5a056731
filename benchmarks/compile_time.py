"""Compile time of jaxlm's train step vs depth, with and without scanning the layers.

Builds the real train step the way train_throughput.py's bench_jax does
(init_train_state's shapes -> make_lm_step -> jit_train_step on a data-parallel mesh, AdamW +
decay mask + clipping from jaxlm.training.optim) for each depth in --depths, once with
`scan_layers=True` (one layer body under jax.lax.scan) and once unrolled, and times
separately

  lower    `jitted.lower(state, batch)`: tracing the Python step and emitting StableHLO
  compile  `lowered.compile()`: XLA optimisation and code generation

on abstract inputs (ShapeDtypeStructs: no parameters are allocated, so large presets
fit). JAX's persistent compilation cache is off for these, so every compile is cold.
With scan, compile time should stay flat as layers are added; unrolled, it grows with
depth. One untimed warm-up (a trivial jit and one lowering) absorbs first-use costs.

Then the warm-cache check (skip with --no-cache-check): the same script runs twice in
child processes with the persistent cache on, in a fresh directory under --cache-dir
(default: the system temp dir), with min compile time 0. The first child compiles and
writes the entry; the second loads it. Both are reported for the base depth (the
preset's, 4 for the default shape, 2 with --quick) with scan.

Run (from the repository root, in the venv, on an otherwise idle machine):

    python benchmarks/compile_time.py                          # d256, depths 2 4 8 16
    python benchmarks/compile_time.py --preset 125m --depths 12 24 --remat dots
    python benchmarks/compile_time.py --quick --no-cache-check --json out.json

Default base shape: d_model 256, 4 heads (4 kv heads), vocab 8192, seq 256, batch 16,
fp32 (train_throughput.py's reference shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    # Same malloc tunables as the other JAX benchmarks (jaxlm/runtime/cpu.py), before JAX starts.
    configure_cpu()

import environment
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig, OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import init_train_state, train_state_shardings
from jaxlm.training.steps import jit_train_step, make_lm_step

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help="start from this jaxlm preset instead of the default shape")
    p.add_argument("--depths", type=int, nargs="+", help="n_layers to try (default 2 4 8 16)")
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--attention", choices=["xla", "cudnn", "blocked", "naive"], default="xla")
    p.add_argument("--remat", choices=["none", "full", "dots"], default="none")
    p.add_argument("--quick", action="store_true", help="tiny shape, depths 1 2 (for tests)")
    p.add_argument("--cache-dir", help="where the warm-cache check makes its fresh directory")
    p.add_argument("--no-cache-check", action="store_true", help="skip the warm-cache check")
    p.add_argument("--json", help="also write the results to this JSON file")
    # Internal: run as one child of the warm-cache check, with the cache in this directory.
    p.add_argument("--cache-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> tuple[ModelConfig, int, int]:
    """(model config, seq, batch) of the base shape, before depth and scan are set."""
    if args.preset:
        cfg, seq, batch = get_preset(args.preset), 256, 16
    else:
        cfg = ModelConfig(
            vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=256
        )
        seq, batch = 256, 16
    if args.quick:
        cfg = dataclasses.replace(
            cfg, d_model=64, vocab_size=512, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=0, head_dim=0
        )
        seq, batch = 64, 2
    changes = {"d_model": args.d_model, "vocab_size": args.vocab}
    if args.n_heads is not None:
        # The default shape has as many kv heads as heads; a preset keeps its ratio only
        # if it still divides, so set both.
        changes.update(n_heads=args.n_heads, n_kv_heads=args.n_heads)
    changes = {k: v for k, v in changes.items() if v is not None}
    seq = args.seq or seq
    batch = args.batch or batch
    cfg = dataclasses.replace(
        cfg,
        **changes,
        max_seq_len=max(cfg.max_seq_len, seq),
        compute_dtype=args.dtype,
        attention_impl=args.attention,
        remat=args.remat,
    )
    return cfg, seq, batch


def time_compile(cfg: ModelConfig, seq: int, batch: int) -> dict:
    """Lower and compile the train step of `cfg`; seconds for each."""
    ocfg = OptimConfig()
    optimizer = make_optimizer(ocfg, 1000)
    schedule = learning_rate_schedule(ocfg, 1000)
    mesh = make_mesh((-1, 1, 1))  # data parallel over every local device, as bench_jax
    shardings = train_state_shardings(cfg, optimizer, mesh)
    # Shapes only (the initialiser traced, never run): nothing is allocated, so large
    # presets fit. Each leaf carries its sharding, as the real state would.
    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(lambda k: init_train_state(cfg, optimizer, k), jax.random.key(0)),
        shardings,
    )
    graphdef, _ = abstract_model(cfg)
    step_fn = jit_train_step(make_lm_step(graphdef, optimizer, schedule), shardings, mesh)
    batch_spec = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32) for k in BATCH_KEYS}
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        lowered = step_fn.lower(state, batch_spec)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
    return {
        "n_layers": cfg.n_layers,
        "scan_layers": cfg.scan_layers,
        "remat": cfg.remat,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
    }


def warm_up(cfg: ModelConfig, seq: int, batch: int) -> None:
    """Pay first-use costs (backend start, XLA/LLVM init, lazy imports) outside the timing."""
    jax.jit(lambda x: x * 2 + 1).lower(jnp.ones(8)).compile()
    time_compile(dataclasses.replace(cfg, n_layers=1), seq, batch)


def cache_check(argv: list[str], root: str | None) -> dict:
    """Cold then warm compile of the base depth in two children sharing a fresh cache."""
    cache = Path(tempfile.mkdtemp(prefix="jaxlm-compile-cache-", dir=root))
    out = []
    try:
        for i in range(2):
            result = cache / f"child-{i}.json"
            # argparse keeps the last --json; the child ignores --depths and --cache-dir.
            cmd = [sys.executable, __file__, *argv, "--json", str(result)]
            subprocess.run([*cmd, "--cache-child", str(cache / "xla")], check=True)
            out.append(json.loads(result.read_text()))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold, warm = out
    return {
        "n_layers": cold["n_layers"],
        "scan_layers": True,
        "cold_s": cold["compile_s"],
        "warm_s": warm["compile_s"],
        "cold_lower_s": cold["lower_s"],
        "warm_lower_s": warm["lower_s"],
    }


def run_child(args: argparse.Namespace) -> None:
    """One side of the warm-cache check: compile the base depth with the cache on."""
    # Set before anything compiles: JAX decides whether the cache is in use at the first one.
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", args.cache_child)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cfg, seq, batch = base_config(args)
    row = time_compile(dataclasses.replace(cfg, scan_layers=True), seq, batch)
    print(f"  cache child: compile {row['compile_s']:.2f} s (lower {row['lower_s']:.2f} s)")
    Path(args.json).write_text(json.dumps(row))


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.cache_child:
        run_child(args)
        return None
    # Cold compiles only: neither jaxlm's default cache nor a user's may serve them.
    jax.config.update("jax_enable_compilation_cache", False)
    cfg, seq, batch = base_config(args)
    depths = args.depths or ([1, 2] if args.quick else [2, 4, 8, 16])
    env = environment.describe()
    print(environment.summary_line(env))
    print(
        f"train step: d_model={cfg.d_model} heads={cfg.n_heads} kv_heads={cfg.n_kv_heads} "
        f"d_ff={cfg.resolved_d_ff} vocab={cfg.vocab_size} dtype={cfg.compute_dtype} "
        f"remat={cfg.remat} attention={cfg.attention_impl}; batch={batch} seq={seq}; "
        "persistent compilation cache off"
    )
    warm_up(cfg, seq, batch)
    print(f"{'n_layers':>8} {'scan':>5} {'lower_s':>9} {'compile_s':>10} {'total_s':>8}")
    rows = []
    for depth in depths:
        for scan in (True, False):
            row = time_compile(
                dataclasses.replace(cfg, n_layers=depth, scan_layers=scan), seq, batch
            )
            rows.append(row)
            print(
                f"{depth:>8} {'yes' if scan else 'no':>5} {row['lower_s']:>9.2f} "
                f"{row['compile_s']:>10.2f} {row['lower_s'] + row['compile_s']:>8.2f}",
                flush=True,
            )
    if len(depths) > 1:
        for scan in (True, False):
            totals = [r["lower_s"] + r["compile_s"] for r in rows if r["scan_layers"] == scan]
            print(
                f"{'scan' if scan else 'unrolled'}: total x{totals[-1] / totals[0]:.2f} from "
                f"{depths[0]} to {depths[-1]} layers"
            )
    cache = None
    if not args.no_cache_check:
        print(f"warm-cache check ({cfg.n_layers} layers, scan, two processes):", flush=True)
        cache = cache_check(argv, args.cache_dir)
        print(
            f"persistent cache: compile {cache['cold_s']:.2f} s cold -> {cache['warm_s']:.2f} s "
            f"warm (lower {cache['cold_lower_s']:.2f} s -> {cache['warm_lower_s']:.2f} s)"
        )
    results = {"args": vars(args), "rows": rows, "cache": cache, "environment": env}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
