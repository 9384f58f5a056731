"""Model definitions: NNX modules declare parameters; the math is pure functions.

    layers.py       RMSNorm, `project` (einsum + optional low-rank branch), SwiGLU
    attention.py    segment-aware causal attention
    rope.py         rotary embeddings and their context-extension scalings
    transformer.py  the Llama-family decoder
    lora.py         LoRA adapters on a param tree: declare, split, merge
    params.py       build a model; abstract shapes, initial values, shardings, counts
    vocab_resize.py grow a trained model's vocabulary
    flops.py        FLOPs per token, for MFU

Nothing here knows about data, losses, checkpoints or training loops: this package
imports only jaxlm.config, jaxlm.sharding and jaxlm.errors from the rest of jaxlm.
"""

from jaxlm.models.params import build_model, count_params
from jaxlm.models.transformer import Transformer

__all__ = ["Transformer", "build_model", "count_params"]
