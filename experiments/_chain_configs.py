"""The configs of the post-training chain's stages, shared by its experiments.

experiments/posttrain_chain.py runs all three; experiments/sft.py and
experiments/dpo.py are one stage each. Not an experiment itself (the leading
underscore keeps it out of `jaxlm train NAME`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.config import Config, apply_overrides


def pretrain_config(steps: int) -> Config:
    from experiments._stdlib_lm import get_config

    cfg = get_config()
    cfg = dataclasses.replace(cfg, name="chain_pretrain")
    return apply_overrides(
        cfg,
        [
            "model.max_seq_len=512",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            "train.generate_prompt=",
            "train.progress_bar=false",
        ],
    )


def post_config(pretrain: Config, name: str, overrides: list[str]) -> Config:
    """A post-training stage: the pretrained model's shapes, new data and optimiser."""
    cfg = dataclasses.replace(pretrain, name=name)
    return apply_overrides(
        cfg,
        [
            "data.seq_len=512",
            "data.batch_size=16",
            "optim.warmup_steps=20",
            "optim.schedule=cosine",
            "train.eval_at_start=true",
            "train.log_every=10",
            "train.checkpoint_every=0",
            *overrides,
        ],
    )


def sft_config(data: Path | str, init_from: Path | str, *, steps=300, lora_rank=0) -> Config:
    """SFT on DATA/sft_train.jsonl (held out: DATA/sft_val.jsonl) from `init_from`."""
    data = Path(data)
    lora = [f"model.lora_rank={lora_rank}"] if lora_rank else []
    return post_config(
        pretrain_config(750),
        "chain_sft",
        [
            "data.format=chat",
            f"data.sources=jsonl:{data / 'sft_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'sft_val.jsonl'}",
            f"train.init_from={init_from}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            "optim.lr=1e-3",
            *lora,
        ],
    )


def dpo_config(
    data: Path | str, init_from: Path | str, *, steps=200, lr=5e-5, beta=0.1, lora_rank=0
) -> Config:
    """DPO on DATA/dpo_train.jsonl (held out: DATA/dpo_val.jsonl) from `init_from`."""
    data = Path(data)
    lora = [f"model.lora_rank={lora_rank}"] if lora_rank else []
    return post_config(
        pretrain_config(750),
        "chain_dpo",
        [
            "data.format=preference",
            "data.batch_size=8",
            f"data.sources=jsonl:{data / 'dpo_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'dpo_val.jsonl'}",
            f"train.init_from={init_from}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            f"optim.lr={lr}",
            f"preference.beta={beta}",
            *lora,
        ],
    )
