"""The terminal side of `jaxlm chat`: line editing, history, and Ctrl-C.

Line editing is GNU readline's, through Python's `readline` module, which `input()`
uses once it is imported and stdin is a terminal: arrows, Home/End, Ctrl-R search,
and Backspace over wide characters (Chinese) that redraws correctly, because readline
is given the prompt and knows the locale's character widths. History persists in a
file (one line per entry) across sessions.

Ctrl-C has two jobs, and neither may raise KeyboardInterrupt inside JAX or
SentencePiece code, which gave a traceback and then "Segmentation fault" (exit 139):

- while a reply is generated, `ctrl_c_sets_flag` swaps in a SIGINT handler that only
  sets an event; the generation loop reads it between tokens and ends the reply there;
- at the prompt, the default handler raises KeyboardInterrupt inside `input()`, where
  readline cleans up and the caller decides (jaxlm chat: leave on the second one).

Python runs signal handlers in the main thread only when it executes bytecode. A
SIGINT that lands just before readline blocks in select() (or on one of JAX's
threads) would leave the main thread blocked, and Ctrl-C at the prompt would do
nothing until the next key. So while `LineReader.read` waits, a helper thread sends
the main thread a SIGUSR1 (whose handler does nothing) 4 times a second: each one
wakes readline's select() with EINTR, readline runs the pending handlers, and a
waiting Ctrl-C is acted on within a quarter of a second.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

HISTORY_LENGTH = 1000  # entries kept in the history file
_WAKE_EVERY_S = 0.25


class LineReader:
    """Reads one line at a time, with readline when stdin is a terminal.

    `read()` returns the line without its newline, raises EOFError at the end of the
    input (Ctrl-D) and KeyboardInterrupt on Ctrl-C.
    """

    def __init__(self, prompt: str, history_file: Path | None):
        self.interactive = sys.stdin.isatty()
        self.prompt = prompt if self.interactive else ""  # piped: no prompts in the output
        self.history_file = history_file if self.interactive else None
        self._readline = None
        if self.interactive:
            import readline  # stdin is a terminal: input() now edits lines with it

            self._readline = readline
            readline.set_history_length(HISTORY_LENGTH)
            if self.history_file is not None and self.history_file.exists():
                try:
                    readline.read_history_file(self.history_file)
                except OSError as error:  # a directory, unreadable: chat without it
                    self._history_unusable(error)

    def read(self) -> str:
        if not self.interactive:
            return input(self.prompt)
        with _woken_while_waiting():
            return input(self.prompt)

    def save_history(self) -> None:
        """Writes the history file (the last HISTORY_LENGTH entries); no file, no-op."""
        if self._readline is None or self.history_file is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(self.history_file)
        except OSError as error:
            self._history_unusable(error)

    def _history_unusable(self, error: OSError) -> None:
        print(f"[history file {self.history_file}: {error}; history not kept]", file=sys.stderr)
        self.history_file = None


@contextlib.contextmanager
def _woken_while_waiting() -> Iterator[None]:
    """SIGUSR1 to the main thread every _WAKE_EVERY_S until the block ends (see above)."""
    main = threading.main_thread().ident
    done = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)

    def wake() -> None:
        while not done.wait(_WAKE_EVERY_S):
            signal.pthread_kill(main, signal.SIGUSR1)

    waker = threading.Thread(target=wake, name="jaxlm-chat-wake", daemon=True)
    waker.start()
    try:
        yield
    finally:
        done.set()
        waker.join()
        signal.signal(signal.SIGUSR1, previous)


@contextlib.contextmanager
def ctrl_c_sets_flag() -> Iterator[threading.Event]:
    """While the block runs, Ctrl-C sets the yielded event instead of raising
    KeyboardInterrupt wherever the main thread is (mostly inside a JAX dispatch)."""
    pressed = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.set())
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
