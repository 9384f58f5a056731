"""jaxlm: train language models end to end in JAX.

corpus -> SentencePiece tokenizer -> Grain packed batches -> pure, jit-sharded train
steps -> Orbax checkpoints -> generation and evaluation. See README.md, and
ARCHITECTURE.md for the packages and who may import whom.

The root holds what every package shares: errors, config (with source_spec, the
grammar of its data sources), presets and sharding; cli is the `jaxlm` command.
"""

__version__ = "0.1.0"
