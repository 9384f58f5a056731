"""Named model shapes.

`tiny` is for tests: small, with dimensions that differ from one another so a swapped
axis fails loudly. The others follow published shapes so parameter counts can be
checked against the numbers their authors report (see tests/test_presets.py).
"""

from __future__ import annotations

import difflib

from jaxlm.config import ConfigError, ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=320,
        d_model=48,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        d_ff=88,
        max_seq_len=64,
        tie_embeddings=False,
    ),
    # MiniMind2-small: d512, 8 layers, 8 query / 2 kv heads, vocab 6400, tied.
    "minimind-26m": ModelConfig(
        vocab_size=6400,
        d_model=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=2,
        max_seq_len=512,
        rope_theta=1e6,
        tie_embeddings=True,
    ),
    # MiniMind2-MoE: MiniMind's d640 shape with 4 routed experts (top-2) and 1 shared
    # expert in every layer, each of the dense MLP's width; sequence-wise balance loss
    # at MiniMind's weight 0.1.
    "minimind-moe-145m": ModelConfig(
        vocab_size=6400,
        d_model=640,
        n_layers=8,
        n_heads=8,
        n_kv_heads=2,
        max_seq_len=512,
        rope_theta=1e6,
        tie_embeddings=True,
        moe_experts=4,
        moe_top_k=2,
        moe_shared_experts=1,
        moe_balance_weight=0.1,
    ),
    # GPT-3 Small depth and width with Llama blocks and GPT-2's vocabulary padded to 64.
    "125m": ModelConfig(
        vocab_size=50304,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        d_ff=2048,
        max_seq_len=2048,
        tie_embeddings=True,
    ),
    # Llama-3.2-1B shape.
    "1b": ModelConfig(
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        max_seq_len=8192,
        rope_theta=500_000.0,
        tie_embeddings=True,
    ),
    # Llama-2-7B shape.
    "7b": ModelConfig(
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        d_ff=11008,
        max_seq_len=4096,
        norm_eps=1e-5,
        tie_embeddings=False,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`, or an error naming the closest one."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}' (have {sorted(PRESETS)}){hint}")
    return PRESETS[name]
