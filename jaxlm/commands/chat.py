"""`jaxlm chat`: talk to a chat model in the terminal, tokens streamed as they come.

    jaxlm chat runs/chain/sft_export --system "You write Python." --temperature 0.7

Uses the chat template stored with the model's tokenizer (the layout SFT trained
on), keeps the conversation, and drops the oldest exchanges (saying so) when it no
longer fits the model's context. Type /reset to start over, /quit (or Ctrl-D, or
Ctrl-C at the prompt) to leave; Ctrl-C while a reply streams stops that reply. Reads
one message per line from standard input, so it can also be piped.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import sys
import threading

from jaxlm.errors import InputError

HELP = "chat with a model interactively (chat template, history, streaming)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxlm.inference.cli_options import add_model_arguments, add_sampling_arguments

    add_model_arguments(parser)
    parser.add_argument("--system", default="", help="a system message for the conversation")
    add_sampling_arguments(parser, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from jaxlm.inference.chat_session import ChatSession
    from jaxlm.inference.cli_options import load, sampling_config

    sampling = sampling_config(args)
    model, generator = load(args)
    session = ChatSession(
        generator,
        model.tokenizer,
        system=args.system,
        sampling=sampling,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    interactive = sys.stdin.isatty()
    print(
        f"chatting with {model.source} ({model.tokenizer.chat_template.name} template); "
        "/reset starts over, /quit leaves",
        file=sys.stderr,
    )
    try:
        return _converse(session, interactive)
    except KeyboardInterrupt:  # Ctrl-C at the prompt: leave, like Ctrl-D
        sys.stdout.write("\n")
        return 0


def _converse(session, interactive: bool) -> int:
    while True:
        if interactive:
            sys.stdout.write("\n> ")
            sys.stdout.flush()
            _wait_for_input()
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/quit":
            return 0
        if text.strip() == "/reset":
            session.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        if not text.strip():
            continue
        dropped = session.dropped
        try:
            with _ctrl_c_stops_the_reply() as pressed:
                session.reply(
                    text,
                    on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
                    should_stop=pressed.is_set,
                )
        except InputError as error:
            print(f"[{error}]", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        if pressed.is_set():
            print("[reply interrupted]", file=sys.stderr)
        if session.dropped > dropped:
            print(
                f"[context full: dropped the {session.dropped - dropped} oldest messages]",
                file=sys.stderr,
            )


def _wait_for_input() -> None:
    """Waits until a line can be read, waking 4 times a second. Python raises
    KeyboardInterrupt in the main thread between bytecodes; a SIGINT that comes just
    before the main thread enters read(), or that the kernel hands to one of JAX's
    threads, does not interrupt that read(), and Ctrl-C at the prompt did nothing."""
    while not select.select([sys.stdin], [], [], 0.25)[0]:
        pass


@contextlib.contextmanager
def _ctrl_c_stops_the_reply():
    """While a reply is generated, Ctrl-C sets an event the generation loop reads at
    the next token, instead of raising KeyboardInterrupt wherever the main thread is:
    mostly inside a JAX dispatch, which gave a traceback and (as reported) a
    Segmentation fault at exit."""
    pressed = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.set())
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
