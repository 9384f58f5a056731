"""Rotary position embeddings (RoPE), half-split layout as in Llama checkpoints, with
the scalings that extend a trained model's context.

Positions come from the batch (they reset at each packed document), so the same code
serves packed training, unpacked evaluation and cached decoding.

RoPE (Su et al. 2021) rotates the pair (x[i], x[i + H/2]) of every query and key head
by the angle p * f_i, with p the token's position and f_i = theta^(-2i/H) the
inverse frequency of pair i in [0, H/2). Pair i turns once every wavelength
lambda_i = 2 pi / f_i positions: i = 0 turns once every 2 pi positions, the last
pairs take far longer than the training context to turn at all. At positions past
the training context the slow pairs reach angles never seen in training, and loss
climbs. Each scaling below replaces f_i by m_i * f_i with a per-pair multiplier
m_i <= 1, for a scale factor s = new context / original context (s >= 1; s = 1
gives m_i = 1, plain RoPE, for every method):

- "linear", position interpolation (Chen et al. 2023, "Extending Context Window of
  Large Language Models via Positional Interpolation"): m_i = 1 / s, i.e. position p
  is rotated as plain RoPE rotates p / s. Every position of the longer context maps
  into the trained range, at the price of squeezing the fast pairs too: neighbouring
  tokens become harder to tell apart, which a short fine-tune mostly repairs.
- "ntk", NTK-aware scaling (bloc97 2023): a larger base
  theta' = theta * s^(H / (H - 2)), so f'_i = theta'^(-2i/H) and
  m_i = s^(-2i / (H - 2)). The fastest pair (i = 0) is unchanged (extrapolated), the
  slowest (i = H/2 - 1) is interpolated by exactly 1/s, and the pairs between by a
  geometric blend. Works without any fine-tuning for moderate s.
- "yarn" (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large
  Language Models"): with L the original context length (model.rope_original_max_len),
  pair i turns r_i = L / lambda_i times over the original context. A ramp
  gamma_i = clip((r_i - beta_slow) / (beta_fast - beta_slow), 0, 1) (defaults
  beta_fast = 32, beta_slow = 1) picks, per pair, between interpolation and
  extrapolation: m_i = (1 - gamma_i) / s + gamma_i. Pairs that turn more than
  beta_fast times within L are left alone, pairs that turn less than beta_slow times
  are interpolated like "linear", the ones between are blended. YaRN also sharpens
  attention, whose entropy grows with the longer context: the logits are divided by a
  temperature t with sqrt(1/t) = 0.1 ln(s) + 1, applied by multiplying both the
  rotated queries and keys by sqrt(1/t) (`attention_factor`).
- "llama3" (the Llama 3.1 release): YaRN's ramp measured in the same rotation counts
  r_i = L / lambda_i, with beta_slow = low_freq_factor (default 1) and beta_fast =
  high_freq_factor (default 4): pairs with a wavelength shorter than L / high_freq
  keep their frequency, longer than L / low_freq are interpolated by 1/s, the band
  between is blended linearly in r_i. No attention temperature. This is exactly
  what Hugging Face's "llama3" rope type computes, so imported Llama 3.x checkpoints
  reproduce their logits.
- "yarn_hf" and "dynamic_ntk": YaRN and dynamic NTK exactly as transformers computes
  them (rope types "yarn" and "dynamic"), for imported checkpoints; formulas and what
  is exact in jaxlm.models.rope_hf. transformers' YaRN ramps linearly in the pair
  index with band edges rounded to whole pairs, so its frequencies differ from "yarn"
  above; dynamic NTK's base depends on the length of each call.

The multipliers of every method but dynamic_ntk depend only on the static
configuration, so they are computed once on the host (in float64; yarn_hf in float32,
as transformers does) and enter the traced computation as constants; dynamic_ntk's
depend on the traced length of the call. The rotation itself runs in float32
whatever the compute dtype.

Dimension legend: B batch, T sequence, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.models.rope_hf import (
    dynamic_ntk_frequencies,
    yarn_hf_attention_factor,
    yarn_hf_frequencies,
)

ScalingMethod = Literal["none", "linear", "ntk", "yarn", "llama3", "yarn_hf", "dynamic_ntk"]
METHODS: tuple[str, ...] = ("none", "linear", "ntk", "yarn", "llama3", "yarn_hf", "dynamic_ntk")
# Methods that read original_max_len (> 0 required); those that read beta_fast/slow.
_NEED_ORIGINAL = ("yarn", "llama3", "yarn_hf", "dynamic_ntk")
_BANDED = ("yarn", "llama3", "yarn_hf")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How RoPE is scaled; hashable, so it can be a static argument of a jitted function.

    `factor` is s = new context / original context; `original_max_len` is the context
    the model was trained at before extension (read by yarn, llama3, yarn_hf and
    dynamic_ntk; 0 = not given). "llama3" reads its band edges from beta_slow
    (low_freq_factor) and beta_fast (high_freq_factor). Only "yarn_hf" reads
    `truncate`, `fixed_attention_factor` (0 = derive it), `mscale` and
    `mscale_all_dim` (0 = not given), transformers' YaRN options.
    ModelConfig validates these with messages naming the config keys; the checks here
    only guard direct use.
    """

    method: ScalingMethod = "none"
    factor: float = 1.0
    original_max_len: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    fixed_attention_factor: float = 0.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"RoPE scaling method {self.method!r} is not one of {METHODS}")
        if not self.factor >= 1.0:
            raise ValueError(f"RoPE scaling factor {self.factor} must be >= 1")
        if self.method in _NEED_ORIGINAL and self.original_max_len <= 0:
            raise ValueError(f"{self.method} needs original_max_len > 0")
        if self.method in _BANDED and not 0 < self.beta_slow < self.beta_fast:
            raise ValueError(f"{self.method} needs 0 < beta_slow ({self.beta_slow}) < beta_fast")

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RopeScaling:
        """The scaling a ModelConfig asks for (its model.rope_* keys)."""
        if cfg.rope_scaling == "llama3":
            beta_fast, beta_slow = cfg.rope_llama3_high_freq_factor, cfg.rope_llama3_low_freq_factor
        else:
            beta_fast, beta_slow = cfg.rope_yarn_beta_fast, cfg.rope_yarn_beta_slow
        hf_yarn_options = {}
        if cfg.rope_scaling == "yarn_hf":
            hf_yarn_options = dict(
                truncate=cfg.rope_yarn_truncate,
                fixed_attention_factor=cfg.rope_yarn_attention_factor,
                mscale=cfg.rope_yarn_mscale,
                mscale_all_dim=cfg.rope_yarn_mscale_all_dim,
            )
        return cls(
            method=cfg.rope_scaling,
            factor=cfg.rope_scaling_factor,
            original_max_len=cfg.rope_original_max_len,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            **hf_yarn_options,
        )

    @property
    def attention_factor(self) -> float:
        """What rotated q and k are multiplied by: YaRN's sqrt(1/t) = 0.1 ln(s) + 1
        (yarn_hf: transformers' rule, see rope_hf); else 1."""
        if self.method == "yarn_hf":
            return yarn_hf_attention_factor(
                self.factor, self.fixed_attention_factor, self.mscale, self.mscale_all_dim
            )
        if self.method != "yarn":
            return 1.0
        return 0.1 * math.log(self.factor) + 1.0


