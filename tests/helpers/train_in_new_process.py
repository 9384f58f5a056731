"""Run `jaxlm.training.loop.train` in a process of its own; optionally die during an async save.

Usage: python train_in_new_process.py CONFIG_JSON WORKDIR DEVICES [KILL_AT_STEP]

Used by tests/test_resume_exact.py: resuming in a *new* process is what a restart
after preemption does, so nothing cached in the test's own process (compiled
programs, iterator objects, RNG state) can make a resume look exact when it is not.

With KILL_AT_STEP, the checkpoint save of that step is made slow (the final rename
of Orbax's temporary directory never happens), and once the save's files have
started to land the process SIGKILLs itself: what a preemption without a grace
period, or an OOM kill, does in the middle of an asynchronous save.
"""

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[3]))

from jaxlm.checkpointing import manager as checkpoint  # noqa: E402
from jaxlm.config import config_from_dict  # noqa: E402
from jaxlm.training.loop import train  # noqa: E402


def die_during_save(step_to_kill: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    original = checkpoint.Checkpointer.save

    def save(self, step, *args, **kwargs):
        if step != step_to_kill:
            return original(self, step, *args, **kwargs)

        async def never_finalize(*_, **__):
            await asyncio.sleep(3600)

        self.wait()  # the previous save's rename must still happen: step 2 is complete
        atomicity.AtomicRenameTemporaryPath.finalize = never_finalize
        original(self, step, *args, **kwargs)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the state's files are being written
            tmp = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*/state*/*"))
            if tmp:
                break
            time.sleep(0.01)
        print(f"killing myself during the save of step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save


def main() -> None:
    config_path, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 4:
        die_during_save(int(sys.argv[4]))
    cfg = config_from_dict(json.loads(config_path.read_text()))
    result = train(cfg, workdir)
    print(f"finished {result.steps} steps", flush=True)


if __name__ == "__main__":
    main()
