"""The whole chain on the embedded corpus: pretrain -> SFT -> DPO, each from the last export.

    python -m experiments.posttrain_chain [--workdir runs/chain] [--pretrain-steps 750]
        [--sft-steps 300] [--dpo-steps 200] [--dpo-lr 5e-5] [--dpo-beta 0.1] [--lora-rank 0]

1. `jaxlm data posttrain`: SFT conversations ("write this function", answered with the
   real stdlib function) and preference pairs (the real function vs a corruption of it)
   from the interpreter's standard library, held-out tasks from held-out files.
2. Pretrain the d256 x 4 stdlib model (experiments/_stdlib_lm.py) on the stdlib
   (model.max_seq_len=512 so the chat stages can use 512-token rows), export its
   params and tokenizer.
3. SFT from that export (data.format=chat). Its step-0 evaluation is the *base* model's
   loss on held-out assistant tokens; its final one the SFT model's. SFT must lower it.
4. DPO from the SFT export (data.format=preference). Its step-0 evaluation scores the
   SFT model on held-out pairs, its final one the DPO model. Preference accuracy is the
   share of held-out pairs ranked chosen-first: `accuracy` by the implied DPO reward
   against the SFT reference (0 for the SFT model itself, by construction), and
   `logp_accuracy` by mean per-token log-prob (reference-free: comparable across both).

Each stage is an ordinary `jaxlm train` run in its own workdir (resumable, with
metrics.jsonl); a rerun skips stages that already finished. The summary is printed
and written to <workdir>/chain_summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments._chain_configs import dpo_config, pretrain_config, sft_config
from jaxlm.config import Config


def get_config() -> Config:
    """The chain's first stage (pretraining); the others are experiments/sft.py, dpo.py."""
    return pretrain_config(750)


def run_stage(cfg: Config, workdir: Path, export: Path) -> dict:
    """Train (or resume) `cfg` in `workdir`, export its params; returns its eval records."""
    from jaxlm.cli import main as jaxlm_main
    from jaxlm.training.loop import train

    if not (export / "params").is_dir():
        train(cfg, workdir)
        status = jaxlm_main(["export", str(workdir), str(export)])
        if status:
            raise SystemExit(f"export of {workdir} failed ({status})")
    evals = [
        record
        for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
        if record["split"] == "eval"
    ]
    return {"first": evals[0], "last": evals[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/chain")
    parser.add_argument("--pretrain-steps", type=int, default=750)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--dpo-steps", type=int, default=200)
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0: SFT and DPO train LoRA")
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--max-pairs", type=int, default=4000)
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)

    from jaxlm.data.stdlib_tasks import write_posttrain_sets

    data = root / "data"
    if not (data / "manifest.json").is_file():
        write_posttrain_sets(data, max_pairs=args.max_pairs)
    manifest = json.loads((data / "manifest.json").read_text())

    pre = pretrain_config(args.pretrain_steps)
    pretrain = run_stage(pre, root / "pretrain", root / "pretrain_export")

    sft_cfg = sft_config(
        data, root / "pretrain_export", steps=args.sft_steps, lora_rank=args.lora_rank
    )
    sft = run_stage(sft_cfg, root / "sft", root / "sft_export")

    dpo_cfg = dpo_config(
        data,
        root / "sft_export",
        steps=args.dpo_steps,
        lr=args.dpo_lr,
        beta=args.dpo_beta,
        lora_rank=args.lora_rank,
    )
    dpo = run_stage(dpo_cfg, root / "dpo", root / "dpo_export")

    summary = {
        "data": {name: info.get("records") for name, info in manifest.get("files", {}).items()},
        "pretrain": {"eval_loss": pretrain["last"]["loss"]},
        "sft": {
            "held_out_assistant_loss_base": sft["first"]["loss"],
            "held_out_assistant_loss_sft": sft["last"]["loss"],
            "assistant_tokens": sft["last"]["tokens"],
        },
        "dpo": {
            "pairs": dpo["last"]["pairs"],
            "implied_reward_accuracy_sft": dpo["first"]["accuracy"],
            "implied_reward_accuracy_dpo": dpo["last"]["accuracy"],
            "logp_accuracy_sft": dpo["first"]["logp_accuracy"],
            "logp_accuracy_dpo": dpo["last"]["logp_accuracy"],
            "margin_dpo": dpo["last"]["margin"],
        },
    }
    (root / "chain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
