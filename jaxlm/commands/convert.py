"""`jaxlm convert`: Hugging Face Llama-family and MoE checkpoints in and out of jaxlm.

    jaxlm convert --from-hf HF_DIR OUT [--dtype bfloat16] [--mesh 1,-1,1]
                                       [--tokenizer PATH | --no-tokenizer]
    jaxlm convert --to-hf SRC OUT [--dtype bfloat16] [--max-shard-size 5GB] [--step N]
    jaxlm convert --to-peft ADAPTERS OUT

--from-hf reads a transformers checkpoint directory (config.json and safetensors,
sharded index supported; pickle .bin files are refused) of model type llama, mistral,
qwen2, qwen3, or the mixtures of experts qwen3_moe and mixtral (jaxlm.hf.config_map says
what maps to what and what is refused), and writes a params directory in the layout
`jaxlm export` writes (jaxlm.checkpointing.params_io), so `train.init_from=OUT`,
`jaxlm generate OUT` and `jaxlm eval OUT` use it. Tensors load straight into their
shardings on the --mesh (data,fsdp,tensor; default all devices on fsdp). The tokenizer comes along
whatever its kind: HF_DIR/tokenizer.model when it is a SentencePiece model with jaxlm's
pinned ids (pad 0, <s> 1, </s> 2, <unk> 3, <|im_start|> 4, <|im_end|> 5, byte fallback),
which jaxlm's own exports are; otherwise the model's Hugging Face tokenizer
(tokenizer.json with tokenizer_config.json, special_tokens_map.json, the chat template
and generation_config.json's stop tokens), stored as OUT/hf_tokenizer.json
(jaxlm.data.hf_tokenizer). A tokenizer that cannot be used is an error naming the file
and why; --tokenizer PATH picks another one (a .model, a tokenizer.json or a directory),
--no-tokenizer imports the weights alone.

--to-hf reads SRC, a training workdir (its newest good checkpoint, or --step; LoRA
runs merged) or a params directory, and writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load with no custom code (jaxlm.hf.export_hf, jaxlm.hf.tokenizer_export): Llama,
Qwen2, Qwen3, Qwen3-MoE or Mixtral by the features the model uses; a model
whose tokenizer was imported gets the imported tokenizer files back unchanged. A
reward model (model.score_head) is written for `AutoModelForSequenceClassification`
instead (one label; see jaxlm.hf.export_hf for which token its logit reads).

--to-peft reads an adapters-only export (`jaxlm export RUN ADAPTERS --adapters-only`)
and writes a PEFT adapter directory (adapter_config.json, adapter_model.safetensors;
jaxlm.hf.export_peft) that `peft.PeftModel.from_pretrained` applies to the
transformers model `--to-hf` made of the adapters' base.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
from pathlib import Path

from jaxlm.config import Config, DataConfig
from jaxlm.errors import InputError

HELP = "import a Hugging Face Llama/Mistral/Qwen2/Qwen3/Qwen3-MoE/Mixtral checkpoint, or export one"

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10}
_SIZE_UNITS.update({"MIB": 2**20, "GIB": 2**30})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from-hf", action="store_true", help="SRC is a transformers checkpoint directory"
    )
    direction.add_argument(
        "--to-hf", action="store_true", help="SRC is a jaxlm workdir or params directory"
    )
    direction.add_argument(
        "--to-peft",
        action="store_true",
        help="SRC is LoRA adapters (export --adapters-only); OUT is a PEFT adapter directory",
    )
    parser.add_argument("src", metavar="SRC", help="what to convert")
    parser.add_argument("out", metavar="OUT", help="a new directory")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="dtype of the written weights (default: float32 for --from-hf, the "
        "model's param dtype for --to-hf)",
    )
    parser.add_argument(
        "--mesh",
        default="1,-1,1",
        help="--from-hf: data,fsdp,tensor mesh the params load onto (default 1,-1,1)",
    )
    tokenizer = parser.add_mutually_exclusive_group()
    tokenizer.add_argument(
        "--tokenizer",
        default=None,
        help="--from-hf: the tokenizer to import instead of HF_DIR's (a .model, a "
        "tokenizer.json or a model directory)",
    )
    tokenizer.add_argument(
        "--no-tokenizer", action="store_true", help="convert the weights without a tokenizer"
    )
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        help="--to-hf: largest safetensors shard, e.g. 5GB, 500MB, 2GiB (default 5GB)",
    )
    parser.add_argument("--step", type=int, default=None, help="--to-hf from a workdir: step")


def parse_size(text: str) -> int:
    """Bytes of '5GB' (10^9), '2GiB' (2^30), '1000' ...; InputError otherwise."""

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise InputError(f"--max-shard-size {text!r}: expected e.g. 5GB, 500MB, 2GiB or bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).absolute()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new directory")
    if args.from_hf:
        return _from_hf(args, Path(args.src).absolute(), out)
    if args.to_peft:
        return _to_peft(Path(args.src).absolute(), out)
    return _to_hf(args, Path(args.src).absolute(), out)


def _to_peft(src, out) -> int:
    from jaxlm.checkpointing.adapters_io import read_adapters
    from jaxlm.hf.export_peft import export_to_peft

    adapters, cfg, record = read_adapters(src)
    export_to_peft(adapters, cfg, out)
    print(f"exported adapters {src} -> {out} (PEFT LoRA, r={cfg.model.lora_rank})")
    print(f"  apply them to the --to-hf export of their base: {record.get('trained_from')}")
    return 0


def _from_hf(args, src, out) -> int:
    from jaxlm.checkpointing.params_io import save_params
    from jaxlm.data.tokenizer import save_tokenizer
    from jaxlm.hf.import_hf import import_params, read_hf_config
    from jaxlm.sharding import mesh_from_flag

    imported = read_hf_config(src)
    for note in imported.notes:
        print(f"note: {note}")
    model = imported.model
    tokenizer = None if args.no_tokenizer else _import_tokenizer(args, src, model)
    dtype = args.dtype or "float32"
    model = dataclasses.replace(model, param_dtype=dtype)
    mesh = mesh_from_flag(args.mesh)
    params = import_params(src, model, mesh, dtype=dtype, family=imported.family)
    stored = None
    if tokenizer is not None:
        stored = out / (
            "hf_tokenizer.json" if tokenizer.kind == "huggingface" else "tokenizer.model"
        )
    data = DataConfig(
        tokenizer=str(stored) if stored else "",
        tokenizer_vocab_size=model.vocab_size,
        seq_len=min(256, model.max_seq_len),
    )
    cfg = Config(name=f"hf-{imported.family}", model=model, data=data)
    with tempfile.TemporaryDirectory() as tmp:
        source = None
        if tokenizer is not None and tokenizer.kind == "huggingface":
            source = Path(tmp) / "hf_tokenizer.json"
            source.write_bytes(tokenizer.bundle())
        elif tokenizer is not None:
            # Written with jaxlm's sidecar: HF_DIR/tokenizer.json is transformers' file.
            source = save_tokenizer(tokenizer.model_proto, Path(tmp) / "tokenizer").path
        save_params(out, params, cfg, tokenizer=source)
    print(f"imported {imported.family} checkpoint {src} -> {out}")
    print(f"  params     {out / 'params'}  ({dtype}, mesh {dict(mesh.shape)})")
    print(f"  config     {out / 'config.json'}")
    if tokenizer is None:
        print("  tokenizer  (none)")
    else:
        template = "jaxlm ChatML" if tokenizer.kind != "huggingface" else "the model's own"
        if tokenizer.kind == "huggingface" and tokenizer.chat_template_source() is None:
            template = "none"
        print(
            f"  tokenizer  {stored}  ({tokenizer.kind}, {tokenizer.vocab_size} tokens, "
            f"chat template: {template})"
        )
    return 0


def _import_tokenizer(args, src, model):
    """The tokenizer to import, checked to be usable by jaxlm and to fit the model."""
    from jaxlm.data.hf_tokenizer import HFTokenizer
    from jaxlm.data.tokenizer import Tokenizer
    from jaxlm.data.tokenizer_files import load_tokenizer

    if args.tokenizer:
        path = Path(args.tokenizer).absolute()
        if not path.exists():
            raise FileNotFoundError(f"--tokenizer: no such file or directory {path}")
        tokenizer = load_tokenizer(path)
    else:
        tokenizer, path = _own_tokenizer(src, Tokenizer, HFTokenizer)
    if tokenizer.vocab_size > model.vocab_size:
        raise InputError(
            f"{path}: {tokenizer.vocab_size} tokens, more than the model's vocab_size "
            f"{model.vocab_size}"
        )
    return tokenizer


def _own_tokenizer(src, sentencepiece, huggingface):
    """HF_DIR's tokenizer: a jaxlm SentencePiece model (jaxlm's own exports), else the
    Hugging Face tokenizer.json."""
    model_file, json_file = src / "tokenizer.model", src / "tokenizer.json"
    reason = None
    if model_file.is_file():
        try:
            # Not Tokenizer.load: HF_DIR/tokenizer.json is transformers' file, no sidecar.
            return sentencepiece(model_file.read_bytes(), model_file), model_file
        except InputError as error:
            reason = str(error)
    if json_file.is_file():
        return huggingface.load(src), json_file
    if reason is not None:
        raise InputError(
            f"{reason}; and {src} has no tokenizer.json, which jaxlm reads for any other "
            "tokenizer (save one with transformers: AutoTokenizer.from_pretrained(DIR)"
            ".save_pretrained(DIR)), or pass --tokenizer PATH or --no-tokenizer"
        )
    raise InputError(
        f"{src}: no tokenizer (neither tokenizer.json nor tokenizer.model); pass "
        "--tokenizer PATH or --no-tokenizer to import the weights alone"
    )


def _to_hf(args, src, out) -> int:
    from jaxlm.checkpointing.params_io import (
        PARAMS_DIR,
        load_params,
        read_params_config,
        restore_params,
    )
    from jaxlm.data.tokenizer_files import load_tokenizer
    from jaxlm.data.workdir_tokenizer import TOKENIZER_FILE, owned_tokenizer
    from jaxlm.hf.export_hf import export_to_hf

    max_shard_bytes = parse_size(args.max_shard_size)
    if (src / PARAMS_DIR).is_dir():
        if read_params_config(src).model.lora_rank:
            raise InputError(
                f"{src}: holds LoRA adapters alone; convert them with --to-peft, or export "
                "the run merged"
            )
        params, cfg = load_params(src)
        what = str(src)
    elif (src / "checkpoints").is_dir():
        params, cfg, step = restore_params(src, step=args.step)
        what = str(src / "checkpoints" / str(step))
    else:
        raise FileNotFoundError(
            f"{src} is neither a params directory (no {PARAMS_DIR}/) nor a training workdir "
            "(no checkpoints/)"
        )
    tokenizer = None
    if not args.no_tokenizer:
        found = owned_tokenizer(src, cfg.data.tokenizer)  # SRC's own copy, never the cwd's
        if found is None:
            raise FileNotFoundError(
                f"{src}: the model's tokenizer is missing ({src / TOKENIZER_FILE}; "
                f"data.tokenizer '{cfg.data.tokenizer}'); pass --no-tokenizer to export the "
                "weights alone"
            )
        tokenizer = load_tokenizer(found)
    files = export_to_hf(
        params, cfg, out, tokenizer=tokenizer, dtype=args.dtype, max_shard_bytes=max_shard_bytes
    )
    print(f"exported {what} -> {out} ({len(files)} safetensors file(s))")
    return 0
