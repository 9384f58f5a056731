"""Context extension by RoPE scaling: no scaling, PI, NTK-aware and YaRN, on the stdlib.

    python -m experiments.context_extension [--workdir runs/context_extension]
        [--seq-len 128] [--extend 4] [--base-steps 600] [--finetune-steps 40]
        [--finetune-lr 3e-4] [--eval-docs 64] [--set model.d_model=128 ...]

About 9-12 minutes on a 2-core CPU at the defaults (README: "Context extension").

1. Pretrain a small Llama-style model on the embedded stdlib corpus at length
   T = --seq-len (model.max_seq_len = T), export it.
2. Held-out loss by position out to E * T (E = --extend) for four RoPE settings
   (jaxlm.models.rope), applied to the base model as it is: "none" (plain RoPE,
   extrapolating), "linear" (position interpolation, factor E), "ntk" (NTK-aware base,
   factor E) and "yarn" (factor E, original length T, attention temperature).
3. Each setting again after a short continued pretraining at length E * T from the
   base export (`train.init_from`, --finetune-steps steps): "none" then is the plain
   "train longer" baseline.
4. Loss is averaged per position over the first --eval-docs held-out documents of at
   least E * T + 1 tokens, each in a row of its own from position 0
   (jaxlm.evaluation.position_loss), so every position averages the same documents.

Writes to the workdir: position_loss.png / .svg (loss vs position, smoothed; dashed
without fine-tuning, solid after it), context_extension_summary.json (mean loss over
positions [0, T), [T, 2T) and [2T, E*T) for each variant) and position_curves.json
(the raw per-position curves). Every training stage is an ordinary jaxlm run in its
own workdir with its export beside it; a rerun skips stages that already finished.
`get_config()` is the base pretraining config (`jaxlm train context_extension`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxlm.config import (
    Config,
    DataConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
)

METHODS = ("none", "linear", "ntk", "yarn")
LABELS = {"none": "no scaling", "linear": "PI", "ntk": "NTK", "yarn": "YaRN"}


def get_config(seq_len: int = 128, steps: int = 600) -> Config:
    """The base model: the d256 x 4 stdlib shape, trained at `seq_len`."""
    return Config(
        name="context_extension_base",
        model=ModelConfig(
            vocab_size=2048,
            d_model=256,
            n_layers=4,
            n_heads=4,
            n_kv_heads=4,
            max_seq_len=seq_len,
            tie_embeddings=True,
        ),
        data=DataConfig(
            tokenizer_vocab_size=2048,
            tokenizer_max_chars=2_000_000,
            val_fraction=0.05,
            seq_len=seq_len,
            batch_size=32,
            eval_max_docs=40,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1),
        mesh=MeshConfig(data=-1),
        train=TrainConfig(
            steps=steps,
            eval_every=steps,
            log_every=25,
            progress_bar=False,
            generate_prompt="",
        ),
    )


def rope_overrides(method: str, factor: int, original: int) -> list[str]:
    """The model.rope_* settings of one method for a context `factor` times `original`."""
    if method == "none":
        return ["model.rope_scaling=none", "model.rope_scaling_factor=1.0"]
    out = [f"model.rope_scaling={method}", f"model.rope_scaling_factor={float(factor)}"]
    if method == "yarn":
        out.append(f"model.rope_original_max_len={original}")
    return out


def finetune_config(
    base: Config,
    method: str,
    *,
    base_export: Path,
    extend: int,
    steps: int,
    batch_size: int,
    lr: float,
) -> Config:
    """Continued pretraining of the base export at `extend` times its length."""
    long_len = extend * base.data.seq_len
    cfg = dataclasses.replace(base, name=f"context_extension_ft_{method}")
    return apply_overrides(
        cfg,
        [
            f"model.max_seq_len={long_len}",
            *rope_overrides(method, extend, base.data.seq_len),
            f"data.seq_len={long_len}",
            f"data.batch_size={batch_size}",
            f"data.tokenizer={base_export / 'tokenizer.model'}",
            f"train.init_from={base_export}",
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            "train.log_every=10",
            f"optim.lr={lr}",
            f"optim.warmup_steps={max(1, steps // 8)}",
        ],
    )


def train_and_export(cfg: Config, workdir: Path, export: Path) -> float:
    """Train (or resume) `cfg` in `workdir` and export its params; returns the seconds
    it took (0 when the export already existed)."""
    from jaxlm.cli import main as jaxlm_main
    from jaxlm.training.loop import train

    if (export / "params").is_dir():
        return 0.0
    t0 = time.perf_counter()
    train(cfg, workdir)
    status = jaxlm_main(["export", str(workdir), str(export)])
    if status:
        raise SystemExit(f"export of {workdir} failed ({status})")
    return time.perf_counter() - t0


def held_out_documents(cfg: Config, tokenizer, min_tokens: int, max_docs: int) -> list:
    """Token arrays of held-out stdlib documents with at least `min_tokens` tokens."""
    from jaxlm.data.packing import document_tokens
    from jaxlm.data.run_inputs import eval_texts

    everything = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_max_docs=0))
    docs = []
    for text in eval_texts(everything):
        tokens = document_tokens(text, tokenizer)
        if len(tokens) >= min_tokens:
            docs.append(tokens)
            if len(docs) == max_docs:
                break
    return docs


def windows(seq_len: int, extend: int) -> dict[str, tuple[int, int]]:
    return {
        f"[0,{seq_len})": (0, seq_len),
        f"[{seq_len},{2 * seq_len})": (seq_len, 2 * seq_len),
        f"[{2 * seq_len},{extend * seq_len})": (2 * seq_len, extend * seq_len),
    }


def plot_curves(
    curves: dict[str, np.ndarray], seq_len: int, out_stem: Path, smooth: int
) -> list[Path]:
    """Loss vs position, one line per variant (moving average over `smooth` positions)."""
    from jaxlm.analysis.plotting import new_figure

    fig = new_figure(figsize=(10, 4.8), dpi=120)
    ax = fig.subplots()
    colors = dict(zip(METHODS, ["tab:gray", "tab:blue", "tab:green", "tab:red"], strict=True))
    for name, curve in curves.items():
        method, _, tuned = name.partition("+")
        kernel = np.ones(min(smooth, len(curve))) / min(smooth, len(curve))
        smoothed = np.convolve(curve, kernel, mode="valid")
        x = np.arange(len(smoothed)) + (len(curve) - len(smoothed)) / 2
        label = LABELS[method] + (" + fine-tune" if tuned else "")
        ax.plot(x, smoothed, color=colors[method], linestyle="-" if tuned else "--", label=label)
    ax.axvline(seq_len, color="black", linewidth=0.8, alpha=0.6, label="base training length")
    ax.set_xlabel("position in document")
    ax.set_ylabel(f"held-out next-token loss (nats, {smooth}-position mean)")
    ax.set_title("RoPE scaling: loss by position")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/context_extension")
    parser.add_argument("--seq-len", type=int, default=128, help="base training length T")
    parser.add_argument("--extend", type=int, default=4, help="evaluate out to this times T")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--finetune-batch", type=int, default=8, help="rows of extend*T tokens")
    parser.add_argument(
        "--finetune-lr", type=float, default=3e-4, help="default: the base run's final lr"
    )
    parser.add_argument("--eval-docs", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--smooth", type=int, default=32, help="plot's moving-average window")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override the base config (e.g. model.d_model=128)",
    )
    args = parser.parse_args(argv)
    if args.extend < 2:
        parser.error("--extend must be at least 2")
    root = Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from jaxlm.evaluation.position_loss import mean_over, position_loss
    from jaxlm.inference.loading import load_model

    T, E = args.seq_len, args.extend
    long_len = E * T
    base = apply_overrides(get_config(T, args.base_steps), args.overrides)
    base_export = root / "base_export"
    seconds = {"base": train_and_export(base, root / "base", base_export)}

    finetuned = {}
    for method in METHODS:
        cfg = finetune_config(
            base,
            method,
            base_export=base_export,
            extend=E,
            steps=args.finetune_steps,
            batch_size=args.finetune_batch,
            lr=args.finetune_lr,
        )
        export = root / f"ft_{method}_export"
        seconds[f"ft_{method}"] = train_and_export(cfg, root / f"ft_{method}", export)
        finetuned[method] = export

    base_model = load_model(base_export)
    docs = held_out_documents(base, base_model.tokenizer, long_len + 1, args.eval_docs)
    if not docs:
        raise SystemExit(f"no held-out document has {long_len + 1} tokens; lower --seq-len")

    t_eval = time.perf_counter()
    curves: dict[str, np.ndarray] = {}
    for method in METHODS:
        variants = {
            method: (
                base_export,
                [f"model.max_seq_len={long_len}", *rope_overrides(method, E, T)],
            ),
            f"{method}+ft": (finetuned[method], []),
        }
        for name, (path, overrides) in variants.items():
            loaded = load_model(path, overrides=overrides)
            result = position_loss(
                loaded.cfg,
                loaded.graphdef,
                loaded.params,
                docs,
                seq_len=long_len,
                batch_size=args.eval_batch,
            )
            curves[name] = result.loss
    seconds["evaluation"] = time.perf_counter() - t_eval

    spans = windows(T, E)
    variants_summary = {
        name: {
            "method": name.partition("+")[0],
            "finetuned": name.endswith("+ft"),
            **{span: round(mean_over(curve, *bounds), 4) for span, bounds in spans.items()},
        }
        for name, curve in curves.items()
    }
    plots = plot_curves(curves, T, root / "position_loss", args.smooth)
    seconds["total"] = time.perf_counter() - t_start
    summary = {
        "seq_len": T,
        "extend": E,
        "eval_docs": len(docs),
        "base_steps": args.base_steps,
        "finetune_steps": args.finetune_steps,
        "finetune_tokens_per_step": args.finetune_batch * long_len,
        "finetune_lr": args.finetune_lr,
        "variants": variants_summary,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "plots": [str(p) for p in plots],
    }
    (root / "context_extension_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (root / "position_curves.json").write_text(
        json.dumps({name: [round(float(v), 5) for v in c] for name, c in curves.items()}) + "\n"
    )
    print(format_table(variants_summary, list(spans)))
    print(json.dumps(summary, indent=2))
    return 0


def format_table(variants: dict[str, dict], spans: list[str]) -> str:
    header = f"{'variant':<22}" + "".join(f"{s:>14}" for s in spans)
    lines = [header, "-" * len(header)]
    for row in variants.values():
        label = LABELS[row["method"]] + (" + fine-tune" if row["finetuned"] else "")
        lines.append(f"{label:<22}" + "".join(f"{row[s]:>14.4f}" for s in spans))
    return "\n".join(lines)


if __name__ == "__main__":
    from jaxlm.runtime.cpu import configure_cpu

    configure_cpu()
    sys.exit(main())
