"""The model: a Llama-style decoder as NNX modules over pure functions.

    layers.py       RMSNorm, `project` (einsum + optional low-rank branch), SwiGLU
    attention.py    segment-aware causal attention
    rope.py         rotary embeddings and their context-extension scalings
    moe.py          mixture of experts: routing, dropless/capacity experts, balancing
    transformer.py  the Llama-family decoder (dense or MoE MLPs)
    lora.py         LoRA adapters on a param tree: declare, split, merge
    params.py       build a model; abstract shapes, initial values, shardings, counts
    vocab_resize.py grow a trained model's vocabulary
    flops.py        FLOPs per token, for MFU

May import: jaxlm.config, jaxlm.sharding and jaxlm.errors only. Nothing here knows
about data, losses, checkpoints or training loops; everything else builds on it. The
rule is enforced by tests/test_layering.py (ALLOWED there).
"""

from jaxlm.models.params import build_model, count_params
from jaxlm.models.transformer import Transformer

__all__ = ["Transformer", "build_model", "count_params"]
