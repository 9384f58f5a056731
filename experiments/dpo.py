"""DPO alone: the chain's third stage, preference pairs on top of an SFT export.

    jaxlm data posttrain data/posttrain                        # the embedded pairs
    jaxlm export runs/sft exports/sft
    jaxlm train dpo --workdir runs/dpo
    jaxlm train dpo --set preference.loss=simpo --set preference.simpo_gamma=0.5
    jaxlm train dpo --set preference.reference=precomputed     # half the compute

Pairs are `{"chosen": [...], "rejected": [...]}` (MiniMind's dpo.jsonl) or `{"prompt",
"chosen", "rejected"}`. The step-0 evaluation scores the starting (SFT) model on the
held-out pairs, the last one the trained policy: `accuracy` by implied reward,
`logp_accuracy` by mean per-token log-prob. lr 5e-5 and beta 0.1 are what the chain
measured best of the two it tried (README, post-training).
"""

from experiments._chain_configs import dpo_config
from jaxlm.config import Config

DATA = "data/posttrain"
INIT_FROM = "exports/sft"


def get_config() -> Config:
    return dpo_config(DATA, INIT_FROM)


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
