"""Distillation on the embedded corpus: does a teacher make a small student better?

    python -m experiments.distill_stdlib [--workdir runs/distill_stdlib] [--steps 750]
        [--top-k 16] [--alpha 0.5] [--temperature 1.0]

1. Teacher: the d256 x 4-layer stdlib model (its own 4096-piece tokenizer) pretrained
   on the Python standard library (experiments/_stdlib_lm.py's recipe).
2. Students: 2 layers, d_model 128, the teacher's tokenizer, the same data, steps,
   batch, schedule and seed, trained three ways:
       ce       the next-token loss alone (the baseline)
       online   alpha · CE + (1 - alpha) · τ² · KL(teacher || student), the teacher
                running inside every step
       top_k    the same loss over the teacher's top-k log-probs + tail bucket,
                computed once before training (distill.top_k)
Each stage is an ordinary run in its own workdir (a rerun skips finished ones). The
summary (held-out loss and bits per byte of each, the teacher's, wall times, and the
online teacher's cost per step) is printed and written to <workdir>/distill_summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jaxlm.config import Config, apply_overrides

STUDENT = [
    "model.d_model=128",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=4",
    "model.vocab_size=4096",
    "model.max_seq_len=256",
    "model.tie_embeddings=true",
]


def student_config(
    teacher: Path | str, tokenizer: Path | str, *, steps: int, mode: str, extra=()
) -> Config:
    """A student run: mode "ce" (no teacher), "online" or "top_k"."""
    from experiments import _stdlib_lm

    base = _stdlib_lm.get_config()
    distill = []
    if mode != "ce":
        distill = [f"distill.teacher={teacher}"]
    cfg = apply_overrides(
        dataclasses.replace(base, name=f"distill_{mode}"),
        [
            *STUDENT,
            f"data.tokenizer={tokenizer}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            "train.generate_prompt=",
            "train.progress_bar=false",
            "train.checkpoint_every=0",
            *distill,
            *extra,
        ],
    )
    return cfg


def get_config() -> Config:
    """The online student with a placeholder teacher (the CLI's shrunk runs drop it)."""
    teacher = Path("runs/distill_stdlib/teacher")
    return student_config(teacher, teacher / "tokenizer.model", steps=750, mode="online")


def finished(workdir: Path) -> bool:
    summary = workdir / "metrics.jsonl"
    return summary.is_file() and '"split": "summary"' in summary.read_text()


def run_stage(cfg: Config, workdir: Path) -> dict:
    """Train (or skip, when finished) `cfg`: its summary record (wall_s: the run's own
    wall time, table computation included) and its median logged step time."""
    from jaxlm.training.loop import train

    if not finished(workdir):
        train(cfg, workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in records if r["split"] == "summary"][-1]
    trains = [r for r in records if r["split"] == "train"]
    # steady-state step time: the median of the logged steps after the first (compile)
    times = sorted(r["step_time_s"] for r in trains[1:]) or [float("nan")]
    return {**summary, "median_step_s": times[len(times) // 2]}


def main(argv: list[str] | None = None) -> int:
    from experiments import _stdlib_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/distill_stdlib")
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--teacher-steps", type=int, default=750)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--only", default="ce,online,top_k", help="which students to train")
    parser.add_argument("--set", action="append", default=[], help="extra student overrides")
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()

    teacher_cfg = apply_overrides(
        _stdlib_lm.get_config(),
        [
            f"train.steps={args.teacher_steps}",
            "train.generate_prompt=",
            "train.progress_bar=false",
        ],
    )
    teacher_summary = run_stage(teacher_cfg, root / "teacher")
    tokenizer = root / "teacher" / "tokenizer.model"
    loss = [
        f"distill.alpha={args.alpha}",
        f"distill.temperature={args.temperature}",
        f"distill.top_k={args.top_k}",
    ]
    results = {
        "teacher": {
            "bits_per_byte": teacher_summary["eval_bits_per_byte"],
            "loss": teacher_summary["eval_loss"],
            "wall_s": round(teacher_summary["wall_s"], 1),
            "median_step_s": teacher_summary["median_step_s"],
        }
    }
    for mode in args.only.split(","):
        extra = [*(loss if mode != "ce" else []), *args.set]
        if mode == "online":
            extra = [e for e in extra if not e.startswith("distill.top_k")]
        cfg = student_config(root / "teacher", tokenizer, steps=args.steps, mode=mode, extra=extra)
        summary = run_stage(cfg, root / mode)
        results[mode] = {
            "bits_per_byte": summary["eval_bits_per_byte"],
            "loss": summary["eval_loss"],
            "wall_s": round(summary["wall_s"], 1),
            "startup_s": round(summary["startup_s"], 1),
            "median_step_s": summary["median_step_s"],
        }
    out = {
        "steps": args.steps,
        "alpha": args.alpha,
        "temperature": args.temperature,
        "k": args.top_k,
        **results,
    }
    if "online" in results and "ce" in results:
        out["online_step_cost_vs_ce"] = results["online"]["median_step_s"] / max(
            results["ce"]["median_step_s"], 1e-9
        )
    (root / "distill_summary.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
