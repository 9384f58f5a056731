"""Checkpoint save cost: how long the training loop blocks vs how long the save takes.

Saves a full TrainState (params + AdamW moments + step + loss EMA) of a preset with
jaxlm.checkpointing.manager.Checkpointer, the way the training loop does, and reports per save:

  fingerprint  the on-device checksum of every array (jaxlm.checkpointing.integrity),
               part of the blocking time: jaxlm's only synchronous addition to Orbax
  blocking     wall time of `Checkpointer.save(...)`: what the training loop waits
               (checksums + Orbax's copy off the devices + dispatching the write)
  total        from the call until `wait()` returns: the files are on disk, renamed
  bytes        size of the finished step directory

The first save includes one-time costs (compiling the checksum program, Orbax's
first-use setup); the summary line is the median of the later ones. AdamW moments are
filled with random values (a fresh optimizer's zeros would compress to nothing and
understate the bytes written).

Run (from the repository root, in the venv):

    python benchmarks/checkpoint_save.py                      # 125m, 4 saves
    python benchmarks/checkpoint_save.py --preset tiny --saves 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    # Re-executes once with glibc malloc tunables (see jaxlm/runtime/cpu.py) before JAX starts.
    configure_cpu()

import jax
import jax.numpy as jnp

from jaxlm.checkpointing.integrity import device_fingerprints
from jaxlm.checkpointing.manager import Checkpointer
from jaxlm.config import Config, DataConfig, OptimConfig
from jaxlm.models import count_params
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import make_optimizer
from jaxlm.training.state import create_train_state


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="125m")
    p.add_argument("--saves", type=int, default=4)
    p.add_argument("--dir", default="/tmp/jaxlm-checkpoint-bench", help="emptied first")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def filled_state(preset: str):
    """A TrainState on all devices (data axis) with non-zero, incompressible moments."""
    cfg = get_preset(preset)
    mesh = make_mesh((jax.device_count(), 1, 1))
    state, _ = create_train_state(cfg, make_optimizer(OptimConfig(), 1000), mesh, jax.random.key(0))

    @jax.jit
    def fill(opt_state):
        leaves, treedef = jax.tree.flatten(opt_state)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        out = [
            x + 1e-3 * jax.random.normal(k, x.shape, x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else x
            for x, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, out)

    with jax.set_mesh(mesh):
        state = state.replace(opt_state=fill(state.opt_state))
    return cfg, jax.block_until_ready(state)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, state = filled_state(args.preset)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    data = DataConfig(seq_len=min(256, cfg.max_seq_len), tokenizer_vocab_size=cfg.vocab_size)
    config_json = Config(model=cfg, data=data).to_json()
    directory = Path(args.dir)
    shutil.rmtree(directory, ignore_errors=True)
    checkpointer = Checkpointer(directory, keep=2)
    print(
        f"{args.preset}: {count_params(cfg):,} params, state {state_bytes / 2**30:.2f} GiB "
        f"(params + AdamW moments), {jax.device_count()} {jax.default_backend()} device(s)"
    )
    print(f"{'save':>4} {'fingerprint':>12} {'blocking':>10} {'total':>10} {'bytes':>12}")
    rows = []
    for i in range(1, args.saves + 1):
        t0 = time.perf_counter()
        device_fingerprints(state)
        fingerprint = time.perf_counter() - t0
        t0 = time.perf_counter()
        checkpointer.save(i, state, {"iterator": {}}, config_json)
        blocking = time.perf_counter() - t0
        checkpointer.wait()
        total = time.perf_counter() - t0
        written = dir_bytes(directory / str(i))
        rows.append({"fingerprint_s": fingerprint, "blocking_s": blocking, "total_s": total,
                     "bytes": written})  # fmt: skip
        print(f"{i:>4} {fingerprint:>11.3f}s {blocking:>9.3f}s {total:>9.3f}s {written:>12,d}")
    checkpointer.close()
    later = rows[1:] or rows
    summary = {k: statistics.median(r[k] for r in later) for k in rows[0]}
    print(
        f"median of saves 2..{args.saves}: blocking {summary['blocking_s']:.3f} s "
        f"(of which fingerprint {summary['fingerprint_s']:.3f} s) vs total "
        f"{summary['total_s']:.3f} s; {summary['bytes'] / 2**20:,.0f} MiB written"
    )
    if args.json:
        meta = {
            "preset": args.preset,
            "devices": jax.device_count(),
            "backend": jax.default_backend(),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
        }
        Path(args.json).write_text(json.dumps({**meta, "saves": rows, "median": summary}, indent=2))
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
