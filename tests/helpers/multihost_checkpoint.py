"""One process of a two-process checkpoint save/restore (run by tests/test_checkpoint_multihost.py).

Usage: python multihost_checkpoint.py COORDINATOR NUM_PROCESSES PROCESS_ID DIRECTORY OUT_JSON

Every process holds 2 CPU devices; the tiny preset's TrainState is sharded over a
(data=2, fsdp=2) mesh spanning both. Together they save step 3 with a data-iterator
state that differs per process, then restore it (checksums verified) onto a
(data=1, fsdp=2, tensor=2) mesh. OUT_JSON gets the restored data state, the restored
step and whether every array equals what was saved.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402

from jaxlm.checkpointing.manager import Checkpointer, abstract_like  # noqa: E402
from jaxlm.config import Config, OptimConfig  # noqa: E402
from jaxlm.presets import get_preset  # noqa: E402
from jaxlm.runtime import distributed  # noqa: E402
from jaxlm.sharding import make_mesh  # noqa: E402
from jaxlm.training.optim import make_optimizer  # noqa: E402
from jaxlm.training.state import create_train_state, train_state_shardings  # noqa: E402


def main() -> None:
    coordinator, num_processes, process_id, directory, out = sys.argv[1:6]
    assert distributed.maybe_initialize(coordinator, int(num_processes), int(process_id))
    cfg, optimizer = get_preset("tiny"), make_optimizer(OptimConfig(), 10)
    state, _ = create_train_state(cfg, optimizer, make_mesh((2, 2, 1)), jax.random.key(0))
    checkpointer = Checkpointer(directory)
    position = {"index": 100 + jax.process_index(), "shard": f"host-{jax.process_index()}"}
    checkpointer.save(3, state, {"iterator": position}, Config().to_json())
    checkpointer.wait()

    other_mesh = make_mesh((1, 2, 2))
    target = abstract_like(
        train_state_shardings(cfg, optimizer, other_mesh), jax.eval_shape(lambda s: s, state)
    )
    restored = checkpointer.restore_latest_good(target)
    checkpointer.close()
    # Compare on the gathered global values (every process sees all of them).
    from jax.experimental import multihost_utils

    same = all(
        np.array_equal(
            multihost_utils.process_allgather(a, tiled=True),
            multihost_utils.process_allgather(b, tiled=True),
        )
        for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state), strict=True)
    )
    with open(out, "w") as f:
        json.dump({"step": restored.step, "data": restored.data, "same": same,
                   "verified": restored.verified}, f)  # fmt: skip


if __name__ == "__main__":
    main()
