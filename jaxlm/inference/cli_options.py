"""Command-line options shared by `jaxlm generate` and `jaxlm chat` (`--adapters` by eval too)."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an export directory or a training workdir")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="model.KEY=VALUE",
        help="change a setting that keeps the weights' shapes, e.g. model.rope_scaling=yarn",
    )
    parser.add_argument(
        "--mesh",
        default=None,
        metavar="D,F,T",
        help="shard the model over a (data, fsdp, tensor) mesh of the local devices, e.g. 1,1,8",
    )
    add_adapters_argument(parser)
    # The choices are spelt here, not imported: jaxlm --help must not load JAX.
    parser.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: keep the weights (all but norms and biases) as int8 with a float32 scale "
        "per output channel, about a quarter of float32's memory; applied after --adapters "
        "are merged (default %(default)s)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "bfloat16", "int8"],
        default="auto",
        help="the KV cache's storage: auto = the model's compute dtype; int8 has a float32 "
        "scale per token and KV head (default %(default)s)",
    )


def add_adapters_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapters",
        default=None,
        metavar="DIR",
        help="LoRA adapters (`jaxlm export RUN DIR --adapters-only`) to apply to MODEL, "
        "which must be the base they were trained on",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    group.add_argument("--min-p", type=float, default=0.0, help="relative floor (0 = off)")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    group.add_argument("--seed", type=int, default=0)


def sampling_config(args: argparse.Namespace):
    from jaxlm.inference.sampling import SamplingConfig

    return SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
    )


def load_model_from_args(args: argparse.Namespace):
    """(LoadedModel, mesh or None) for the MODEL, --set, --mesh, --adapters and
    --quantize options (what generate, chat and serve share)."""
    from jaxlm.inference.loading import load_model
    from jaxlm.sharding import mesh_from_flag

    mesh = mesh_from_flag(args.mesh) if args.mesh else None
    model = load_model(
        args.model,
        overrides=args.overrides,
        mesh=mesh,
        adapters=args.adapters,
        quantize=args.quantize,
    )
    return model, mesh


def load(args: argparse.Namespace):
    """(LoadedModel, Generator) for the model options and --kv-cache-dtype."""
    from jaxlm.inference.decode import Generator

    model, mesh = load_model_from_args(args)
    generator = Generator(
        model.cfg.model,
        model.graphdef,
        model.params,
        mesh=mesh,
        kv_cache_dtype=args.kv_cache_dtype,
        token_limit=model.tokenizer.vocab_size,
    )
    return model, generator
