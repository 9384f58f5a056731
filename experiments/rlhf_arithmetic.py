"""Classic RLHF on an embedded chat task: SFT -> reward model -> PPO (and GRPO on the RM).

    python -m experiments.rlhf_arithmetic [--workdir runs/rlhf_arithmetic]
        [--sft-steps 1500] [--rm-steps 300] [--rl-steps 150]

1. Data (jaxlm.data.arithmetic_task, generated here): chat questions "What is 12 +
   345?"; SFT conversations answer them, half bare ("357"), half hedged ("I think it
   is 357"); preference pairs (the "human" labels) prefer the bare right answer, half
   of them to the hedged one (style), half to a near miss with a digit changed
   (correctness); held-out questions for evaluation.
2. SFT (data.format=chat) of the arithmetic-sized model: it answers in both styles.
3. Reward model (data.format=reward, model.score_head=true) from the SFT export:
   Bradley-Terry on the pairs; its held-out pair accuracy is reported.
4. PPO (rl.algorithm=ppo) from the SFT export against the reward model: the critic
   is a value head on the policy (it starts at zero), a per-token KL penalty to the
   SFT model is part of the reward. Then GRPO (rl.algorithm=grpo) on the same
   reward model for comparison.
Both RL runs report the held-out reward-model score of their greedy answers before
(step 0: the SFT model) and after, the KL to the SFT model, and, beside the reward
(weight 0, never trained on), the exact-answer accuracy: whether a rising RM score
means right answers or a reward model being exploited shows there. The curves
(reward, KL, response length, entropy, accuracy) are drawn by `jaxlm compare
--metrics` into <workdir>/plots; the summary is printed and written to
<workdir>/rlhf_summary.json. Each stage is an ordinary resumable run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from experiments.rl_arithmetic import COMMON, make_tokenizer, run_stage
from jaxlm.config import Config, apply_overrides

RL_METRICS = "reward_reward_model,kl,response_tokens,entropy,accuracy,value_loss"


def sft_config(data: Path, tokenizer: Path | str, steps: int) -> Config:
    return apply_overrides(
        Config(name="rlhf_sft"),
        [
            *COMMON,
            "data.format=chat",
            f"data.sources=jsonl:{data / 'sft_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'sft_held_out.jsonl'}",
            f"data.tokenizer={tokenizer}",
            "data.batch_size=32",
            "optim.lr=3e-3",
            "optim.warmup_steps=30",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
        ],
    )


def reward_model_config(data: Path, sft: Path | str, steps: int) -> Config:
    return apply_overrides(
        Config(name="rlhf_reward_model"),
        [
            *COMMON,
            "model.score_head=true",
            "data.format=reward",
            f"data.sources=jsonl:{data / 'pairs_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'pairs_held_out.jsonl'}",
            f"train.init_from={sft}",
            "data.batch_size=32",
            "optim.lr=1e-3",
            "optim.warmup_steps=20",
            "train.eval_at_start=true",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
        ],
    )


def rl_config(data: Path, sft: Path | str, rm: Path | str, *, algorithm: str, steps: int):
    ppo = algorithm == "ppo"
    return apply_overrides(
        Config(name=f"rlhf_{algorithm}"),
        [
            *COMMON,
            *(["model.score_head=true"] if ppo else []),
            "data.format=rl",
            f"data.sources=jsonl:{data / 'rl_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'rl_held_out.jsonl'}",
            f"train.init_from={sft}",
            f"rl.reward_model={rm}",
            "rl.rewards=reward_model,answer=0",
            f"rl.algorithm={algorithm}",
            f"rl.group_size={4 if ppo else 8}",
            f"data.batch_size={32 if ppo else 16}",
            "rl.max_response_tokens=16",
            "rl.kl_weight=0.05",
            "rl.eval_samples=4",
            f"rl.epochs={2 if ppo else 1}",
            "optim.lr=1e-4",
            "optim.warmup_steps=5",
            "optim.schedule=constant",
            "optim.weight_decay=0.0",
            "train.eval_at_start=true",
            "train.log_every=5",
            f"train.steps={steps}",
            f"train.eval_every={max(steps // 3, 1)}",
        ],
    )


def get_config() -> Config:
    """The PPO stage with placeholder paths (the CLI's shrunk runs replace the data)."""
    root = Path("runs/rlhf_arithmetic")
    return rl_config(
        root / "data", root / "sft_export", root / "rm_export", algorithm="ppo", steps=150
    )


def write_data(data: Path, *, train_problems: int, held_out: int, seed: int = 0) -> None:
    from jaxlm.data import arithmetic_task as task

    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = task.examples("train", train_problems, seed=seed, max_digits=3)
    test = task.examples("held_out", held_out, seed=seed, max_digits=3, unique=True)

    def hedged(answer: str) -> str:
        return f"I think it is {answer}"

    def wrong(answer: str) -> str:  # one digit changed: a near miss, as labellers see
        i = rng.randrange(len(answer))
        digit = rng.choice([d for d in "0123456789" if d != answer[i]])
        changed = answer[:i] + digit + answer[i + 1 :]
        return changed.lstrip("0") or "0"

    def pair(e):
        # Half the labels are about style (a bare answer over a hedged one, both
        # right), half about correctness (the right answer over a near miss).
        question = e["messages"][0]["content"]
        rejected = hedged(e["answer"]) if rng.random() < 0.5 else wrong(e["answer"])
        return {"prompt": question, "chosen": e["answer"], "rejected": rejected}

    def sft(e):  # the SFT data has both styles: the SFT model answers either way
        record = task.sft_record(e)
        if rng.random() < 0.5:
            record["conversations"][1]["content"] = hedged(e["answer"])
        return record

    def write(name, records):
        text = "".join(json.dumps(r) + "\n" for r in records)
        (data / name).write_text(text, encoding="utf-8")

    half = len(train) // 2  # SFT and the reward model see different problems
    write("sft_train.jsonl", [sft(e) for e in train[:half]])
    write("sft_held_out.jsonl", [sft(e) for e in test])
    write("pairs_train.jsonl", [pair(e) for e in train[half:]])
    write("pairs_held_out.jsonl", [pair(e) for e in test])
    write("rl_train.jsonl", [task.prompt_record(e, chat=True) for e in train])
    write("rl_held_out.jsonl", [task.prompt_record(e, chat=True) for e in test])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/rlhf_arithmetic")
    parser.add_argument("--sft-steps", type=int, default=1500)
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--rl-steps", type=int, default=150)
    parser.add_argument("--train-problems", type=int, default=20_000)
    parser.add_argument("--held-out", type=int, default=256)
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()
    data = root / "data"
    if not (data / "rl_held_out.jsonl").is_file():
        write_data(data, train_problems=args.train_problems, held_out=args.held_out)
    tokenizer = make_tokenizer(root / "tok")

    times = {}
    t = time.perf_counter()
    run_stage(sft_config(data, tokenizer, args.sft_steps), root / "sft", root / "sft_export")
    times["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    rm_cfg = reward_model_config(data, root / "sft_export", args.rm_steps)
    rm = [r for r in run_stage(rm_cfg, root / "rm", root / "rm_export") if r["split"] == "eval"]
    times["reward_model"] = time.perf_counter() - t
    summary = {
        "reward_model": {
            "held_out_pairs": rm[-1]["pairs"],
            "accuracy_before": rm[0]["accuracy"],
            "accuracy_after": rm[-1]["accuracy"],
            "loss_after": rm[-1]["loss"],
        }
    }
    for algorithm in ("ppo", "grpo"):
        t = time.perf_counter()
        cfg = rl_config(
            data, root / "sft_export", root / "rm_export", algorithm=algorithm, steps=args.rl_steps
        )
        records = run_stage(cfg, root / algorithm, None)
        times[algorithm] = time.perf_counter() - t
        evals = [r for r in records if r["split"] == "eval"]
        trains = [r for r in records if r["split"] == "train"]
        summary[algorithm] = {
            "held_out_rm_score": [e["reward_reward_model"] for e in (evals[0], evals[-1])],
            "held_out_accuracy": [evals[0]["accuracy"], evals[-1]["accuracy"]],
            "train_kl_last": trains[-1]["kl"],
            "response_tokens_last": trains[-1]["response_tokens"],
            "rollout_tokens_per_s_mean": sum(r["rollout_tokens_per_s"] for r in trains)
            / len(trains),
        }
    summary["wall_s"] = {k: round(v, 1) for k, v in times.items()}

    from jaxlm.cli import main as jaxlm_main

    runs = [str(root / "ppo"), str(root / "grpo")]
    jaxlm_main(["compare", *runs, "--out", str(root / "plots"), "--metrics", RL_METRICS])
    (root / "rlhf_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
