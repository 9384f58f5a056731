"""Forward + backward time of one attention call, per implementation, against PyTorch.

Times `jaxlm.models.attention.attention` at one layer's shape (default: the train
benchmark's reference shape, B16 T256, 4 query heads over 4 kv heads of 64) for the
implementations that run on this backend: "xla" (on CPU: blocked causal attention),
"blocked", plain `jax.nn.dot_product_attention` (what "xla" was before the blocked
path) and "naive". Each figure is the median of --repeats jitted calls of
vjp(attention)(cotangent), which includes the forward. PyTorch's
`scaled_dot_product_attention(is_causal=True)` forward + backward at the same shape
is timed beside it when torch is installed (the train benchmark's peer uses it).

    python benchmarks/attention_step.py [--batch 16 --seq 256 --heads 4 --kv-heads 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    configure_cpu()

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.attention import attention, segment_mask


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_jax(args) -> dict[str, float]:
    rng = np.random.default_rng(0)
    shape_q = (args.batch, args.seq, args.heads, args.head_dim)
    shape_kv = (args.batch, args.seq, args.kv_heads, args.head_dim)
    q, g = (jnp.asarray(rng.standard_normal(shape_q), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.standard_normal(shape_kv), jnp.float32) for _ in range(2))
    seg = jnp.ones((args.batch, args.seq), jnp.int32)

    def plain(q, k, v):
        mask = segment_mask(seg, seg)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)

    impls = {
        "xla": lambda q, k, v: attention(q, k, v, seg, implementation="xla"),
        "blocked": lambda q, k, v: attention(q, k, v, seg, implementation="blocked"),
        "dot_product_attention": plain,
        "naive": lambda q, k, v: attention(q, k, v, seg, implementation="naive"),
    }
    out = {}
    for name, fn in impls.items():
        step = jax.jit(lambda q, k, v, fn=fn: jax.vjp(fn, q, k, v)[1](g))
        out[name] = _median_ms(lambda step=step: jax.block_until_ready(step(q, k, v)), args.repeats)
    return out


def time_torch(args) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    rng = np.random.default_rng(0)

    def tensor(heads):  # [B, heads, T, H], as SDPA takes it
        x = rng.standard_normal((args.batch, heads, args.seq, args.head_dim), np.float32)
        return torch.from_numpy(x).requires_grad_()

    q, k, v = tensor(args.heads), tensor(args.kv_heads), tensor(args.kv_heads)
    g = torch.randn(args.batch, args.heads, args.seq, args.head_dim)
    gqa = args.heads != args.kv_heads

    def step():
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=gqa
        )
        o.backward(g)
        q.grad = k.grad = v.grad = None

    return _median_ms(step, args.repeats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()}; B{args.batch} T{args.seq} "
        f"N{args.heads} K{args.kv_heads} H{args.head_dim}, float32, forward + backward"
    )
    results = time_jax(args)
    torch_ms = time_torch(args)
    if torch_ms is not None:
        results["torch sdpa"] = torch_ms
    for name, ms in results.items():
        print(f"  {name:24s} {ms:8.1f} ms")
    return results


if __name__ == "__main__":
    main()
