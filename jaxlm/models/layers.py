"""Small building blocks shared by the transformer: RMSNorm, projections, SwiGLU.

`project` is the one way a weight is applied to activations: the einsum, plus a
low-rank branch when the layer's weights hold one for that projection (LoRA adapters,
which jaxlm.models.lora adds to a param tree). Attention and the MLP both go through
it, so the forward pass has no separate adapted copy.

`dequantize` turns an int8 weight back into the compute dtype, for a model whose
weights jaxlm.inference.quantize stored as int8 with float32 scales beside them
(inference only: training never sees one, and its forward pass is unchanged).

Dimension legend: B batch, T sequence, M = B * T tokens, D model width, F feed-forward
width, r low-rank width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig

# A weight W named `name` may have two low-rank factors beside it in the same layer:
# name + LOW_RANK_A [*I, r] and name + LOW_RANK_B [r, *O] (I, O: W's input and output
# dims). The names are those of the saved LoRA checkpoints, so they must not change.
LOW_RANK_A, LOW_RANK_B = "_lora_a", "_lora_b"
RANK_LETTER = "r"  # the rank's einsum letter; model letters are upper case

# A weight stored as int8 has its float32 scales beside it as name + QUANT_SCALE, one
# per output channel (jaxlm.inference.quantize): shaped like W's output dims, so they
# broadcast against W, whose output dims come last.
QUANT_SCALE = "_scale"


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32 (bf16 variance is too coarse), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


def dequantize(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
    """int8 `q` times its float32 `scale` (broadcast against q), in `dtype`.

    The product is formed in float32 and rounded once: every int8 value is exact in
    bfloat16, but the scale is not.
    """
    return (q.astype(jnp.float32) * scale).astype(dtype)


def low_rank_scale(cfg: ModelConfig) -> float:
    """alpha / r: the low-rank branch's multiplier (keeps lr meaningful across ranks)."""
    return cfg.lora_alpha / cfg.lora_rank


def _branch_specs(spec: str) -> tuple[str, str]:
    """Einsum specs of x @ A and (x @ A) @ B for a projection spec like "BTD,DNH->BTNH".

    W's letters are its input letters (contracted: absent from the output) followed by
    its output letters, which is how every projection weight is laid out.
    """
    inputs, out = spec.split("->")
    x, w = inputs.split(",")
    w_in = "".join(c for c in w if c not in out)
    w_out = w[len(w_in) :]
    assert w == w_in + w_out, spec
    x_rest = "".join(c for c in x if c not in w_in)
    return (
        f"{x},{w_in}{RANK_LETTER}->{x_rest}{RANK_LETTER}",
        f"{x_rest}{RANK_LETTER},{RANK_LETTER}{w_out}->{out}",
    )


def project(
    cfg: ModelConfig, w: dict[str, jax.Array], spec: str, x: jax.Array, name: str
) -> jax.Array:
    """`einsum(spec, x, w[name])`, plus the low-rank branch when `w` holds one for `name`.

    `w` holds one layer's weights in the compute dtype. The branch is computed unmerged,
    y = x @ W + scale * ((x @ A) @ B), which trains far cheaper than a merged weight
    (jaxlm.models.lora explains why), and it is added last, so with B = 0 the result
    is the plain projection bit for bit.
    """
    y = jnp.einsum(spec, x, w[name])
    if name + LOW_RANK_A not in w:
        return y
    spec_a, spec_b = _branch_specs(spec)
    # Scaled here, where the activation is r wide rather than O wide.
    xa = low_rank_scale(cfg) * jnp.einsum(spec_a, x, w[name + LOW_RANK_A])
    return y + jnp.einsum(spec_b, xa, w[name + LOW_RANK_B])


def swiglu(cfg: ModelConfig, w: dict[str, jax.Array], x_BTD: jax.Array) -> jax.Array:
    """Llama feed-forward: down(silu(x @ gate) * (x @ up)), from w_gate, w_up, w_down.

    Works on the tokens flattened to one axis, M = B * T (a free reshape; any leading
    shape is accepted and restored). Same math, but XLA:CPU then fuses silu * up over
    a 2-D [M, F] array: in 3-D, between the 2-D dots, its fusion ran ~4x slower and the
    whole MLP forward took 20 ms instead of 10.5 ms (B*T=4096, D=256, F=704).
    """
    x_MD = x_BTD.reshape(-1, x_BTD.shape[-1])
    gate_MF = project(cfg, w, "MD,DF->MF", x_MD, "w_gate")
    up_MF = project(cfg, w, "MD,DF->MF", x_MD, "w_up")
    out_MD = project(cfg, w, "MF,FD->MD", jax.nn.silu(gate_MF) * up_MF, "w_down")
    return out_MD.reshape(*x_BTD.shape[:-1], out_MD.shape[-1])
