"""SFT alone: the chain's second stage, on files you prepared, from a pretrained export.

    jaxlm data posttrain data/posttrain                        # the embedded SFT set
    jaxlm export runs/chain/pretrain exports/base              # or any base export
    jaxlm train sft --workdir runs/sft                         # paths below, or --set:
    jaxlm train sft --set data.sources=jsonl:my_sft.jsonl --set train.init_from=exports/x

Chat records (`{"conversations": [...]}` as in MiniMind's sft_*.jsonl, or
`{"messages": [...]}`); only assistant tokens carry loss. `train.eval_at_start` puts
the starting model's held-out assistant-token loss at step 0, so the gain is in
metrics.jsonl. LoRA: `--set model.lora_rank=16`.
"""

from experiments._chain_configs import sft_config
from jaxlm.config import Config

DATA = "data/posttrain"
INIT_FROM = "exports/base"


def get_config() -> Config:
    return sft_config(DATA, INIT_FROM)


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
