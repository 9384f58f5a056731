"""Model definitions: NNX modules declare parameters; the math is pure functions.

Nothing here knows about data, losses or training loops.
"""

from jaxlm.models.transformer import Transformer, count_params

__all__ = ["Transformer", "count_params"]
