"""The `jaxlm` command line.

    jaxlm train [EXPERIMENT] [--preset NAME] [--data SOURCES] [--format FORMAT]
                [--tokenizer PATH] [--init-from DIR] [--workdir DIR] [--set key=value ...]
    jaxlm config [EXPERIMENT] [same flags]             print the resolved config
    jaxlm init FILE --data SOURCES ...                 write a starter experiment file
    jaxlm presets                                      list model presets and sizes
    jaxlm data clean|tokenize|inspect ...              corpus preparation
    jaxlm tokenizer train|eval|extend ...              tokenizer tooling
    jaxlm checkpoint ...                               checkpoint tools
    jaxlm reward score --model RM --input FILE         a reward model's scores
    jaxlm launch -n N -- jaxlm train ...               N processes as one job, here

Run `jaxlm GROUP NAME --help` for the flags of each.

EXPERIMENT is an experiment's name (e.g. `quickstart`: looked up in $JAXLM_EXPERIMENTS,
./experiments and the experiments shipped with jaxlm) or a path to an experiment
file; an experiment is a module with a docstring and `get_config()`. Without one the
run starts from jaxlm.config's defaults. The flags are short for `--set` keys
(--preset: model.preset, --data: data.sources, --eval-data: data.eval_sources,
--format: data.format, --tokenizer: data.tokenizer, --init-from: train.init_from)
and come before the `--set` overrides.

Exit status of `jaxlm train` (every error is one `jaxlm: error: ...` line on stderr;
a traceback means a bug in jaxlm):
    0    the run finished, or was stopped by SIGTERM/SIGINT after saving
         (jaxlm.runtime.preemption); the same command resumes it
    2    bad input: a file, record, key or argument (jaxlm.errors.InputError)
    3    the run stopped itself: a non-finite loss or a run of loss spikes; the line
         names the step and the last checkpoint, which the save in flight was waited for
    74   a checkpoint or metrics file could not be written (full disk, read-only
         directory); the line names the step, the path and the OS error (EX_IOERR)
    75   the step-time watchdog ended a stuck run (jaxlm.runtime.watchdog): rerun to resume
         (EX_TEMPFAIL); a process whose peer was lost is ended by JAX (134) after a
         jaxlm line naming the lost process (jaxlm.runtime.distributed)
    128+N  a second signal N (143 for SIGTERM, 130 for SIGINT) stopped the run at once,
         without waiting for a save
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType

from jaxlm.commands import GROUP_HELP, discover
from jaxlm.errors import InputError, RunStoppedError, StorageError
from jaxlm.presets import PRESETS
from jaxlm.runtime import compilation_cache
from jaxlm.runtime.cpu import configure_cpu
from jaxlm.runtime.goodput import format_summary
from jaxlm.training.experiment import load_experiment, resolve_config


def print_result(result) -> None:
    """What a finished (or preempted) run produced, where it is, and where the time went."""
    ev = result.final_eval
    print()
    if result.preempted:
        print(f"stopped by a signal after step {result.steps}, which is saved; run the same")
        print("command again to resume from there")
    else:
        print(f"finished {result.steps} steps in {result.wall_seconds:.0f}s")
        if result.epochs:  # the step count train.epochs came to (jaxlm.training.epochs)
            print(
                f"train.epochs={result.epochs:g}: {result.epoch_sequences} packed sequences "
                "per epoch, rounded up to whole steps"
            )
        if "prompts" in ev:  # an RL run (jaxlm.training.tasks.rl): rewards, no loss
            print(f"held-out reward      {ev['reward']:.4f} over {ev['prompts']:.0f} prompts")
            if "accuracy" in ev:  # the "answer" reward: greedy accuracy and pass@k
                k = next(key for key in ev if key.startswith("pass_at_"))
                print(f"greedy accuracy      {ev['accuracy']:.4f}   {k} {ev[k]:.4f}")
        elif "accuracy" in ev:  # a preference run
            print(
                f"held-out preference accuracy {ev['accuracy']:.4f} over {ev['pairs']:.0f} pairs"
                f" ({ev.get('reward_ties', 0.0):.0%} ties, counted half)"
            )
            if "logp_accuracy" in ev:  # DPO and friends (a reward model has only its scores)
                print(
                    f"log-prob ranking accuracy    {ev['logp_accuracy']:.4f}   (reference-free: "
                    "chosen's mean token log-prob is higher)"
                )
            print(f"held-out preference loss     {ev['loss']:.4f}   margin {ev['margin']:.4f}")
        else:
            print(f"held-out loss        {ev['loss']:.4f} nats/token")
            if result.gzip_bits_per_byte is not None:
                baseline = f"gzip -9 on the same bytes: {result.gzip_bits_per_byte:.4f}"
                others = {"bz2 -9": "bz2_bits_per_byte", "xz -9e": "xz_bits_per_byte"}
                for name, key in others.items():
                    if key in result.compressors:
                        baseline += f", {name} {result.compressors[key]:.4f}"
            else:
                baseline = f"no gzip baseline: {result.gzip_note}"
            print(f"held-out bits/byte   {ev['bits_per_byte']:.4f}   ({baseline})")
    for line in data_loss_lines(result.data_counts):
        print(line)
    if result.completion:
        print("greedy completion (prompt, then the model's continuation after »):")
        print("-" * 60)
        print(f"{result.prompt}»{result.completion}")
        print("-" * 60)
    if result.timing:
        print(format_summary(result.timing))
    print("artefacts:")
    for name, path in result.artefacts.items():
        print(f"  {name:12s} {path}")


# Data counters that mean records or tokens did not reach training, and what to do.
DATA_LOSSES = {
    "chat_skipped_truncated_to_nothing": "conversations truncated to nothing (no assistant "
    "token left within data.seq_len; raise data.seq_len)",
    "chat_truncated": "conversations cut at data.seq_len (their tail has no loss)",
    "chat_skipped_no_assistant": "conversations without an assistant turn, skipped",
    "pairs_skipped": "preference pairs skipped (a response empty or truncated away; raise "
    "data.seq_len)",
    "malformed_records": "malformed records skipped (data.on_bad_record=skip)",
    "empty_documents": "empty documents dropped",
}


def data_loss_lines(counts: dict[str, int]) -> list[str]:
    """A console line for each non-zero count of data that did not reach training."""
    return [f"data: {counts[key]:,} {what}" for key, what in DATA_LOSSES.items() if counts.get(key)]


def run_experiment(module: ModuleType, argv: list[str] | None = None) -> int:
    """`python -m experiments.NAME [--workdir DIR] [--set k=v ...]` entry point."""
    configure_cpu()
    parser = argparse.ArgumentParser(description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)
    compilation_cache.enable()
    try:
        return _train(module, args.overrides, args.workdir)
    except (InputError, FileNotFoundError) as e:
        return _fail(e, 2)


EXIT_RUN_STOPPED = 3
EXIT_STORAGE = 74  # EX_IOERR from sysexits.h


def _fail(error: BaseException, status: int) -> int:
    print(f"jaxlm: error: {error}", file=sys.stderr, flush=True)
    return status


def _end_now(status: int) -> None:
    """Ends the process without the interpreter's shutdown.

    After a failed or abandoned save, Orbax's other writer threads of that save may
    wait on each other for up to its 20-minute timeout (they are not daemon threads,
    so Python's shutdown would wait too), or fail noisily once the interpreter tears
    down their event loops. Nothing is left to save: the error line is out, the
    finished checkpoints are on disk.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _train(module: ModuleType | None, overrides: list[str], workdir: str | None) -> int:
    from jaxlm.training.loop import train  # JAX, Orbax, Grain: only once a run starts

    cfg = resolve_config(module, overrides, _run_name(module, workdir))
    workdir = Path(workdir or Path("runs") / cfg.name)
    try:
        result = train(cfg, workdir)
    except RunStoppedError as e:
        return _fail(e, EXIT_RUN_STOPPED)
    except StorageError as e:
        _end_now(_fail(e, EXIT_STORAGE))
    except KeyboardInterrupt as e:
        from jaxlm.runtime.preemption import StopNow  # imports JAX (already loaded by now)

        if not isinstance(e, StopNow):
            raise
        _end_now(_fail(e, e.exit_status))
    import jax  # loaded by the run already; not at start-up, so `jaxlm --help` stays fast

    if jax.process_index() == 0:  # one report per job, not one per process
        print_result(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line (not a call from Python code): tune malloc
        configure_cpu()
    parser = argparse.ArgumentParser(prog="jaxlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train",
        help="train an experiment",
        epilog=__doc__[__doc__.index("Exit status") :],  # the exit statuses, from above
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_flags(p_train)
    p_cfg = sub.add_parser("config", help="print an experiment's resolved config as JSON")
    _add_run_flags(p_cfg)
    sub.add_parser("presets", help="list model presets with parameter counts")
    _add_command_groups(sub)
    args = parser.parse_args(argv)
    compilation_cache.enable()  # before anything compiles (jaxlm/runtime/compilation_cache.py)
    try:
        if hasattr(args, "run"):  # a `jaxlm GROUP NAME` command from jaxlm.commands
            return args.run(args)
        if args.command == "presets":
            from jaxlm.models import count_params  # JAX and Flax: only for this command

            for name, model_cfg in PRESETS.items():
                print(f"{name:14s} {count_params(model_cfg):>15,d} parameters")
            return 0
        module = load_experiment(args.experiment) if args.experiment else None
        overrides = _run_overrides(args)
        if args.command == "config":
            name = _run_name(module, args.workdir)
            print(resolve_config(module, overrides, name).to_json())
            return 0
        return _train(module, overrides, args.workdir)
    except (InputError, FileNotFoundError) as e:
        return _fail(e, 2)


# --FLAG: the config key it sets (before the --set overrides, which may change it).
RUN_FLAGS = {
    "preset": ("model.preset", "start the model from this preset (`jaxlm presets`)"),
    "data": ("data.sources", "training sources, e.g. 'jsonl:pretrain_hq.jsonl'"),
    "eval_data": ("data.eval_sources", "held-out sources (default: a split of --data)"),
    "format": ("data.format", "text, chat or preference"),
    "tokenizer": ("data.tokenizer", "a tokenizer .model (default: train one, or init-from's)"),
    "init_from": ("train.init_from", "a workdir or export to start from (brings its shape)"),
}


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags `jaxlm train` and `jaxlm config` share."""
    parser.add_argument(
        "experiment", nargs="?", default=None, help="name or .py file (default: none)"
    )
    for dest, (key, text) in RUN_FLAGS.items():
        parser.add_argument(f"--{dest.replace('_', '-')}", dest=dest, help=f"{text}; = {key}")
    parser.add_argument("--workdir", default=None, help="default: runs/<config name>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")


def _run_overrides(args: argparse.Namespace) -> list[str]:
    flags = [f"{key}={getattr(args, dest)}" for dest, (key, _) in RUN_FLAGS.items()
             if getattr(args, dest) is not None]  # fmt: skip
    return flags + args.overrides


def _run_name(module: ModuleType | None, workdir: str | None) -> str:
    """The config's name: the experiment's file name, else the workdir's, else "run"."""
    if module is not None:
        return Path(module.__file__).stem
    return (Path(workdir).absolute().name if workdir else "") or "run"


def _add_command_groups(sub) -> None:
    """`jaxlm GROUP NAME`, for every command module in jaxlm.commands."""
    groups, top_level = discover()
    for name, module in top_level.items():
        parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)
    for group, commands in groups.items():
        group_parser = sub.add_parser(group, help=GROUP_HELP[group])
        group_sub = group_parser.add_subparsers(dest="subcommand", required=True)
        for name, module in commands.items():
            parser = group_sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(parser)
            parser.set_defaults(run=module.run)


if __name__ == "__main__":
    sys.exit(main())