NO_SCALING = RopeScaling()


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies theta^(-2i/H) for i in [0, H/2)."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def yarn_ramp(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """YaRN's (and llama3's) gamma_i in [0, 1] per pair: 1 extrapolates (plain RoPE), 0
    interpolates."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = theta ** (-2.0 * i / head_dim)
    rotations = scaling.original_max_len * inv_freq / (2.0 * np.pi)  # r_i = L / lambda_i
    ramp = (rotations - scaling.beta_slow) / (scaling.beta_fast - scaling.beta_slow)
    return np.clip(ramp, 0.0, 1.0)


def frequency_multipliers(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """m_i such that the scaled inverse frequency of pair i is m_i * theta^(-2i/H).

    float64; exactly 1 for every pair when the factor is 1 (see the module docstring).
    dynamic_ntk: those at or below the original length (plain RoPE); yarn_hf: the ratio
    of its float32 table to plain RoPE's.
    """
    s = float(scaling.factor)
    half = head_dim // 2
    if scaling.method in ("none", "dynamic_ntk"):
        return np.ones(half)
    if scaling.method == "yarn_hf":
        return _yarn_hf_table(head_dim, theta, scaling).astype(np.float64) / (
            theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        )
    if scaling.method == "linear":
        return np.full(half, 1.0 / s)
    if scaling.method == "ntk":
        # theta'^(-2i/H) / theta^(-2i/H) with theta' = theta * s^(H/(H-2)).
        i = np.arange(half, dtype=np.float64)
        return s ** (-2.0 * i / (head_dim - 2))
    gamma = yarn_ramp(head_dim, theta, scaling)
    # (1 - gamma) / s + gamma, written so that s = 1 gives exactly 1.
    return 1.0 - (1.0 - gamma) * (1.0 - 1.0 / s)


def _yarn_hf_table(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    return yarn_hf_frequencies(
        head_dim,
        theta,
        scaling.factor,
        scaling.original_max_len,
        scaling.beta_fast,
        scaling.beta_slow,
        scaling.truncate,
    )


def scaled_frequencies(head_dim: int, theta: float, scaling: RopeScaling = NO_SCALING) -> jax.Array:
    """The inverse frequencies apply_rope rotates by: m_i * theta^(-2i/H), float32.

    yarn_hf: transformers' float32 table itself; dynamic_ntk: the table at or below the
    original length (apply_rope computes the grown one from the positions).
    """
    if scaling.method == "yarn_hf":
        return jnp.asarray(_yarn_hf_table(head_dim, theta, scaling))
    if scaling.method == "dynamic_ntk":
        return dynamic_ntk_frequencies(
            head_dim, theta, scaling.factor, scaling.original_max_len, jnp.int32(0)
        )
    freqs = rope_frequencies(head_dim, theta)
    if scaling.method == "none":
        return freqs
    multipliers = frequency_multipliers(head_dim, theta, scaling)
    return freqs * jnp.asarray(multipliers, dtype=jnp.float32)


def apply_rope(
    x_BTNH: jax.Array,
    positions_BT: jax.Array,
    theta: float,
    scaling: RopeScaling = NO_SCALING,
) -> jax.Array:
    """Rotate pairs (x[i], x[i + H/2]) by position * frequency[i], in float32.

    With a scaling, the frequencies are `scaled_frequencies` and cos and sin are
    multiplied by `scaling.attention_factor` (YaRN), as transformers does; queries and
    keys alike go through here, so a KV cache stores keys exactly as training computed
    them. dynamic_ntk's frequencies depend on the call's length, the largest position
    in `positions_BT` + 1 (over the whole batch, as transformers): callers give padding
    a position no larger than the real tokens' (packing and the decoder use 0).
    """
    head_dim = x_BTNH.shape[-1]
    if scaling.method == "dynamic_ntk":
        length = jnp.max(positions_BT) + 1
        freqs = dynamic_ntk_frequencies(
            head_dim, theta, scaling.factor, scaling.original_max_len, length
        )
    else:
        freqs = scaled_frequencies(head_dim, theta, scaling)
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * freqs
    sin = _computed_once(jnp.sin(angles_BTh))[:, :, None, :]
    cos = _computed_once(jnp.cos(angles_BTh))[:, :, None, :]
    if scaling.attention_factor != 1.0:
        sin, cos = sin * scaling.attention_factor, cos * scaling.attention_factor
    x32 = x_BTNH.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x_BTNH.dtype)


def _computed_once(table_BTh: jax.Array) -> jax.Array:
    """`table_BTh`, unchanged, computed once per step on the CPU backend.

    XLA:CPU counts sin and cos as cheap and recomputes them inside every fusion that
    reads them: once per element of the [B, T, heads, H] queries and keys (the table
    broadcast over heads, both halves), in the forward and again in each gradient
    fusion, 24 such fusions in the reference train step at ~2 ms each. A reduction is
    never recomputed inside a consumer that reads its elements more than once, so the
    table goes through one: the sum of itself and zero, which is exact (x + 0 = x), so
    the values and the losses stay bit for bit the same. XLA then computes one sin
    and one cos table per step, shared by every layer. Measured in the train step
    (old and new compiled in one process, steps interleaved; 2-core AMD EPYC Zen 4):
    reference shape 918 -> 877 ms, minimind-26m 3964 -> 3843 ms, quickstart shape
    216 -> 210 ms, identical losses. Other backends keep the plain expression.
    """
    if jax.default_backend() != "cpu":
        return table_BTh
    return jnp.stack([table_BTh, jnp.zeros_like(table_BTh)], axis=-1).sum(axis=-1)
