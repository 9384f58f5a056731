"""Continuous batching: requests join and leave a running decode batch.

One thread owns the model. It loops:

1. admit waiting jobs into free slots (at most `prefills_per_step` per loop, so a
   burst of newcomers delays the running rows' next token by a bounded amount):
   each is prefilled alone and its cache row put into the slot;
2. one decode step for every slot (slot_steps.SlotSteps.decode);
3. hand each running job its token; a job that hit a stop token, its `max_tokens`,
   or was cancelled (its client went away) frees its slot at once.

Callers (the HTTP handlers, on another thread) only `submit` and `cancel`; results
come back through each job's `emit` callback, called on the engine thread, in order:
an optional PromptScores, the Tokens, then exactly one Finished.

A job's tokens depend only on the job: its own prefill, its own key
(`fold_in(key(seed), token index)`), its own cache row. So a fixed seed gives the
same output alone and inside a busy batch.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable

import jax
import numpy as np

from jaxlm.serving.slot_steps import SlotSteps

log = logging.getLogger("jaxlm.serve")

# The top-N of every step is computed for this N when any running job asks for
# log-probs (one compiled variant instead of one per N); jobs keep the first n.
MAX_TOP_LOGPROBS = 20


@dataclasses.dataclass
class PromptScores:
    logprobs: list[float | None]  # per prompt token; None for the first
    top: list[list[tuple[int, float]]]  # per prompt token: (id, log-prob), best first


@dataclasses.dataclass
class Token:
    id: int
    logprob: float
    top: list[tuple[int, float]]
    is_stop: bool  # a stop token: ends the job, is not part of the text


@dataclasses.dataclass
class Finished:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


@dataclasses.dataclass(eq=False)
class Job:
    """One sequence to generate (one choice of one prompt)."""

    prompt: list[int]
    max_tokens: int  # 0: score the prompt only (echo)
    temperature: float
    top_p: float
    seed: int
    emit: Callable[[object], None]
    stop_ids: frozenset[int] = frozenset()
    top_n: int = 0  # top log-probs wanted per token (0: none)
    prompt_logprobs: bool = False
    cancelled: bool = False
    generated: int = 0
    submitted_at: float = dataclasses.field(default_factory=time.perf_counter)

    def key_data(self) -> np.ndarray:
        """The threefry key of a 64-bit seed: (high, low) 32-bit halves, which is
        jax.random.key(seed) for seeds below 2**32 (that call keeps only 32 bits
        without jax_enable_x64, so larger seeds would collide)."""
        seed = self.seed % 2**64
        return np.asarray([seed >> 32, seed & 0xFFFFFFFF], np.uint32)


class Engine:
    def __init__(self, steps: SlotSteps, *, prefills_per_step: int = 4):
        self.steps = steps
        self.prefills_per_step = prefills_per_step
        B = steps.slots
        self.jobs: list[Job | None] = [None] * B
        self.rows = {
            "token": np.zeros(B, np.int32),
            "position": np.zeros(B, np.int32),
            "active": np.zeros(B, bool),
            "key_data": np.zeros((B, 2), np.uint32),
            "step": np.zeros(B, np.int32),
            "temperature": np.zeros(B, np.float32),
            "top_p": np.ones(B, np.float32),
        }
        self.pending: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.failed: str | None = None  # set when the loop died: the server is unhealthy
        self.counts = collections.Counter()
        self.cache = None
        self.thread = threading.Thread(target=self._loop, name="jaxlm-engine", daemon=True)

    # -- called from other threads -------------------------------------------------------

    def start(self) -> None:
        """Build the cache, compile the common programs, start the loop."""
        with self.steps.mesh_context():
            self.cache = self.steps.empty_cache(self.steps.slots)
            warm = self.steps.prefill(
                [0], self._zero_key(), 0.0, 1.0, top_n=0, prompt_logprobs=False
            )
            jax.block_until_ready(warm)
            sampled, self.cache = self.steps.decode(self.cache, self.rows, top_n=0)
            jax.block_until_ready(sampled)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.failed is not None:
                job.emit(Finished("error", self.failed))
                return
            self.pending.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        with self.cond:
            job.cancelled = True
            self.cond.notify()

    def load(self) -> dict[str, int]:
        with self.cond:
            running = sum(job is not None for job in self.jobs)
            return {"slots": self.steps.slots, "running": running, "waiting": len(self.pending)}

    def in_flight(self) -> int:
        load = self.load()
        return load["running"] + load["waiting"]

    def stop(self, timeout: float = 30.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -- the engine thread ---------------------------------------------------------------

    @staticmethod
    def _zero_key() -> np.ndarray:
        return np.zeros(2, np.uint32)

    def _loop(self) -> None:
        try:
            with self.steps.mesh_context():
                while self._iterate():
                    pass
        except Exception as error:  # a bug: fail every job loudly, keep the traceback
            log.error("engine failed:\n%s", traceback.format_exc())
            with self.cond:
                self.failed = f"the inference engine failed: {type(error).__name__}: {error}"
                waiting = [*self.pending, *(j for j in self.jobs if j is not None)]
                self.pending.clear()
                self.jobs = [None] * self.steps.slots
            for job in waiting:
                job.emit(Finished("error", self.failed))
        finally:
            with self.cond:
                leftover = [*self.pending, *(j for j in self.jobs if j is not None)]
                self.pending.clear()
            for job in leftover:
                job.emit(Finished("cancelled"))

    def _iterate(self) -> bool:
        with self.cond:
            while not self.stopping and not self.pending and not self.rows["active"].any():
                self.cond.wait()
            if self.stopping:
                return False
            free = [b for b, job in enumerate(self.jobs) if job is None]
            admitted = []
            while self.pending and len(admitted) < min(len(free), self.prefills_per_step):
                job = self.pending.popleft()
                if job.cancelled:
                    job.emit(Finished("cancelled"))
                    continue
                admitted.append(job)
        for job, slot in zip(admitted, free, strict=False):
            self._admit(job, slot)
        for slot, job in enumerate(self.jobs):
            if job is not None and job.cancelled:
                self._finish(slot, Finished("cancelled"))
        if self.rows["active"].any():
            self._decode()
        return True

    def _admit(self, job: Job, slot: int) -> None:
        out, row = self.steps.prefill(
            job.prompt,
            job.key_data(),
            job.temperature,
            job.top_p,
            top_n=MAX_TOP_LOGPROBS if job.top_n else 0,
            prompt_logprobs=job.prompt_logprobs,
        )
        out = jax.device_get(out)
        self.counts["prefills"] += 1
        self.counts["prompt_tokens"] += len(job.prompt)
        if job.prompt_logprobs:
            n = len(job.prompt)
            job.emit(
                PromptScores(
                    [None] + [float(x) for x in out.prompt_logprobs[1:n]],
                    [[]]
                    + [
                        _pairs(out.prompt_top_ids[i], out.prompt_top_logprobs[i], job.top_n)
                        for i in range(1, n)
                    ],
                )
            )
        if job.max_tokens == 0:
            job.emit(Finished("length"))
            return
        token = int(out.token)
        if self._emit_token(job, token, out.logprob, out.top_ids, out.top_logprobs):
            return
        self.cache = self.steps.insert(self.cache, row, slot)
        self.jobs[slot] = job
        r = self.rows
        r["token"][slot], r["position"][slot], r["active"][slot] = token, len(job.prompt), True
        r["key_data"][slot], r["step"][slot] = job.key_data(), 1
        r["temperature"][slot], r["top_p"][slot] = job.temperature, job.top_p

    def _emit_token(self, job: Job, token: int, logprob, top_ids, top_logprobs) -> bool:
        """Hand `job` its token; True when that ended it."""
        job.generated += 1
        self.counts["tokens"] += 1
        is_stop = token in job.stop_ids
        job.emit(Token(token, float(logprob), _pairs(top_ids, top_logprobs, job.top_n), is_stop))
        context_full = len(job.prompt) + job.generated >= self.steps.context
        if is_stop:
            job.emit(Finished("stop"))
        elif job.generated >= job.max_tokens or context_full:
            job.emit(Finished("length"))
        else:
            return False
        return True

    def _decode(self) -> None:
        top_n = MAX_TOP_LOGPROBS if any(j is not None and j.top_n for j in self.jobs) else 0
        sampled, self.cache = self.steps.decode(self.cache, self.rows, top_n=top_n)
        token_B, logprob_B, top_ids_BN, top_lps_BN = jax.device_get(sampled)
        self.counts["decode_steps"] += 1
        r = self.rows
        for slot, job in enumerate(self.jobs):
            if job is None:
                continue
            token = int(token_B[slot])
            r["step"][slot] += 1
            r["position"][slot] += 1
            r["token"][slot] = token
            if job.cancelled:
                self._finish(slot, Finished("cancelled"))
            elif self._emit_token(job, token, logprob_B[slot], top_ids_BN[slot], top_lps_BN[slot]):
                self._free(slot)

    def _finish(self, slot: int, event: Finished) -> None:
        self.jobs[slot].emit(event)
        self._free(slot)

    def _free(self, slot: int) -> None:
        self.jobs[slot] = None
        self.rows["active"][slot] = False
        self.rows["position"][slot] = 0


def _pairs(ids, logprobs, n: int) -> list[tuple[int, float]]:
    return [(int(i), float(lp)) for i, lp in zip(ids[:n], logprobs[:n], strict=True)]
