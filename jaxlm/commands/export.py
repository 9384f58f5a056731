"""`jaxlm export`: a training run's params, tokenizer and config, for inference or a new run.

    jaxlm export runs/quickstart exports/quickstart-bf16 --dtype bfloat16
    jaxlm train quickstart --workdir runs/next --set train.init_from=exports/quickstart-bf16

Reads the params of WORKDIR's newest good checkpoint (or --step N; no optimizer state,
checksums verified, a damaged newer step skipped with a warning) and writes a params
directory OUT (layout in jaxlm.checkpointing.params_io): OUT/params, OUT/config.json (the
run's config, data.tokenizer pointing at OUT/tokenizer.model) and the tokenizer with
its .json sidecar. That is the layout `train.init_from` and `load_params` read.

A LoRA run (model.lora_rank > 0) is exported merged: W + (alpha / r) A B in every
adapted weight, a plain model needing no LoRA code (config.json says lora_rank=0).
--adapters-only writes the adapters alone instead (config.json keeps the LoRA
settings) with lora_base.json, the fingerprint of the base they were trained on
(jaxlm.checkpointing.adapters_io): `jaxlm generate|chat|eval BASE --adapters OUT`
applies them to that base and refuses any other; `jaxlm convert --to-peft OUT PEFT`
writes them for transformers + peft.

--dtype bfloat16 stores the params rounded to bfloat16 (half the bytes). config.json
keeps the run's model.param_dtype: loading casts the arrays to the dtype of the model
they load into, so a bfloat16 export still starts an fp32-param run, from the rounded
values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxlm.config import config_from_dict
from jaxlm.errors import InputError

HELP = "write a run's params (optionally as bfloat16), tokenizer and config to a directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workdir", metavar="WORKDIR", help="a training run's workdir")
    parser.add_argument("out", metavar="OUT", help="a new directory for the export")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="store the params in this dtype (default: as trained)",
    )
    parser.add_argument(
        "--step", type=int, default=None, help="export this step (default: newest good)"
    )
    parser.add_argument(
        "--adapters-only",
        action="store_true",
        help="a LoRA run: write only its adapters (default: merged into the base weights)",
    )


def run(args: argparse.Namespace) -> int:
    # JAX and numpy load when the command runs: `jaxlm --help` imports every command module.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.checkpointing.params_io import restore_params, save_params
    from jaxlm.data.tokenizer_files import stored_name
    from jaxlm.data.workdir_tokenizer import require_owned_tokenizer

    workdir, out = Path(args.workdir).absolute(), Path(args.out).absolute()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new directory")
    if not workdir.is_dir():
        raise FileNotFoundError(f"no such workdir: {workdir}")
    fingerprint = None
    if args.adapters_only:
        params, cfg, step, fingerprint = _restore_adapters(workdir, args.step)
    else:
        params, cfg, step = restore_params(workdir, step=args.step)
    tokenizer = require_owned_tokenizer(workdir, cfg.data.tokenizer)  # never the cwd's
    if args.dtype is not None:
        dtype = jnp.dtype(args.dtype)
        params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
    data = cfg.to_dict()
    data["data"]["tokenizer"] = str(out / stored_name(tokenizer))  # self-contained
    save_params(out, params, config_from_dict(data), tokenizer=tokenizer)
    if fingerprint is not None:
        from jaxlm.checkpointing.adapters_io import write_base_record

        write_base_record(
            out, fingerprint=fingerprint, trained_from=cfg.train.init_from, tokenizer=tokenizer
        )
    stored = args.dtype or cfg.model.param_dtype
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))
    print(f"exported {workdir / 'checkpoints' / str(step)} -> {out}")
    print(f"  params     {out / 'params'}  ({stored}, {nbytes / 2**20:.1f} MiB)")
    print(f"  config     {out / 'config.json'}")
    print(f"  tokenizer  {out / stored_name(tokenizer)}")
    if fingerprint is not None:
        base = cfg.train.init_from or "a random base"
        print(f"  base       {out / 'lora_base.json'}  (trained on {base})")
        print(f"apply them: jaxlm generate|chat|eval BASE --adapters {out}")
    return 0


def _restore_adapters(workdir, step):
    """(adapters, the run's Config, step, base fingerprint) of a LoRA run's checkpoint.

    The frozen base is read too, only to fingerprint it: the base the adapters were
    trained on is the checkpoint's, whatever train.init_from points at today.
    """
    from jaxlm.checkpointing.adapters_io import base_fingerprint
    from jaxlm.checkpointing.manager import Checkpointer
    from jaxlm.models.params import abstract_lora

    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:

        def target(saved: dict) -> dict:
            model = config_from_dict(saved).model
            if not model.lora_rank:
                raise InputError(f"{workdir}: not a LoRA run (model.lora_rank=0)")
            _, adapters, base = abstract_lora(model)
            return {"params": adapters, "frozen": base}

        restored = checkpointer.restore_latest_good(
            target, partial=True, steps=None if step is None else [step]
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise InputError(f"{checkpointer.directory} holds no finished checkpoint")
    fingerprint = base_fingerprint(restored.state["frozen"])
    cfg = config_from_dict(restored.config)
    return restored.state["params"], cfg, restored.step, fingerprint
