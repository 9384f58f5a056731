"""The step counter: a tqdm bar on a terminal, a line every 30 s in a log file."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios

from jaxlm.training.progress import progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_file_gets_a_line_per_interval_not_a_redraw_per_step():
    out, clock = io.StringIO(), FakeClock()
    bar = progress(1000, 0, stream=out, every_s=30.0, clock=clock)
    for _ in range(1000):  # 1000 steps of 0.125 s (exact in binary): 125 s in all
        clock.now += 0.125
        bar.update(2.5, 1234.0, 0.1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # at 30 s, 60 s, 90 s, 120 s and the last step
    assert [line.split(":")[0] for line in lines] == [
        "step 240/1000 (24%)",
        "step 480/1000 (48%)",
        "step 720/1000 (72%)",
        "step 960/1000 (96%)",
        "step 1000/1000 (100%)",
    ], lines
    assert "loss 2.500, 1,234 tok/s, mfu 10.0%, 0m30s elapsed, about 1m35s left" in lines[0]


def test_a_resumed_run_counts_from_its_start_step():
    out, clock = io.StringIO(), FakeClock()
    bar = progress(10, 8, stream=out, clock=clock)
    clock.now += 1.0
    bar.update(1.0, 1.0, 0.0)
    clock.now += 1.0
    bar.update(1.0, 1.0, 0.0)
    assert out.getvalue().splitlines()[-1].startswith("step 10/10 (100%)")


def test_a_terminal_gets_the_redrawn_bar():
    leader, follower = pty.openpty()
    # 24 rows, 80 columns: a new pty is 0 wide, and tqdm draws nothing in 0 columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            bar = progress(3, 0, stream=tty)
            for _ in range(3):
                bar.update(2.5, 10.0, 0.0)
            bar.close()
        drawn = b""
        while select.select([leader], [], [], 0.5)[0]:  # every chunk the bar wrote
            drawn += os.read(leader, 65536)
        drawn = drawn.decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "\r" in drawn and "3/3" in drawn
