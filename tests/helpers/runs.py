"""Running `jaxlm train` (alone or under `jaxlm launch`) in subprocesses for tests.

Every process is started in a session of its own and killed, with everything it
started, when the test leaves the `running(...)` block: a hung or failed test never
leaves a training process behind. Waits are bounded by deadlines, never open-ended.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.tokenizer import save_tokenizer, train_model_proto

REPO = Path(__file__).resolve().parents[2]

# The tiny model of tests/test_train_loop.py, logging every step, without the extras
# (no periodic eval, no generation) that would only slow these runs down.
TINY = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.vocab_size=384",
    "model.max_seq_len=32",
    "data.tokenizer_vocab_size=384",
    "data.seq_len=32",
    "data.batch_size=8",
    "data.eval_max_docs=2",
    "train.eval_every=0",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.generate_prompt=",
    "train.peak_flops=1e12",  # a number for MFU, instead of measuring the CPU each run
    "optim.warmup_steps=0",
]


@functools.cache
def _stdlib_tokenizer_proto() -> bytes:
    """The model bytes of make_tokenizer's tokenizer, trained once per test process.

    They depend only on the text and the arguments, so the many tests that need "a
    tokenizer" share one training (seconds each on a 2-core CI machine).
    """
    texts = [read_text(path) for path in stdlib_files("train")[:80]]
    return train_model_proto(texts, vocab_size=384, max_chars=200_000)


def make_tokenizer(directory: Path) -> Path:
    """A 384-piece tokenizer on a slice of the stdlib corpus, written to `directory`."""
    return save_tokenizer(_stdlib_tokenizer_proto(), directory / "tok").path


def environment(devices: int, **extra: str) -> dict[str, str]:
    """The test's environment without its JAX/XLA settings, with `devices` CPU devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX", "JAXLM_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def train_args(workdir: Path, overrides: list[str]) -> list[str]:
    """`jaxlm train quickstart ...` arguments (without the leading `jaxlm`)."""
    args = ["train", "quickstart", "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    return args


def jaxlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxlm.cli", *args]


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path):
    """Starts `cmd` (output to `log`); on leaving, kills its whole session."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    """Runs `cmd` to the end (killed after `timeout` s); returns its exit status."""
    with running(cmd, env, log) as proc:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{cmd} ran past {timeout}s:\n{tail(log)}") from None


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float, what: str):
    """Polls `condition()` until it is truthy; fails if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{tail(log)}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout}s:\n{tail(log)}")


def records(workdir: Path, split: str = "train") -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line still being written
            record = json.loads(line)
            if record["split"] == split:
                out.append(record)
    return out


def losses_by_step(workdir: Path) -> dict[int, float]:
    """Per-step training loss; a resumed run re-logs the steps after its checkpoint,
    so the last record of a step wins (it is the one the finished run built on)."""
    return {r["step"]: r["loss"] for r in records(workdir)}


def saved_steps(workdir: Path) -> list[int]:
    """Finished checkpoints (Orbax renames the temporary directory when done)."""
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def child_pids(log: Path) -> dict[int, int]:
    """{process index: pid} from the `jaxlm launch` banner."""
    found = re.findall(r"process (\d+) pid (\d+)", log.read_text(errors="replace"))
    return {int(i): int(pid) for i, pid in found}


def is_gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing reaps orphans in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
