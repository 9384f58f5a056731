"""Stdlib pretraining at a few model sizes, same data and schedule, to compare by eye.

The d256 stdlib recipe (experiments/_stdlib_lm.py: the embedded stdlib corpus, a
4096-piece tokenizer, 256-token rows, 750 steps of 16 rows) at three widths/depths,
so the effect of size alone shows in `jaxlm compare`:

    jaxlm sweep stdlib_sizes                           # s (0.43M), m (3.2M), l (10.6M)
    jaxlm compare runs/stdlib_sizes-sweep/*/ --out runs/stdlib_sizes-compare
    jaxlm train stdlib_sizes --set model.d_model=384   # or any single size by hand

Sizes are non-embedding parameters; m is that recipe's model.
"""

import dataclasses

from experiments._stdlib_lm import get_config as stdlib_lm_config
from jaxlm.config import Config, apply_overrides

SIZES = {
    # name: (d_model, n_layers, n_heads); kv heads = heads, d_ff by jaxlm's rule
    "s": (128, 2, 2),
    "m": (256, 4, 4),
    "l": (384, 6, 6),
}


def get_config() -> Config:
    """The d256 stdlib recipe (its m size), checkpointed, without the end-of-run sample."""
    cfg = dataclasses.replace(stdlib_lm_config(), name="stdlib_sizes")
    return apply_overrides(cfg, ["train.checkpoint_every=250", "train.generate_prompt="])


def sweep() -> list[tuple[str, list[str]]]:
    return [
        (name, [f"model.d_model={d}", f"model.n_layers={n}", f"model.n_heads={h}",
                f"model.n_kv_heads={h}"])
        for name, (d, n, h) in SIZES.items()
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
