"""One process of a multi-process train-step check (run by tests/test_multihost.py).

Usage: python multihost_step.py COORDINATOR NUM_PROCESSES PROCESS_ID [DELAY_S] OUT_JSON

Every process holds 2 CPU devices and feeds only its own rows of a fixed global batch
through `make_array_from_process_local_data`; the losses of 3 steps on a (data=2,
fsdp=2) mesh spanning both processes are written to OUT_JSON. A single-process run
(NUM_PROCESSES=1, 4 devices) on the same global batch must give the same losses.
With DELAY_S, the last process sleeps that long before its first step (compile skew).
"""

import json
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_num_cpu_devices", 4 if sys.argv[2] == "1" else 2)

import numpy as np  # noqa: E402

from jaxlm.config import OptimConfig  # noqa: E402
from jaxlm.models.params import abstract_model  # noqa: E402
from jaxlm.presets import get_preset  # noqa: E402
from jaxlm.runtime import distributed  # noqa: E402
from jaxlm.sharding import host_batch_to_global, make_mesh  # noqa: E402
from jaxlm.training.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from jaxlm.training.state import create_train_state  # noqa: E402
from jaxlm.training.steps import jit_train_step, make_lm_step  # noqa: E402


def global_batch(batch_size: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab, (batch_size, seq_len + 1)).astype(np.int32)
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((batch_size, seq_len), np.int32),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1)),
    }


def main() -> None:
    coordinator, num_processes, process_id, *delay, out = sys.argv[1:]
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes > 1:
        assert distributed.maybe_initialize(coordinator, num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 4

    cfg = get_preset("tiny")
    optim_cfg = OptimConfig(lr=1e-2, warmup_steps=1)
    optimizer = make_optimizer(optim_cfg, 10)
    mesh = make_mesh((2, 2, 1))
    state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(0))
    graphdef, _ = abstract_model(cfg)
    step = jit_train_step(
        make_lm_step(graphdef, optimizer, learning_rate_schedule(optim_cfg, 10)), shardings, mesh
    )
    batch = global_batch(8, 16, cfg.vocab_size)
    # This process's rows: the ones its addressable devices hold in the batch sharding.
    rows = 8 // num_processes
    local = {k: v[process_id * rows : (process_id + 1) * rows] for k, v in batch.items()}
    losses = []
    if delay and process_id == num_processes - 1:
        time.sleep(float(delay[0]))
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, metrics = step(state, host_batch_to_global(local, mesh))
            losses.append(float(metrics["loss"]))
    with open(out, "w") as f:
        json.dump({"losses": losses, "process_count": jax.process_count()}, f)


if __name__ == "__main__":
    main()
