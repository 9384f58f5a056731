"""jaxlm: train language models end to end in JAX.

corpus -> SentencePiece tokenizer -> Grain packed batches -> pure, jit-sharded train
steps -> Orbax checkpoints -> generation and evaluation. See README.md.
"""

__version__ = "0.1.0"
