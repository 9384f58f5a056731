"""`jaxlm launch -n N [--port P] -- COMMAND ...`: a multi-process job on this machine.

See jaxlm.runtime.launch for what the launcher does with output, signals and failures.
"""

from __future__ import annotations

import argparse

from jaxlm.errors import InputError

HELP = "run N processes of a command (e.g. jaxlm train ...) as one multi-process JAX job"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--num-processes", type=int, required=True, help="how many processes to start"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: the command each process runs, e.g. `jaxlm train quickstart`",
    )


def run(args: argparse.Namespace) -> int:
    from jaxlm.runtime.launch import launch

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise InputError("jaxlm launch: no command given (e.g. -- jaxlm train quickstart)")
    if args.num_processes < 1:
        raise InputError(f"jaxlm launch: -n must be at least 1, got {args.num_processes}")
    return launch(command, args.num_processes, args.port)
