"""The model: a Llama-style decoder as NNX modules over pure functions.

    layers.py, attention.py, rope.py   the pieces; transformer.py puts them together
    lora.py          low-rank adapters; vocab_resize.py grows the embedding
    flops.py         model FLOPs per token and device peaks, for MFU

May import: jaxlm.config, jaxlm.sharding and jaxlm.errors only. Nothing here knows
about data, losses, checkpoints or training loops; everything else builds on it.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""

from jaxlm.models.transformer import Transformer, count_params

__all__ = ["Transformer", "count_params"]
