"""Model FLOPs per token and device peak FLOP/s, for MFU.

Convention (PaLM, appendix B): training FLOPs per token = 6 * N + 12 * L * T * d_model,
where N counts the non-embedding parameters including the output projection (a tied
output head counts once, as the matmul it is), L layers, T the sequence length and
d_model the width. The attention term is not halved for causal masking: that is the
number jaxlm logs (`flops` in metrics.jsonl, the loop's MFU). Causal attention only
needs the lower triangle of the scores, so some reports (MaxText, torchtitan) count
6 * L * T * d_model instead; `flops_per_token(..., causal_halved=True)` gives that
convention, which the benchmarks print next to the first. MFU is achieved model
FLOP/s over the peak of all devices. A mixture of experts counts its active
parameters (router, top-k and shared experts), not all of them.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig

# Dense bf16 peak per chip, FLOP/s, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a token's matmuls: all but the embedding lookup and
    norms. For a mixture of experts, the ACTIVE ones: the router, the top-k routed
    experts and the shared experts (the others hold parameters but do no work for the
    token), so MFU counts the FLOPs a token costs, as MoE reports do."""
    D, F, L = cfg.d_model, cfg.resolved_d_ff, cfg.n_layers
    H, N, K = cfg.resolved_head_dim, cfg.n_heads, cfg.n_kv_heads
    mlp = 3 * D * F * L
    if cfg.moe:
        experts = cfg.moe_top_k + cfg.moe_shared_experts
        routed = D * cfg.moe_experts + 3 * D * cfg.resolved_moe_d_ff * experts
        moe_layers = len(cfg.moe_layers)  # the rest keep the dense MLP
        mlp = moe_layers * routed + (L - moe_layers) * 3 * D * F
    attention = L * D * H * (2 * N + 2 * K)
    return attention + mlp + D * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int, *, causal_halved: bool = False) -> float:
    """Training FLOPs per token (forward + backward), see the module docstring."""
    attention = (6.0 if causal_halved else 12.0) * cfg.n_layers * seq_len * cfg.d_model
    return 6.0 * matmul_params(cfg) + attention


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """Data-sheet bf16 peak of a GPU/TPU device, or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 8) -> float:
    """Achieved fp32 FLOP/s of a large matmul on this CPU: a practical peak for MFU."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
