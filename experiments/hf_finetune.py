"""Fine-tune a Hugging Face model end to end: import, LoRA SFT, LoRA DPO, chat, export back.

    python -m experiments.hf_finetune --hf-dir path/to/Qwen2.5-0.5B-Instruct \\
        [--sft-data sft.jsonl --sft-val sft_val.jsonl --dpo-data dpo.jsonl --dpo-val dpo_val.jsonl]
        [--workdir runs/hf_finetune] [--sft-steps 100] [--dpo-steps 50] [--lora-rank 16]
    python -m experiments.hf_finetune --demo     # offline: a tiny random Qwen2 with
                                                 # Qwen2.5's real tokenizer (the hf extra)

1. `jaxlm convert --from-hf`: weights, tokenizer (tokenizer.json with its config files)
   and the model's own chat template, into WORKDIR/import.
2. SFT with LoRA from the import on chat jsonl (`{"conversations": [...]}` as in
   MiniMind's sft_*.jsonl, or `{"messages": [...]}`), laid out by the model's own
   template, loss on the assistant tokens and their end-of-turn token only; the merged
   model is exported to WORKDIR/sft_export.
3. DPO with LoRA from the SFT export on preference jsonl (`{"chosen", "rejected"}` as
   in MiniMind's dpo.jsonl); the reference is the SFT model (adapters off: no copy).
   Exported merged to WORKDIR/dpo_export.
4. One chat answer from the DPO model, in the model's own format.
5. `jaxlm convert --to-hf` into WORKDIR/hf_export, loaded by transformers: the largest
   logit difference on a chat prompt, and whether its tokenizer files are byte for
   byte the ones imported.

Without data flags the embedded post-training sets are used (`jaxlm data posttrain`:
"write this stdlib function" conversations and real-vs-corrupted function pairs).
`get_config()` is stage 2's config (`jaxlm train hf_finetune --set
train.init_from=...` runs that stage alone). Stages that finished are skipped on a
rerun; the summary with each stage's wall time is printed and written to
WORKDIR/hf_finetune_summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jaxlm.config import Config, apply_overrides

DEFAULT_WORKDIR = "runs/hf_finetune"


def stage_overrides(steps: int, lora_rank: int) -> list[str]:
    return [
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        "train.eval_at_start=true",
        "train.checkpoint_every=0",
        "train.log_every=10",
        "train.progress_bar=false",
        "train.generate_prompt=",
        f"model.lora_rank={lora_rank}",
        f"model.lora_alpha={2 * lora_rank}",
        "optim.warmup_steps=10",
        "optim.schedule=cosine",
        "data.seq_len=256",
        "data.batch_size=8",
    ]


def sft_overrides(init_from, train, val, *, steps=100, lora_rank=16) -> list[str]:
    return [
        *stage_overrides(steps, lora_rank),
        "data.format=chat",
        f"data.sources=jsonl:{train}",
        f"data.eval_sources=jsonl:{val}",
        f"train.init_from={init_from}",
        "optim.lr=2e-4",
    ]


def dpo_overrides(init_from, train, val, *, steps=50, lora_rank=16, beta=0.1) -> list[str]:
    return [
        *stage_overrides(steps, lora_rank),
        "data.format=preference",
        f"data.sources=jsonl:{train}",
        f"data.eval_sources=jsonl:{val}",
        f"train.init_from={init_from}",
        "optim.lr=5e-5",
        f"preference.beta={beta}",
    ]


def stage_config(name: str, overrides: list[str]) -> Config:
    """The stage's config with the shape of the model it starts from (train.init_from),
    as `jaxlm train` resolves it."""
    from jaxlm.training.experiment import resolve_config

    return resolve_config(None, overrides, name)


def get_config() -> Config:
    """Stage 2 (LoRA SFT) from the default workdir's import, on the embedded SFT set."""
    data = Path(DEFAULT_WORKDIR) / "data"
    overrides = sft_overrides(
        Path(DEFAULT_WORKDIR) / "import", data / "sft_train.jsonl", data / "sft_val.jsonl"
    )
    return apply_overrides(Config(name="hf_sft"), overrides)


def build_demo_model(directory: Path) -> Path:
    """A tiny random Qwen2 (2 layers, d=64) with Qwen2.5's 151,936-row embedding and
    real tokenizer, saved as transformers saves a model directory."""
    import torch  # the hf extra; only the demo builds a transformers model
    import transformers

    from jaxlm.hf.qwen_tiktoken import write_qwen_tokenizer_dir

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=151_936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    return write_qwen_tokenizer_dir(directory)


def _timed(summary: dict, name: str, fn):
    start = time.perf_counter()
    result = fn()
    summary["wall_s"][name] = round(time.perf_counter() - start, 1)
    return result


def _cli(*argv: str) -> None:
    from jaxlm.cli import main as jaxlm_main

    status = jaxlm_main(list(argv))
    if status:
        raise SystemExit(f"jaxlm {' '.join(argv)} failed ({status})")


