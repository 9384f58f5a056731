"""Every matmul of jaxlm's train step, by shape: jaxlm (XLA) against PyTorch, one at a time.

Answers "is it the matmul library?" when the train step is slower than PyTorch on some
CPU. It traces jaxlm's real train step (the one `train_throughput.py` times: forward,
loss, backward, optimizer) to a jaxpr and collects every `dot_general` in it, with its
operand shapes, contracting and batch dimensions and how many times a step runs it (a
scanned layer stack counts once per layer). Each distinct contraction is then timed
alone: as a jitted `jax.lax.dot_general` on this backend, and as `torch.einsum` of the
same contraction (what PyTorch runs for it: mm / bmm on views, copying where the layout
asks) with torch.set_num_threads = the CPU cores. The table gives ms per call, GFLOP/s
and ms per step (calls x ms) for each, and the totals: how much of the step's time the
matmuls alone account for in each framework.

What it does not see: a matmul timed alone runs with cold-ish inputs and its own
layout choices, while inside the compiled step XLA may pick another operand layout
(inserting a transposed copy, timed there as a separate op) and overlap independent
matmuls; PyTorch's autograd likewise transposes by views. So the totals are the
matmul library's share, not the step's split; `train_throughput.py --trace DIR` shows
the step itself.

    python benchmarks/matmul_shapes.py                         # reference shape
    python benchmarks/matmul_shapes.py --preset minimind-26m --seq 256 --batch 16
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/matmul_shapes.py

Shape flags are train_throughput.py's; `--no-torch` times jaxlm only, `--json F`
writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import NamedTuple

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    configure_cpu()  # the same malloc settings as every other CPU benchmark

import jax
import numpy as np
import train_throughput

from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import jit_train_step, make_lm_step


class Contraction(NamedTuple):
    """One dot_general, as the jaxpr gives it (hashable: identical ones are grouped)."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    lhs_contract: tuple[int, ...]
    rhs_contract: tuple[int, ...]
    lhs_batch: tuple[int, ...]
    rhs_batch: tuple[int, ...]
    in_dtype: str  # the operands' (bfloat16 models feed bfloat16 ...)
    out_dtype: str  # ... and may ask for a float32 result, as the logits do

    @property
    def flops(self) -> int:
        """2 x (batch x free lhs x free rhs x contracted) multiply-adds."""
        batch = int(np.prod([self.lhs[d] for d in self.lhs_batch]))
        contracted = int(np.prod([self.lhs[d] for d in self.lhs_contract]))
        free_lhs = int(np.prod(self.lhs)) // (batch * contracted)
        free_rhs = int(np.prod(self.rhs)) // (batch * contracted)
        return 2 * batch * free_lhs * free_rhs * contracted

    def label(self) -> str:
        dims = f"contract {list(self.lhs_contract)}x{list(self.rhs_contract)}"
        if self.lhs_batch:
            dims += f" batch {list(self.lhs_batch)}x{list(self.rhs_batch)}"
        types = "" if self.in_dtype == self.out_dtype == "float32" else f" {self.in_dtype}"
        if self.out_dtype != self.in_dtype:
            types += f"->{self.out_dtype}"
        return f"{list(self.lhs)} . {list(self.rhs)} {dims}{types}"

    def einsum(self) -> str:
        """The einsum equation of this contraction (output: batch, free lhs, free rhs,
        the order dot_general produces)."""
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        lhs = [""] * len(self.lhs)
        rhs = [""] * len(self.rhs)
        out_batch = []
        for dl, dr in zip(self.lhs_batch, self.rhs_batch, strict=True):
            lhs[dl] = rhs[dr] = next(letters)
            out_batch.append(lhs[dl])
        for dl, dr in zip(self.lhs_contract, self.rhs_contract, strict=True):
            lhs[dl] = rhs[dr] = next(letters)
        free_l, free_r = [], []
        for axes, free in ((lhs, free_l), (rhs, free_r)):
            for i, letter in enumerate(axes):
                if not letter:  # neither batch nor contracted: an output axis
                    axes[i] = next(letters)
                    free.append(axes[i])
        return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out_batch + free_l + free_r)}"


def _subjaxprs(params: dict):
    """The jaxprs nested in an equation's parameters (pjit, scan, cond, remat, custom_*)."""
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def contractions(jaxpr, times: int = 1, found: Counter | None = None) -> Counter:
    """Contraction -> calls per step, over `jaxpr` and everything nested in it; a scan's
    body counts `length` times. A while loop's body counts once (its trip count is not
    static): the train step has none."""
    found = Counter() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval for v in eqn.invars)
            key = Contraction(
                tuple(lhs.shape),
                tuple(rhs.shape),
                tuple(lc),
                tuple(rc),
                tuple(lb),
                tuple(rb),
                str(lhs.dtype),
                str(eqn.outvars[0].aval.dtype),
            )
            found[key] += times
        inner = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
        for sub in _subjaxprs(eqn.params):
            contractions(sub, inner, found)
    return found


