"""Which sources a run trains on and which it holds out: decided here, and only here.

With `data.eval_sources` empty, each source's documents (or jsonl lines) are split by
a stable hash into training (1 - data.val_fraction) and held-out ("validation"),
jaxlm.data.sources.split; otherwise training reads all of `data.sources` and
evaluation all of `data.eval_sources`. Pretraining, chat and preference pipelines,
and `jaxlm eval` on a run's own held-out data, all ask these two functions.
"""

from __future__ import annotations

import dataclasses

from jaxlm.config import Config


@dataclasses.dataclass(frozen=True)
class Split:
    specs: str  # source specs, jaxlm.source_spec syntax
    key: str  # the config key they come from, for messages
    split: str  # "all", "train" or "validation" of each source


def training_split(cfg: Config) -> Split:
    return Split(cfg.data.sources, "data.sources", "all" if cfg.data.eval_sources else "train")


def held_out_split(cfg: Config) -> Split:
    if cfg.data.eval_sources:
        return Split(cfg.data.eval_sources, "data.eval_sources", "all")
    return Split(cfg.data.sources, "data.sources", "validation")
