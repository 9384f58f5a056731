"""`jaxlm chat`: talk to a chat model in the terminal, tokens streamed as they come.

    jaxlm chat runs/chain/sft_export --system "You write Python." --temperature 0.7

Uses the chat template stored with the model's tokenizer (the layout SFT trained
on), keeps the conversation, and drops the oldest exchanges (saying so) when it no
longer fits the model's context. On a terminal, lines are edited with GNU readline
(arrows, Home/End, Ctrl-R) and kept in a history file (--history). Type /reset to
start over, /quit or Ctrl-D to leave (status 0). Ctrl-C while a reply streams stops
that reply; Ctrl-C at the prompt clears the line, and a second one in a row leaves
with status 130 (jaxlm.inference.terminal says how Ctrl-C is kept out of JAX).
--think hide keeps a reasoning model's <think>...</think> off the screen; the
conversation history keeps the whole reply. Reads one message per line from
standard input, so it can also be piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxlm.errors import InputError

HELP = "chat with a model interactively (chat template, history, streaming)"
EXIT_CTRL_C = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxlm.inference.cli_options import add_model_arguments, add_sampling_arguments

    add_model_arguments(parser)
    parser.add_argument("--system", default="", help="a system message for the conversation")
    parser.add_argument(
        "--think",
        choices=("show", "hide"),
        default="show",
        help="show (default) or hide the reasoning a model writes between <think> and </think>",
    )
    parser.add_argument(
        "--history",
        default=os.path.join("~", ".jaxlm_chat_history"),
        metavar="FILE",
        help="where typed lines are kept between sessions (default: %(default)s; '' for none)",
    )
    add_sampling_arguments(parser, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    from jaxlm.inference.chat_session import ChatSession
    from jaxlm.inference.cli_options import load, sampling_config
    from jaxlm.inference.terminal import LineReader

    sampling = sampling_config(args)
    try:
        model, generator = load(args)
    except KeyboardInterrupt:  # Ctrl-C while the model loads: leave without a traceback
        print(file=sys.stderr)
        return EXIT_CTRL_C
    session = ChatSession(
        generator,
        model.tokenizer,
        system=args.system,
        sampling=sampling,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    history = Path(args.history).expanduser() if args.history else None
    reader = LineReader("> ", history)
    template = model.tokenizer.chat_template
    if getattr(model.tokenizer, "kind", None) == "huggingface":
        layout = "its own chat template"
    else:
        layout = f"{template.name} template"
    print(
        f"chatting with {model.source} ({layout}); /reset starts over, /quit leaves",
        file=sys.stderr,
    )
    try:
        return _converse(session, reader, args.think)
    finally:
        reader.save_history()


def _converse(session, reader, think_mode: str) -> int:
    ctrl_c_before = False  # the previous prompt ended with Ctrl-C
    while True:
        try:
            if reader.interactive:
                sys.stdout.write("\n")
            text = reader.read()
            ctrl_c_before = False
            if text.strip() == "/quit":
                return 0
            if text.strip() == "/reset":
                session.reset()
                print("[conversation cleared]", file=sys.stderr)
            elif text.strip():
                _reply(session, text, think_mode)
        except EOFError:  # Ctrl-D, or the end of piped input
            sys.stdout.write("\n" if reader.interactive else "")
            return 0
        except KeyboardInterrupt:  # at the prompt (or between a reply and the next prompt)
            sys.stdout.write("\n")
            sys.stdout.flush()
            if ctrl_c_before or not reader.interactive:
                return EXIT_CTRL_C
            print("[Ctrl-C again, Ctrl-D or /quit leaves]", file=sys.stderr)
            ctrl_c_before = True


def _reply(session, text: str, think_mode: str) -> None:
    """Streams the reply to `text`; Ctrl-C ends it at the next token."""
    from jaxlm.inference.terminal import ctrl_c_sets_flag
    from jaxlm.inference.think import ThinkFilter

    think = ThinkFilter(think_mode)
    dropped = session.dropped

    def show(piece: str) -> None:
        sys.stdout.write(think.push(piece))
        sys.stdout.flush()

    try:
        with ctrl_c_sets_flag() as pressed:
            session.reply(text, on_text=show, should_stop=pressed.is_set)
    except InputError as error:
        print(f"[{error}]", file=sys.stderr)
        return
    sys.stdout.write(think.finish() + "\n")
    sys.stdout.flush()
    if pressed.is_set():
        print("[reply interrupted]", file=sys.stderr)
    if think.hide and think.inside:
        print("[the reply ended inside <think>: --think show prints it]", file=sys.stderr)
    if session.dropped > dropped:
        print(
            f"[context full: dropped the {session.dropped - dropped} oldest messages]",
            file=sys.stderr,
        )
