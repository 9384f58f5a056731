"""`jaxlm init`: write a starter experiment file for one's own data.

    jaxlm init mine.py --data 'jsonl:pretrain_hq.jsonl' --preset minimind-26m
    jaxlm init sft.py --data 'jsonl:sft_mini_512.jsonl' --format chat --init-from runs/pre
    jaxlm train ./mine.py --workdir runs/mine

The file is an ordinary experiment (a docstring and `get_config()`), commented key by
key, with the given sources, format, tokenizer, model and length filled in. Before it
is written, its config is resolved the way `jaxlm train` will (so a bad source, an
unknown preset or format is said now, not at the first run). An existing file is
never overwritten unless --force.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.errors import InputError

HELP = "write a starter experiment file for your own data (then: jaxlm train ./FILE.py)"

# A learning rate to start from, per objective (MiniMind's own choices are close):
# pretraining from scratch tolerates a large one; fine-tuning a trained model does not.
_LR = {"text": "1e-3", "chat": "1e-4", "preference": "1e-6"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the experiment file to write (.py)")
    parser.add_argument("--data", required=True, help="training sources (data.sources)")
    parser.add_argument("--eval-data", default="", help="held-out sources (data.eval_sources)")
    parser.add_argument(
        "--format", default="text", choices=["text", "chat", "preference"], help="data.format"
    )
    parser.add_argument("--tokenizer", default="", help="a tokenizer .model (data.tokenizer)")
    parser.add_argument(
        "--preset", default="", help="model preset (default minimind-26m; not with --init-from)"
    )
    parser.add_argument("--init-from", default="", help="a workdir or export to start from")
    parser.add_argument("--epochs", type=float, default=1.0, help="train.epochs (default 1)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace) -> int:
    # Imports wait for the command: `jaxlm --help` imports every command module.
    from jaxlm.training.experiment import load_experiment, resolve_config

    path = Path(args.file)
    if path.suffix != ".py":
        raise InputError(f"{path}: an experiment file must end in .py")
    if path.exists() and not args.force:
        raise InputError(f"{path} exists; choose another name or pass --force to overwrite it")
    if args.preset and args.init_from:
        raise InputError(
            "--preset and --init-from both choose the model: the train.init_from model's "
            "shape is used; drop --preset"
        )
    text = starter_text(args, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_bytes() if path.exists() else None
    path.write_text(text, encoding="utf-8")
    try:  # what `jaxlm train FILE` will resolve, checked before anyone runs it
        cfg = resolve_config(load_experiment(str(path)), [], path.stem)
    except Exception:
        if previous is None:
            path.unlink()
        else:
            path.write_bytes(previous)
        raise
    print(f"wrote {path}: {cfg.data.format} data {cfg.data.sources}, {_model_text(cfg, args)}")
    print(f"see the resolved config:  jaxlm config {_shell_path(path)}")
    print(f"train it:                 jaxlm train {_shell_path(path)} --workdir runs/{cfg.name}")
    return 0


def starter_text(args: argparse.Namespace, path: Path) -> str:
    """The experiment file's text."""
    name = _plain_name(path.stem)
    fmt = args.format
    imports = "from jaxlm.config import Config, DataConfig, {}OptimConfig, TrainConfig"
    if args.init_from:
        imports = imports.format("ModelConfig, ")
        model_line = (
            "    # The model's shape (and max_seq_len, RoPE) comes from train.init_from; a\n"
            "    # field set here must match it, except max_seq_len and rope_* (extension).\n"
            "    model = ModelConfig()\n"
        )
    else:
        preset = args.preset or "minimind-26m"
        imports = "import dataclasses\n\n" + imports.format("")
        imports += "\nfrom jaxlm.presets import get_preset"
        vocab = _tokenizer_pieces(args.tokenizer)
        model_line = (
            "    # The model: a named preset (`jaxlm presets` lists them with their sizes),\n"
            "    # with any field changed here, e.g. n_layers=16.\n"
            f"    model = dataclasses.replace(\n        get_preset({_q(preset)}),\n"
            + (f"        vocab_size={vocab},  # the pieces of {args.tokenizer}\n" if vocab else "")
            + "    )\n"
        )
    tokenizer_comment = "A tokenizer .model; empty: the init_from model's, or one trained here."
    return f'''"""{name}: {_what(fmt)} on {args.data}.

Written by `jaxlm init`; edit freely. Source paths are relative to the directory you
run jaxlm in. Run it, see its resolved config, or change a key for one run:

    jaxlm train {_shell_path(path)} --workdir runs/{name}
    jaxlm config {_shell_path(path)}
    jaxlm train {_shell_path(path)} --workdir runs/{name} --set optim.lr=3e-4

Running the same command again resumes from the last checkpoint.
"""

{imports}


def get_config() -> Config:
{model_line}    return Config(
        name={_q(name)},
        model=model,
        data=DataConfig(
            # jaxlm.source_spec syntax: comma-separated, each optionally @WEIGHT, e.g.
            # "jsonl:a/*.jsonl@3,jsonl:b.jsonl@1".
            sources={_q(args.data)},
            # Empty: hold out data.val_fraction of the sources (by a stable hash).
            eval_sources={_q(args.eval_data)},
            # text: {{"text": ...}} documents; chat: {{"conversations": [...]}} (loss
            # on assistant turns); preference: {{"chosen": [...], "rejected": [...]}}.
            format={_q(fmt)},
            # {tokenizer_comment}
            tokenizer={_q(args.tokenizer)},
            # seq_len: tokens per packed row; unset means model.max_seq_len.
            batch_size=16,  # sequences per step, across all devices
        ),
        optim=OptimConfig(lr={_LR[fmt]}, warmup_steps=100, schedule="cosine"),
        train=TrainConfig(
            init_from={_q(args.init_from)},  # a workdir or `jaxlm export` directory, or ""
            # The length: epochs over the packed data (the step count is printed at
            # the start), or steps=N instead.
            epochs={args.epochs!r},
            eval_every=500,
            checkpoint_every=500,
        ),
    )


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
'''


def _tokenizer_pieces(path: str) -> int:
    """The vocabulary size of the tokenizer at `path` (0: none given)."""
    if not path:
        return 0
    from jaxlm.data.tokenizer_files import load_tokenizer  # heavy: only for this command

    return load_tokenizer(Path(path)).vocab_size


def _q(text: str) -> str:
    """A Python string literal in the quotes ruff format writes (JSON's are valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def _what(fmt: str) -> str:
    return {"text": "pretraining", "chat": "supervised fine-tuning", "preference": "DPO"}[fmt]


def _plain_name(stem: str) -> str:
    """A run name from the file name (the config's `name` is a directory name)."""
    return stem.strip(". ") or "run"


def _shell_path(path: Path) -> str:
    """FILE as typed, with ./ added so `jaxlm train` reads it as a file."""
    text = str(path)
    return text if path.is_absolute() or text.startswith(".") else f"./{text}"


def _model_text(cfg, args: argparse.Namespace) -> str:
    if args.init_from:
        return f"model from {args.init_from}"
    return f"model {args.preset or 'minimind-26m'} (d_model {cfg.model.d_model})"
