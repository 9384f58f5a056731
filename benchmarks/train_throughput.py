"""Training throughput (tokens/s) and MFU of jaxlm's real train step, vs PyTorch.

Times jaxlm's own path: ModelConfig -> create_train_state -> make_lm_step ->
jit_train_step, with the AdamW + weight-decay mask + global-norm clipping of
jaxlm.training.optim, on synthetic token batches, on the current JAX backend. When torch and
transformers are importable (`pip install -e '.[bench]'`) the same run also trains the
identical model with transformers' LlamaForCausalLM (same widths, heads, kv heads,
d_ff, vocab, tying, RMSNorm eps, RoPE theta; AdamW with the same hyper-parameters,
schedule, decay mask and clipping; torch.set_num_threads = the CPU cores) and prints
the ratio jax / torch.

Timing: the median step time over `--steps` timed steps that follow `--warmup`
untimed ones (the first includes compilation). Every timed step blocks on its result
(jax.block_until_ready on the metrics, loss.item() in torch).

MFU convention (jaxlm.models.flops): training FLOPs per token = 6 * N + 12 * L * T * d_model,
N = non-embedding parameters including the output head matrix, the attention term
not halved for causality. Peak: on CPU it is *measured* here with a large fp32 jnp
matmul (so CPU MFU is relative to what this machine's matmul achieves); on GPU/TPU it
is the data-sheet dense bf16 peak of the device kind.

Run (from the repository root, in the venv):

    python benchmarks/train_throughput.py                       # reference shape below
    python benchmarks/train_throughput.py --preset minimind-26m --seq 256 --batch 8
    python benchmarks/train_throughput.py --d-model 512 --n-layers 8 --vocab 6400 \
        --seq 512 --batch 8 --dtype bfloat16 --steps 20 --no-torch

The defaults are the reference configuration: d_model 256, 4 layers, 4 heads (4 kv
heads), vocab 8192, seq 256, batch 16, fp32 (d_ff by jaxlm's rule: 704).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

from jaxlm.runtime.cpu import configure_cpu

if __name__ == "__main__":
    # Re-executes once with glibc malloc tunables (see jaxlm/runtime/cpu.py) before JAX starts.
    configure_cpu()

import jax
import numpy as np
from environment import FLOP_CONVENTION

from jaxlm.config import ModelConfig, OptimConfig
from jaxlm.models.flops import (
    device_peak_flops,
    flops_per_token,
    matmul_params,
    measure_cpu_matmul_flops,
)
from jaxlm.models.params import abstract_model
from jaxlm.models.transformer import scans_layers
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import jit_train_step, make_lm_step


def _cpu_model() -> str:
    """/proc/cpuinfo's model name, family and model numbers, and whether it has AVX-512
    (AMD EPYC and Intel Xeon rank jax and torch differently, and a masked name like
    "AMD EPYC" covers generations with twice the matmul rate apart)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    avx512 = ", AVX-512" if "avx512f" in fields.get("flags", "").split() else ""
    family, number = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields.get('model name', '?')} (family {family} model {number}{avx512})"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help="a jaxlm preset name; shape flags below override it")
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--n-kv-heads", type=int)
    p.add_argument("--d-ff", type=int, help="default: jaxlm's rule (8/3 d_model, rounded)")
    p.add_argument("--vocab", type=int)
    p.add_argument("--untied", action="store_true", help="untie input and output embeddings")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--attention", choices=["xla", "cudnn", "blocked", "naive"], default="xla")
    p.add_argument("--remat", choices=["none", "full", "dots"], default="none")
    p.add_argument(
        "--optimizer",
        choices=["adamw", "muon"],
        default="adamw",
        help="jaxlm's optimizer (muon: Muon on layer matrices; the PyTorch peer is AdamW, "
        "so it is skipped)",
    )
    p.add_argument(
        "--moe-experts", type=int, default=None, help="routed experts per layer (MoE; 0 dense)"
    )
    p.add_argument("--moe-top-k", type=int, default=None)
    p.add_argument("--moe-d-ff", type=int, default=None, help="expert width (default: d_ff)")
    p.add_argument("--moe-impl", choices=["ragged", "dense", "buckets"], default=None)
    p.add_argument("--moe-capacity-factor", type=float, default=None, help="0: dropless")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--torch-attn", default="sdpa", help="transformers attn_implementation")
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="also time torch.compile of the same transformers model (a second peer, "
        "reported separately; its compile falls in the warmup steps)",
    )
    p.add_argument("--peak-flops", type=float, default=0.0, help="override the peak FLOP/s")
    p.add_argument(
        "--find-max-batch",
        type=int,
        default=0,
        metavar="LIMIT",
        help="after the run, double the batch in child processes (2 steps each, no torch) "
        "until one fails or LIMIT is passed; reports the largest batch that trained",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument(
        "--trace",
        metavar="DIR",
        help="after the timed steps, record 3 more in a jax.profiler trace in DIR "
        "(TensorBoard / Perfetto: kernel times, fusions, host gaps)",
    )
    return p.parse_args(argv)


def _without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv minus `--flag VALUE` / `--flag=VALUE` for each of `flags`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not any(a.startswith(f + "=") for f in flags):
            out.append(a)
    return out


def find_max_batch(argv: list[str], batch: int, limit: int) -> dict:
    """Largest batch (doubling from `batch`) whose train step runs: each try is a child
    process, so an out-of-memory failure cannot poison the next try's allocator."""
    import subprocess

    base = [a for a in argv if a != "--no-torch"]
    tried, largest = [], None
    while batch <= limit:
        cmd = [sys.executable, __file__, *base, "--batch", str(batch), "--steps", "2",
               "--warmup", "1", "--no-torch", "--find-max-batch", "0"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        ok = done.returncode == 0
        tail = "" if ok else (done.stderr.strip().splitlines() or ["?"])[-1][:200]
        tried.append({"batch": batch, "ok": ok, "error": tail})
        print(f"  batch {batch:5d}: {'ok' if ok else 'failed: ' + tail}", flush=True)
        if not ok:
            break
        largest, batch = batch, batch * 2
    return {"largest_ok": largest, "tries": tried}


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The preset (or the reference shape), with any shape flags applied."""
    if args.preset:
        cfg = get_preset(args.preset)
    else:
        cfg = ModelConfig(
            vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=256
        )
    changes = {
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "d_ff": args.d_ff,
        "vocab_size": args.vocab,
        "moe_experts": args.moe_experts,
        "moe_top_k": args.moe_top_k,
        "moe_d_ff": args.moe_d_ff,
        "moe_impl": args.moe_impl,
        "moe_capacity_factor": args.moe_capacity_factor,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.n_heads is not None and args.n_kv_heads is None and not args.preset:
        changes["n_kv_heads"] = args.n_heads
    if args.untied:
        changes["tie_embeddings"] = False
    changes["max_seq_len"] = max(cfg.max_seq_len, args.seq)
    changes["compute_dtype"] = args.dtype
    changes["attention_impl"] = args.attention
    changes["remat"] = args.remat
    return dataclasses.replace(cfg, **changes)


def synthetic_batches(cfg: ModelConfig, batch: int, seq: int, seed: int, count: int = 4):
    """`count` batches of uniform random tokens in the batch schema (one document/row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        tokens = rng.integers(0, cfg.vocab_size, (batch, seq + 1), dtype=np.int32)
        out.append(
            {
                "tokens": tokens[:, :-1],
                "targets": tokens[:, 1:],
                "loss_mask": np.ones((batch, seq), np.int32),
                "segment_ids": np.ones((batch, seq), np.int32),
                "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            }
        )
    return out


TRACED_STEPS = 3  # steps recorded by --trace


def _timed(step_once, steps: int, warmup: int) -> tuple[float, list[float]]:
    """Run warmup + steps calls of `step_once` (which must block); median timed seconds."""
    for i in range(warmup):
        step_once(i)
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step_once(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_jax(cfg, ocfg, batches, steps, warmup, seed, trace: str | None = None) -> dict:
    total_steps = steps + warmup + (TRACED_STEPS if trace else 0)
    optimizer = make_optimizer(ocfg, total_steps)
    schedule = learning_rate_schedule(ocfg, total_steps)
    mesh = make_mesh((-1, 1, 1))  # data parallel over every local device
    t0 = time.perf_counter()
    state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(seed))
    graphdef, _ = abstract_model(cfg)
    step_fn = jit_train_step(make_lm_step(graphdef, optimizer, schedule), shardings, mesh)
    with jax.set_mesh(mesh):
        device_batches = [host_batch_to_global(b, mesh) for b in batches]
        holder = {"state": state, "loss": []}

        def step_once(i):
            holder["state"], metrics = step_fn(holder["state"], device_batches[i % len(batches)])
            jax.block_until_ready(metrics)
            holder["loss"].append(float(metrics["loss"]))

        first = time.perf_counter()
        step_once(0)
        compile_s = time.perf_counter() - first
        median, times = _timed(step_once, steps, max(warmup - 1, 0))
        if trace:  # after the timing, so the trace's overhead is not in the figures
            with jax.profiler.trace(trace):
                for i in range(TRACED_STEPS):
                    step_once(steps + warmup + i)
    return {
        "median_step_s": median,
        "step_times_s": times,
        "compile_and_first_step_s": compile_s,
        "setup_s": first - t0,
        "losses": holder["loss"],
        "peak_memory_bytes": _peak_memory_bytes(),
    }


def _peak_memory_bytes() -> int | None:
    """The most device memory held at once so far (GPU/TPU allocators report it; the
    CPU client does not, so None there)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_torch(cfg, ocfg, batches, steps, warmup, seed, attn_impl, compile=False) -> dict:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tcfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.resolved_d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    tcfg._attn_implementation = attn_impl
    rope = getattr(tcfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(tcfg, "rope_theta", None))
    if cfg.qk_norm:
        raise SystemExit("qk_norm has no LlamaForCausalLM equivalent; use --no-torch")
    assert theta == cfg.rope_theta, (theta, cfg.rope_theta)
    model = LlamaForCausalLM(tcfg).float().train()
    forward = torch.compile(model) if compile else model  # same parameters either way
    n_jax = matmul_params(cfg) + cfg.d_model * (2 * cfg.n_layers + 1)  # + norm scales
    n_jax += 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    n_torch = sum(p.numel() for p in model.parameters())
    assert n_torch == n_jax, f"torch model has {n_torch} params, jaxlm {n_jax}"

    # jaxlm's mask: decay matrices and embeddings, never norm scales (all 1-D here).
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": ocfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=ocfg.lr,
        betas=(ocfg.b1, ocfg.b2),
        eps=ocfg.eps,
    )
    schedule = learning_rate_schedule(ocfg, steps + warmup)
    lrs = [float(schedule(i)) for i in range(steps + warmup)]  # jaxlm's lr, step by step
    data = [
        (torch.from_numpy(b["tokens"]).long(), torch.from_numpy(b["targets"]).long())
        for b in batches
    ]
    autocast = cfg.compute_dtype == "bfloat16"
    losses = []

    def step_once(i):
        tokens, targets = data[i % len(data)]
        for group in opt.param_groups:
            group["lr"] = lrs[i]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = forward(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, cfg.vocab_size), targets.reshape(-1)
        )
        loss.backward()
        if ocfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    median, times = _timed(step_once, steps, warmup)
    return {
        "median_step_s": median,
        "step_times_s": times,
        "losses": losses,
        "threads": threads,
        "attn_implementation": attn_impl,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "compute": "bf16 autocast" if autocast else "fp32",
        "compiled": compile,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = model_config(args)
    ocfg = OptimConfig(optimizer=args.optimizer)
    tokens_per_step = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    fpt_halved = flops_per_token(cfg, args.seq, causal_halved=True)
    backend = jax.default_backend()
    device = jax.devices()[0]

    if args.peak_flops > 0:
        peak, peak_src = args.peak_flops * jax.device_count(), "--peak-flops"
    elif backend == "cpu":
        peak = measure_cpu_matmul_flops(n=2048)
        peak_src = "measured here: best fp32 2048^3 jnp matmul"
    else:
        per = device_peak_flops(device)
        peak = per * jax.device_count() if per else float("nan")
        peak_src = f"{device.device_kind} data-sheet dense bf16 peak x {jax.device_count()}"

    print(
        f"jax {jax.__version__} on {backend} ({device.device_kind}, {jax.device_count()} "
        f"device(s), {os.cpu_count()} CPU cores, {_cpu_model()})"
    )
    print(
        f"model: d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} "
        f"kv_heads={cfg.n_kv_heads} head_dim={cfg.resolved_head_dim} d_ff={cfg.resolved_d_ff} "
        f"vocab={cfg.vocab_size} tied={cfg.tie_embeddings} dtype={cfg.compute_dtype} "
        f"layers {'scanned' if scans_layers(cfg) else 'unrolled'} "
        f"(scan_layers={cfg.scan_layers})"
        + (
            f" moe: {cfg.moe_experts} experts top-{cfg.moe_top_k} of width "
            f"{cfg.resolved_moe_d_ff}, {cfg.moe_impl} (FLOPs from active params)"
            if cfg.moe
            else ""
        )
    )
    print(
        f"batch={args.batch} seq={args.seq} ({tokens_per_step} tokens/step), "
        f"{args.warmup} warmup + {args.steps} timed steps (median), "
        f"optimizer {args.optimizer}"
    )
    print(f"FLOPs: {fpt / 1e6:.2f} MFLOP/token; {FLOP_CONVENTION}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (JAXLM_CPU_TUNING=0 disables)")
    print(f"peak: {peak / 1e9:.1f} GFLOP/s ({peak_src})")

    batches = synthetic_batches(cfg, args.batch, args.seq, args.seed)
    results: dict = {
        "config": dataclasses.asdict(cfg),
        "layers_scanned": scans_layers(cfg),
        "batch": args.batch,
        "seq": args.seq,
        "flops_per_token": fpt,
        "flops_per_token_causal_halved": fpt_halved,
        "peak_flops": peak,
        "peak_source": peak_src,
        "jax_version": jax.__version__,
        "backend": backend,
        "device_kind": device.device_kind,
        "cpu": _cpu_model(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "optimizer": args.optimizer,
    }

    def report(name: str, r: dict) -> None:
        tps = tokens_per_step / r["median_step_s"]
        r["tokens_per_s"] = tps
        r["mfu"] = tps * fpt / peak
        r["mfu_causal_halved"] = tps * fpt_halved / peak
        print(
            f"{name:>8}: {r['median_step_s'] * 1e3:8.1f} ms/step  {tps:9.0f} tokens/s  "
            f"MFU {100 * r['mfu']:5.1f}% (causal-halved {100 * r['mfu_causal_halved']:.1f}%)  "
            f"(min {min(r['step_times_s']) * 1e3:.1f} ms, "
            f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f})"
        )

    jr = bench_jax(cfg, ocfg, batches, args.steps, args.warmup, args.seed, trace=args.trace)
    results["jax"] = jr
    print(f"   jax: compile + first step {jr['compile_and_first_step_s']:.1f} s")
    if jr["peak_memory_bytes"]:
        print(f"   jax: peak device memory {jr['peak_memory_bytes'] / 2**30:.2f} GiB")
    report("jax", jr)
    if args.find_max_batch:
        print(f"largest batch (doubling from {args.batch * 2}, up to {args.find_max_batch}):")
        flags = ("--batch", "--steps", "--warmup", "--json", "--find-max-batch")
        rest = _without_flags(list(argv if argv is not None else sys.argv[1:]), flags)
        results["max_batch"] = find_max_batch(
            rest,
            args.batch * 2,
            args.find_max_batch,
        )
        if results["max_batch"]["largest_ok"] is None:
            results["max_batch"]["largest_ok"] = args.batch  # the main run itself trained

    if not args.no_torch and cfg.moe:
        print("(no PyTorch peer for a mixture of experts: jax only)", flush=True)
    if not args.no_torch and args.optimizer != "adamw":
        print(f"(the PyTorch peer runs AdamW, not {args.optimizer}: jax only)", flush=True)
    if not args.no_torch and not cfg.moe and args.optimizer == "adamw":
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("torch/transformers not importable: install the 'bench' extra to compare")
        else:
            tr = bench_torch(
                cfg, ocfg, batches, args.steps, args.warmup, args.seed, args.torch_attn
            )
            results["torch"] = tr
            print(
                f" torch: torch {tr['torch']}, transformers {tr['transformers']}, "
                f"LlamaForCausalLM attn={tr['attn_implementation']}, {tr['compute']}, "
                f"{tr['threads']} threads"
            )
            report("torch", tr)
            ratio = jr["tokens_per_s"] / tr["tokens_per_s"]
            results["ratio_jax_over_torch"] = ratio
            print(f" ratio: jax/torch tokens/s = {ratio:.2f}")
            if args.torch_compile:
                tc = bench_torch(
                    cfg, ocfg, batches, args.steps, args.warmup, args.seed, args.torch_attn,
                    compile=True,
                )  # fmt: skip
                results["torch_compile"] = tc
                report("compiled", tc)
                ratio = jr["tokens_per_s"] / tc["tokens_per_s"]
                results["ratio_jax_over_torch_compile"] = ratio
                print(f" ratio: jax/torch.compile tokens/s = {ratio:.2f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