def step_contractions(cfg, ocfg, batch: int, seq: int) -> Counter:
    """The contractions of one jaxlm train step at this shape, on one device."""
    optimizer = make_optimizer(ocfg, 10)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])  # global shapes; one device is enough
    state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(0))
    graphdef, _ = abstract_model(cfg)
    step = jit_train_step(
        make_lm_step(graphdef, optimizer, learning_rate_schedule(ocfg, 10)), shardings, mesh
    )
    host = train_throughput.synthetic_batches(cfg, batch, seq, 0, count=1)[0]
    with jax.set_mesh(mesh):
        closed = jax.make_jaxpr(step)(state, host_batch_to_global(host, mesh))
    return contractions(closed.jaxpr)


def _median_seconds(call, reps: int) -> float:
    """Median of `reps` timed calls after 3 untimed ones (caches, threads, compile)."""
    return train_throughput._timed(lambda _: call(), reps, warmup=3)[0]


def time_jax(c: Contraction, reps: int) -> float:
    rng = np.random.default_rng(0)
    lhs = jax.numpy.asarray(rng.standard_normal(c.lhs, np.float32), c.in_dtype)
    rhs = jax.numpy.asarray(rng.standard_normal(c.rhs, np.float32), c.in_dtype)
    dims = ((c.lhs_contract, c.rhs_contract), (c.lhs_batch, c.rhs_batch))
    dot = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=c.out_dtype))
    return _median_seconds(lambda: dot(lhs, rhs).block_until_ready(), reps)


def time_torch(c: Contraction, reps: int) -> float:
    import torch

    rng = np.random.default_rng(0)
    dtype = getattr(torch, c.in_dtype)  # torch.einsum returns the operands' dtype
    lhs = torch.from_numpy(rng.standard_normal(c.lhs, np.float32)).to(dtype)
    rhs = torch.from_numpy(rng.standard_normal(c.rhs, np.float32)).to(dtype)
    equation = c.einsum()
    with torch.no_grad():
        return _median_seconds(lambda: torch.einsum(equation, lhs, rhs), reps)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15, help="timed calls per contraction")
    p.add_argument("--json", default="", help="write the table here")
    return p.parse_known_args(argv)


def main(argv=None) -> dict:
    args, shape_argv = parse_args(argv)
    targs = train_throughput.parse_args(shape_argv)
    cfg = train_throughput.model_config(targs)
    ocfg = OptimConfig(optimizer=targs.optimizer)
    with_torch = not targs.no_torch
    if with_torch:
        import torch

        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        torch.set_num_threads(threads or os.cpu_count())
    found = step_contractions(cfg, ocfg, targs.batch, targs.seq)
    print(f"jax {jax.__version__} on {jax.default_backend()}, {train_throughput._cpu_model()}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(
        f"model d_model={cfg.d_model} layers={cfg.n_layers} vocab={cfg.vocab_size} "
        f"batch={targs.batch} seq={targs.seq} {cfg.compute_dtype}, optimizer {ocfg.optimizer}: "
        f"{len(found)} distinct contractions, {sum(found.values())} per step"
    )
    rows = []
    for c, calls in found.items():
        jax_s = time_jax(c, args.reps)
        torch_s = time_torch(c, args.reps) if with_torch else None
        rows.append(
            {
                "contraction": c.label(),
                "einsum": c.einsum(),
                "calls_per_step": calls,
                "gflop": c.flops / 1e9,
                "jax_ms": jax_s * 1e3,
                "torch_ms": None if torch_s is None else torch_s * 1e3,
            }
        )
    rows.sort(key=lambda r: -r["jax_ms"] * r["calls_per_step"])
    header = f"{'calls':>5} {'jax ms':>8} {'GF/s':>5}"
    header += f" {'torch ms':>8} {'GF/s':>5} {'jax/torch':>9}" if with_torch else ""
    print(f"{header} {'step ms':>8}  contraction")
    for r in rows:
        line = f"{r['calls_per_step']:5d} {r['jax_ms']:8.2f} {r['gflop'] / r['jax_ms'] * 1e3:5.0f}"
        if with_torch:
            ratio = r["torch_ms"] / r["jax_ms"]
            line += f" {r['torch_ms']:8.2f} {r['gflop'] / r['torch_ms'] * 1e3:5.0f} {ratio:9.2f}"
        print(f"{line} {r['jax_ms'] * r['calls_per_step']:8.1f}  {r['contraction']}")
    total = {"jax_ms_per_step": sum(r["jax_ms"] * r["calls_per_step"] for r in rows)}
    if with_torch:
        total["torch_ms_per_step"] = sum(r["torch_ms"] * r["calls_per_step"] for r in rows)
    gflop = sum(r["gflop"] * r["calls_per_step"] for r in rows)
    print(
        f"matmuls per step: {gflop:.1f} GFLOP; jax {total['jax_ms_per_step']:.0f} ms"
        + (f", torch {total['torch_ms_per_step']:.0f} ms" if with_torch else "")
        + (" (jax/torch column: >1 means jax's matmul is faster)" if with_torch else "")
    )
    result = {
        "cpu": train_throughput._cpu_model(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "config": {
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "vocab_size": cfg.vocab_size,
            "batch": targs.batch,
            "seq": targs.seq,
        },
        "gflop_per_step": gflop,
        "rows": rows,
        **total,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
