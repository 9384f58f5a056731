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

The multipliers depend only on the static configuration, so they are computed once
in float64 and enter the traced computation as constants; the rotation itself runs
in float32 whatever the compute dtype.

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

ScalingMethod = Literal["none", "linear", "ntk", "yarn", "llama3"]
METHODS: tuple[str, ...] = ("none", "linear", "ntk", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How RoPE is scaled; hashable, so it can be a static argument of a jitted function.

    `factor` is s = new context / original context; `original_max_len` is the context
    the model was trained at before extension (only "yarn" and "llama3" read it; 0 =
    not given). "llama3" reads its band edges from beta_slow (low_freq_factor) and
    beta_fast (high_freq_factor).
    ModelConfig validates these with messages naming the config keys; the checks here
    only guard direct use.
    """

    method: ScalingMethod = "none"
    factor: float = 1.0
    original_max_len: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"RoPE scaling method {self.method!r} is not one of {METHODS}")
        if not self.factor >= 1.0:
            raise ValueError(f"RoPE scaling factor {self.factor} must be >= 1")
        banded = self.method in ("yarn", "llama3")
        if banded and self.original_max_len <= 0:
            raise ValueError(f"{self.method} needs original_max_len > 0")
        if banded and not 0 < self.beta_slow < self.beta_fast:
            raise ValueError(f"{self.method} needs 0 < beta_slow ({self.beta_slow}) < beta_fast")

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RopeScaling:
        """The scaling a ModelConfig asks for (its model.rope_* keys)."""
        if cfg.rope_scaling == "llama3":
            beta_fast, beta_slow = cfg.rope_llama3_high_freq_factor, cfg.rope_llama3_low_freq_factor
        else:
            beta_fast, beta_slow = cfg.rope_yarn_beta_fast, cfg.rope_yarn_beta_slow
        return cls(
            method=cfg.rope_scaling,
            factor=cfg.rope_scaling_factor,
            original_max_len=cfg.rope_original_max_len,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
        )

    @property
    def attention_factor(self) -> float:
        """What rotated q and k are multiplied by: YaRN's sqrt(1/t) = 0.1 ln(s) + 1; else 1."""
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
    """
    s = float(scaling.factor)
    half = head_dim // 2
    if scaling.method == "none":
        return np.ones(half)
    if scaling.method == "linear":
        return np.full(half, 1.0 / s)
    if scaling.method == "ntk":
        # theta'^(-2i/H) / theta^(-2i/H) with theta' = theta * s^(H/(H-2)).
        i = np.arange(half, dtype=np.float64)
        return s ** (-2.0 * i / (head_dim - 2))
    gamma = yarn_ramp(head_dim, theta, scaling)
    # (1 - gamma) / s + gamma, written so that s = 1 gives exactly 1.
    return 1.0 - (1.0 - gamma) * (1.0 - 1.0 / s)


def scaled_frequencies(head_dim: int, theta: float, scaling: RopeScaling = NO_SCALING) -> jax.Array:
    """The inverse frequencies apply_rope rotates by: m_i * theta^(-2i/H), float32."""
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

    With a scaling, the frequencies are `scaled_frequencies` and the result is
    multiplied by `scaling.attention_factor` (YaRN); queries and keys alike go
    through here, so a KV cache stores keys exactly as training computed them.
    """
    head_dim = x_BTNH.shape[-1]
    freqs = scaled_frequencies(head_dim, theta, scaling)
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * freqs
    sin = jnp.sin(angles_BTh)[:, :, None, :]
    cos = jnp.cos(angles_BTh)[:, :, None, :]
    x32 = x_BTNH.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    if scaling.attention_factor != 1.0:
        rotated = rotated * scaling.attention_factor
    return rotated.astype(x_BTNH.dtype)
