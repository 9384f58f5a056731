"""RL on verifiable rewards: GRPO teaches a warm-started tiny model to answer, then stop.

    python -m experiments.rl_arithmetic [--workdir runs/rl_arithmetic]
        [--warm-steps 3000] [--rl-steps 200] [--algorithm grpo|dr_grpo|dapo]

1. Data (jaxlm.data.arithmetic_task, generated here, nothing downloaded): sums and
   differences of 1-3 digit numbers; a hash split keeps the held-out problems out of
   every training set.
2. Tokenizer: SentencePiece on a slice of the embedded stdlib corpus (digits are
   split into single tokens).
3. Warm start: next-token pretraining on arithmetic "worksheets", documents of 1 to 4
   problems one per line ("12+345=357\n58+67=125"), each document ending with EOS.
   Like a base model trained on web text, it answers a problem and then usually goes
   on with the next line instead of stopping.
4. RL (data.format=rl) from that export: prompts "12+345=", rl.group_size responses
   each, reward "answer": 1 when the response is exactly the answer (it must stop
   after it), else 0; "digits" (partial credit, aligned from the right) is reported
   beside it with weight 0. GRPO's group-normalised advantages, KL to the warm start.
The RL run's step-0 evaluation is the warm-started model, its last one the RL model:
greedy accuracy and pass@k on held-out prompts, before and after. What RL teaches
here is mostly *when to stop* (the response length falls to the answer's), the way
RL on verifiable rewards mostly selects behaviour a model already has; the
arithmetic itself improves little in a CPU budget (see the README's RL section for
the measured numbers and what was tried). Each stage is an ordinary run in its own
workdir (resumable); a rerun skips finished stages. The summary is printed and
written to <workdir>/rl_summary_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jaxlm.config import Config, apply_overrides

MODEL = [
    "model.d_model=128",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=384",
    "model.vocab_size=384",
    "model.max_seq_len=64",
]
COMMON = [
    *MODEL,
    "data.seq_len=64",
    "train.progress_bar=false",
    "train.generate_prompt=",
    "train.checkpoint_every=0",
    "train.log_every=10",
]


def warm_start_config(data: Path, tokenizer: Path | str, steps: int) -> Config:
    return apply_overrides(
        Config(name="rl_arithmetic_warm"),
        [
            *COMMON,
            "data.format=text",
            "data.text_field=text",
            f"data.sources=jsonl:{data / 'warm_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'warm_held_out.jsonl'}",
            f"data.tokenizer={tokenizer}",
            "data.batch_size=32",
            "optim.lr=3e-3",
            "optim.warmup_steps=30",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
        ],
    )


def rl_config(
    data: Path, init_from: Path | str, *, steps: int, algorithm: str = "grpo", extra=()
) -> Config:
    return apply_overrides(
        Config(name=f"rl_arithmetic_{algorithm}"),
        [
            *COMMON,
            "data.format=rl",
            f"data.sources=jsonl:{data / 'rl_train.jsonl'}",
            f"data.eval_sources=jsonl:{data / 'rl_held_out.jsonl'}",
            f"train.init_from={init_from}",
            "data.batch_size=16",
            f"rl.algorithm={algorithm}",
            "rl.group_size=8",
            "rl.max_response_tokens=8",
            "rl.temperature=1.0",
            "rl.rewards=answer,digits=0",
            "rl.kl_weight=0.02",
            "rl.eval_samples=8",
            "optim.lr=1e-4",
            "optim.warmup_steps=5",
            "optim.schedule=constant",
            "optim.weight_decay=0.0",
            "train.eval_at_start=true",
            "train.log_every=5",
            f"train.steps={steps}",
            f"train.eval_every={max(steps // 4, 1)}",
            *extra,
        ],
    )


def get_config() -> Config:
    """The RL stage with placeholder paths (the CLI's shrunk runs replace the data)."""
    return rl_config(Path("runs/rl_arithmetic/data"), "runs/rl_arithmetic/warm_export", steps=200)


def write_data(data: Path, *, train_problems: int, held_out: int, seed: int = 0) -> None:
    from jaxlm.data import arithmetic_task as task

    data.mkdir(parents=True, exist_ok=True)
    train = task.examples("train", train_problems, seed=seed, max_digits=3)
    test = task.examples("held_out", held_out, seed=seed, max_digits=3, unique=True)

    def write(name, records):
        text = "".join(json.dumps(r) + "\n" for r in records)
        (data / name).write_text(text, encoding="utf-8")

    write("warm_train.jsonl", worksheets(train, seed))
    write("warm_held_out.jsonl", worksheets(test, seed))
    write("rl_train.jsonl", [task.prompt_record(e) for e in train])
    write("rl_held_out.jsonl", [task.prompt_record(e) for e in test])


def worksheets(examples: list[dict], seed: int, most: int = 4) -> list[dict]:
    """{"text": ...} documents of 1..`most` problems with their answers, one per line."""
    import random

    rng = random.Random(seed)  # the layout only; the problems are the task's own
    docs, i = [], 0
    while i < len(examples):
        n = rng.randint(1, most)
        lines = [e["prompt"] + e["answer"] for e in examples[i : i + n]]
        docs.append({"text": "\n".join(lines)})
        i += n
    return docs


def make_tokenizer(path: Path) -> Path:
    from jaxlm.data.corpus import read_text, stdlib_files
    from jaxlm.data.tokenizer import save_tokenizer, train_model_proto

    if not path.with_suffix(".model").is_file():
        texts = [read_text(p) for p in stdlib_files("train")[:80]]
        save_tokenizer(train_model_proto(texts, vocab_size=384, max_chars=200_000), path)
    return path.with_suffix(".model")


def run_stage(cfg: Config, workdir: Path, export: Path | None) -> list[dict]:
    """Train (or resume) `cfg`; export its params when asked; its eval records."""
    from jaxlm.cli import main as jaxlm_main
    from jaxlm.training.loop import train

    done = export is not None and (export / "params").is_dir()
    if not done:
        train(cfg, workdir)
        if export is not None and jaxlm_main(["export", str(workdir), str(export)]):
            raise SystemExit(f"export of {workdir} failed")
    records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["split"] in ("eval", "train")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/rl_arithmetic")
    parser.add_argument("--warm-steps", type=int, default=3000)
    parser.add_argument("--rl-steps", type=int, default=200)
    parser.add_argument("--algorithm", default="grpo", choices=("grpo", "dr_grpo", "dapo"))
    parser.add_argument("--train-problems", type=int, default=20_000)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--set", action="append", default=[], help="extra RL overrides")
    parser.add_argument("--name", default="", help="the RL run's directory (default: algorithm)")
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()
    data = root / "data"
    if not (data / "rl_held_out.jsonl").is_file():
        write_data(data, train_problems=args.train_problems, held_out=args.held_out)
    tokenizer = make_tokenizer(root / "tok")

    t0 = time.perf_counter()
    warm_cfg = warm_start_config(data, tokenizer, args.warm_steps)
    run_stage(warm_cfg, root / "warm", root / "warm_export")
    t1 = time.perf_counter()
    rl_cfg = rl_config(
        data, root / "warm_export", steps=args.rl_steps, algorithm=args.algorithm, extra=args.set
    )
    name = args.name or args.algorithm
    records = run_stage(rl_cfg, root / name, None)
    t2 = time.perf_counter()

    evals = [r for r in records if r["split"] == "eval"]
    trains = [r for r in records if r["split"] == "train"]
    k = rl_cfg.rl.eval_samples
    summary = {
        "algorithm": args.algorithm,
        "held_out_prompts": evals[-1]["prompts"],
        "before": {"accuracy": evals[0]["accuracy"], f"pass_at_{k}": evals[0][f"pass_at_{k}"]},
        "after": {"accuracy": evals[-1]["accuracy"], f"pass_at_{k}": evals[-1][f"pass_at_{k}"]},
        "evals": [
            {"step": r["step"], "accuracy": r["accuracy"], f"pass_at_{k}": r[f"pass_at_{k}"]}
            for r in evals
        ],
        "train_reward_first_last": [trains[0]["reward"], trains[-1]["reward"]],
        "rollout_tokens_per_s_mean": sum(r["rollout_tokens_per_s"] for r in trains) / len(trains),
        "rollout_s_mean": sum(r["rollout_s"] for r in trains) / len(trains),
        "update_s_mean": sum(r["update_s"] for r in trains) / len(trains),
        "wall_s": {"warm_start": round(t1 - t0, 1), "rl": round(t2 - t1, 1)},
    }
    (root / f"rl_summary_{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
