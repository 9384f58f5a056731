"""The step counter a user watches: a tqdm bar on a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns several times a second; written to a
log file (nohup, a batch scheduler, `2> train.log`) every redraw is kept, thousands of
them. When the stream is not a terminal the progress is a plain line instead, at most
every `every_s` seconds (and at the last step), so a log stays readable with `tail`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm


class Progress:
    """`update(loss, tok_s, mfu)` once per step; `close()` at the end."""

    def update(self, loss: float, tok_s: float, mfu: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Bar(Progress):
    def __init__(self, total: int, start: int, stream: TextIO):
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=stream)

    def update(self, loss: float, tok_s: float, mfu: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}")

    def close(self) -> None:
        self.bar.close()


class _Lines(Progress):
    def __init__(self, total, start, stream, every_s: float, clock: Callable[[], float]):
        self.total, self.step, self.stream = total, start, stream
        self.every_s, self.clock = every_s, clock
        self.started, self.start_step = clock(), start
        self.last = self.started  # the first line comes every_s after the start

    def update(self, loss: float, tok_s: float, mfu: float) -> None:
        self.step += 1
        now = self.clock()
        if now - self.last < self.every_s and self.step < self.total:
            return
        self.last = now
        rate = (self.step - self.start_step) / max(now - self.started, 1e-9)
        eta = (self.total - self.step) / rate if rate > 0 else 0.0
        print(
            f"step {self.step}/{self.total} ({self.step / self.total:.0%}): loss {loss:.3f},"
            f" {tok_s:,.0f} tok/s, mfu {mfu:.1%}, {_duration(now - self.started)} elapsed,"
            f" about {_duration(eta)} left",
            file=self.stream,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress(
    total: int,
    start: int,
    stream: TextIO | None = None,
    every_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A bar when `stream` (default stderr) is a terminal, else lines every `every_s`."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        return _Bar(total, start, stream)
    return _Lines(total, start, stream, every_s, clock)