def _train_and_export(cfg: Config, workdir: Path, export: Path) -> dict:
    from jaxlm.training.loop import train

    if not (export / "params").is_dir():
        train(cfg, workdir)
        _cli("export", str(workdir), str(export))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    return {"first": evals[0], "last": evals[-1]}


def _chat_answer(export: Path, question: str, max_new_tokens: int) -> str:
    from jaxlm.inference.chat_session import ChatSession
    from jaxlm.inference.decode import Generator
    from jaxlm.inference.loading import load_model

    model = load_model(export)
    generator = Generator(model.cfg.model, model.graphdef, model.params, mesh=model.mesh)
    session = ChatSession(generator, model.tokenizer, max_new_tokens=max_new_tokens)
    return session.reply(question)


def _compare_with_transformers(export: Path, hf_export: Path, hf_dir: Path) -> dict:
    import numpy as np
    import torch  # the hf extra: transformers is the reference here
    import transformers

    from jaxlm.inference.loading import load_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_export))
    chat = [{"role": "user", "content": "Write a function that adds two numbers. 谢谢！"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(hf_export)).eval()
    with torch.no_grad():
        theirs = reference(torch.as_tensor([ids])).logits.numpy()
    model = load_model(export)
    ours = np.asarray(model.module()(np.asarray([ids], np.int32)))
    names = [p.name for p in hf_dir.iterdir() if p.name.startswith(("tokenizer", "generation"))]
    return {
        "prompt_tokens": len(ids),
        "max_abs_logit_diff": float(np.abs(ours - theirs).max()),
        "tokenizer_files_identical": {
            name: (hf_export / name).read_bytes() == (hf_dir / name).read_bytes()
            for name in sorted(names)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", help="a Hugging Face model directory (safetensors)")
    source.add_argument("--demo", action="store_true", help="a tiny random Qwen2, offline")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    for name in ("sft-data", "sft-val", "dpo-data", "dpo-val"):
        parser.add_argument(f"--{name}", default=None, help="jsonl (default: embedded set)")
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--dpo-steps", type=int, default=50)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--question", default="Write a Python function that reverses a list.")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {"wall_s": {}}

    hf_dir = Path(args.hf_dir).absolute() if args.hf_dir else root / "demo_model"
    if args.demo and not (hf_dir / "config.json").is_file():
        _timed(summary, "build_demo_model", lambda: build_demo_model(hf_dir))
    data = root / "data"
    if not all((args.sft_data, args.sft_val, args.dpo_data, args.dpo_val)):
        from jaxlm.data.stdlib_tasks import write_posttrain_sets

        if not (data / "manifest.json").is_file():
            _timed(summary, "posttrain_data", lambda: write_posttrain_sets(data, max_pairs=2000))
    sft_train = args.sft_data or data / "sft_train.jsonl"
    sft_val = args.sft_val or data / "sft_val.jsonl"
    dpo_train = args.dpo_data or data / "dpo_train.jsonl"
    dpo_val = args.dpo_val or data / "dpo_val.jsonl"

    imported = root / "import"
    if not (imported / "config.json").is_file():
        _timed(summary, "import", lambda: _cli("convert", "--from-hf", str(hf_dir), str(imported)))
    sft_cfg = stage_config(
        "hf_sft",
        sft_overrides(imported, sft_train, sft_val, steps=args.sft_steps, lora_rank=args.lora_rank),
    )
    sft = _timed(
        summary, "sft", lambda: _train_and_export(sft_cfg, root / "sft", root / "sft_export")
    )
    dpo_cfg = stage_config(
        "hf_dpo",
        dpo_overrides(
            root / "sft_export", dpo_train, dpo_val, steps=args.dpo_steps, lora_rank=args.lora_rank
        ),
    )
    dpo = _timed(
        summary, "dpo", lambda: _train_and_export(dpo_cfg, root / "dpo", root / "dpo_export")
    )
    answer = _timed(
        summary,
        "chat",
        lambda: _chat_answer(root / "dpo_export", args.question, args.max_new_tokens),
    )
    hf_export = root / "hf_export"
    if not (hf_export / "config.json").is_file():
        _timed(
            summary,
            "export_to_hf",
            lambda: _cli("convert", "--to-hf", str(root / "dpo_export"), str(hf_export)),
        )
    check = _timed(
        summary,
        "transformers_check",
        lambda: _compare_with_transformers(root / "dpo_export", hf_export, hf_dir),
    )
    summary.update(
        {
            "hf_dir": str(hf_dir),
            "sft": {
                "held_out_assistant_loss_start": sft["first"]["loss"],
                "held_out_assistant_loss_end": sft["last"]["loss"],
            },
            "dpo": {
                "held_out_accuracy_start": dpo["first"]["accuracy"],
                "held_out_accuracy_end": dpo["last"]["accuracy"],
                "logp_accuracy_start": dpo["first"]["logp_accuracy"],
                "logp_accuracy_end": dpo["last"]["logp_accuracy"],
            },
            "chat": {"question": args.question, "answer": answer},
            "transformers": check,
        }
    )
    (root / "hf_finetune_summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
