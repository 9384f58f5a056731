"""RoPE scalings computed as Hugging Face transformers computes them, for imported checkpoints.

transformers (modeling_rope_utils.py), vLLM and the YaRN authors' code define two
scalings differently from the formulas jaxlm's own methods follow (jaxlm.models.rope),
and a checkpoint trained with theirs only reproduces its logits with theirs:

- "yarn_hf" (transformers rope_type "yarn"): YaRN's ramp runs linearly over the pair
  index i, not over the rotation count r_i = L / lambda_i as the paper's text has it.
  The band edges are the (fractional) pair indices where r_i = beta_fast and
  r_i = beta_slow, i(r) = H ln(L / (2 pi r)) / (2 ln theta), floored and ceiled to
  whole pairs when `truncate` (transformers' default; False reproduces checkpoints
  such as gpt-oss that ask for the exact edges), clipped to [0, H - 1] (H, not H/2:
  transformers' bound, kept). gamma_i = 1 - clip((i - low) / (high - low), 0, 1) and
  f'_i = f_i / s * (1 - gamma_i) + f_i * gamma_i, in float32 in transformers' order
  of operations. The cos and sin tables are multiplied by the attention factor:
  `attention_factor` when given, else mscale(s, mscale) / mscale(s, mscale_all_dim)
  when both are given and non-zero (DeepSeek's variant), else 0.1 ln(s) + 1, with
  mscale(s, m) = 0.1 m ln(s) + 1 (1 for s <= 1).
- "dynamic_ntk" (transformers rope_type "dynamic"): NTK-aware scaling whose base grows
  with the current sequence length T = (largest position in the call) + 1 once it
  exceeds the original length L (transformers' max_position_embeddings):
  theta' = theta * (s T / L - (s - 1))^(H / (H - 2)); at T <= L plain RoPE. The length
  is a traced value, so one compilation serves every length, and it is the maximum
  over the whole batch, as transformers takes torch.max over position_ids.

Precision. Both follow transformers' arithmetic: band edges and attention factors in
float64 (Python floats), tables in float32 in its order of operations, the dynamic
base from float32 tensors. The yarn_hf table is computed on the host (numpy) and
equals transformers' within 2 float32 ulps (torch's pow is not always correctly
rounded); the dynamic table is computed on device from the traced length and
equals transformers' within 3 ulps (`_rational_power`; XLA's plain float32 pow would
be 10 ulps off). Sines and cosines are XLA's, not torch's: rotations agree to
float32 rounding of the angle, not bit for bit.

What dynamic_ntk does not reproduce. Within one call, and through a generation with
a KV cache, jaxlm computes what transformers computes: cached keys keep the base
they were rotated with and each decode step uses the base of the length so far, as
in transformers' generate (a full forward over the same tokens then differs from the
cached run; that is dynamic NTK itself). jaxlm's decoder gives prompt padding
position 0, so the prefill's length is the longest real prompt, as transformers'
(left-padded) generate sees it. But transformers keeps state across calls: a grown
table stays until a call of length < L resets it, so a call of length L < T2 after
a longer call of length T1 > T2 rotates with T1's base in transformers and with
T2's in jaxlm (which is what a fresh transformers model computes). Training with
packed documents reads T from the longest document in the batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_F32 = np.float32


def yarn_hf_band(
    head_dim: int,
    theta: float,
    original_max_len: int,
    beta_fast: float,
    beta_slow: float,
    truncate: bool,
) -> tuple[float, float]:
    """(low, high): the pair indices where transformers' YaRN ramp starts and ends."""

    def pair_index(rotations: float) -> float:
        # The pair that turns `rotations` times over the original context.
        return (head_dim * math.log(original_max_len / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_hf_frequencies(
    head_dim: int,
    theta: float,
    factor: float,
    original_max_len: int,
    beta_fast: float,
    beta_slow: float,
    truncate: bool,
) -> np.ndarray:
    """transformers' YaRN inverse frequencies [H/2], float32, in its order of operations."""
    low, high = yarn_hf_band(head_dim, theta, original_max_len, beta_fast, beta_slow, truncate)
    return yarn_hf_blend(rotation_speeds(head_dim, theta), factor, low, high)


def rotation_speeds(head_dim: int, theta: float) -> np.ndarray:
    """theta ** (2i / H) for float32 theta and exponent, correctly rounded to float32.

    transformers computes it with torch's float32 pow, and numpy's is no better: both
    are vectorised approximations whose last bit depends on the CPU's instruction set
    (seen: 1 ulp apart on one machine, equal on another). Computed in float64 and
    rounded once, it is the exact value, within 1 ulp of either."""
    exponents = np.arange(0, head_dim, 2).astype(_F32) / _F32(head_dim)
    return (np.float64(_F32(theta)) ** exponents.astype(np.float64)).astype(_F32)


def yarn_hf_blend(pos_freqs: np.ndarray, factor: float, low: float, high: float) -> np.ndarray:
    """transformers' YaRN blend of the interpolated and extrapolated frequencies, float32
    operation for operation: given its `pos_freqs`, bit for bit its result."""
    extrapolation = _F32(1.0) / pos_freqs
    interpolation = _F32(1.0) / (_F32(factor) * pos_freqs)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = (np.arange(pos_freqs.size, dtype=_F32) - _F32(low)) / _F32(high - low)
    extrapolation_share = _F32(1.0) - np.clip(ramp, _F32(0.0), _F32(1.0))
    inv_freq = (
        interpolation * (_F32(1.0) - extrapolation_share) + extrapolation * extrapolation_share
    )
    return inv_freq.astype(_F32)


def _mscale(factor: float, mscale: float = 1.0) -> float:
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def yarn_hf_attention_factor(
    factor: float, attention_factor: float, mscale: float, mscale_all_dim: float
) -> float:
    """What cos and sin are multiplied by; 0 means not given, as transformers' None."""
    if attention_factor:
        return attention_factor
    if mscale and mscale_all_dim:
        return _mscale(factor, mscale) / _mscale(factor, mscale_all_dim)
    return _mscale(factor)


def _rational_power(
    x: jax.Array, numerators: np.ndarray, denominator: int, *, float32_exponent: bool
) -> jax.Array:
    """x ** (n / denominator) for each n, for a positive float32 scalar x, to about 1 ulp.

    float32 `x ** y` is exp(y ln x) with about |y ln x| ulps of error once jitted (10
    for a base near 1e4), where torch's pow is nearly correctly rounded. Splitting
    x = m 2^k with m near 1 keeps each term of the exponent small: with k n = q d + r
    in integers, x^y = 2^q exp(r ln2 / d + k delta ln2 + y ln m). `float32_exponent`:
    y is n/d rounded to float32 (torch's tensor exponent; delta = that rounding, a
    host constant); else y is n/d exactly (torch's Python-float exponent, delta = 0).
    """
    m, k = jnp.frexp(x)  # x = m 2^k, m in [0.5, 1); move m to [sqrt(1/2), sqrt(2))
    low = m < np.float32(math.sqrt(0.5))
    m, k = jnp.where(low, m * 2, m), jnp.where(low, k - 1, k).astype(jnp.int32)
    exponents = numerators.astype(_F32) / _F32(denominator)
    delta = exponents.astype(np.float64) - numerators / denominator
    if not float32_exponent:
        delta = np.zeros_like(delta)
    t = k * jnp.asarray(numerators, jnp.int32)
    q = jnp.floor_divide(t, denominator)
    r = t - q * denominator
    argument = (
        r.astype(jnp.float32) * _F32(math.log(2) / denominator)
        + k.astype(jnp.float32) * jnp.asarray(delta * math.log(2), jnp.float32)
        + jnp.asarray(exponents) * jnp.log(m)
    )
    return jnp.ldexp(jnp.exp(argument), q)


def dynamic_ntk_frequencies(
    head_dim: int, theta: float, factor: float, original_max_len: int, length: jax.Array
) -> jax.Array:
    """Inverse frequencies [H/2] for a call whose sequence length is `length` (traced)."""
    pair_numerators = np.arange(0, head_dim, 2)
    # At or below L: transformers' initial table, from a base computed in float64 on the
    # host, then float32 like the yarn_hf table.
    power = head_dim / (head_dim - 2)
    initial_base = theta * ((factor * original_max_len / original_max_len) - (factor - 1)) ** power
    exponents = pair_numerators.astype(_F32) / _F32(head_dim)
    initial = _F32(1.0) / (_F32(initial_base) ** exponents)
    # Above L: the grown base, float32 throughout as transformers computes it from a tensor.
    seq = jnp.maximum(length, original_max_len).astype(jnp.float32)
    stretch = jnp.float32(factor) * seq / jnp.float32(original_max_len) - jnp.float32(factor - 1)
    power_of_stretch = _rational_power(
        stretch, np.array([head_dim]), head_dim - 2, float32_exponent=False
    )[0]
    grown_base = jnp.float32(theta) * power_of_stretch
    grown = 1.0 / _rational_power(grown_base, pair_numerators, head_dim, float32_exponent=True)
    return jnp.where(length > original_max_len, grown, jnp.asarray(initial))
