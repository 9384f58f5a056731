"""The first 20 losses of a tiny model on generated data, checked in.

Both layer loops are recorded: scanned ("losses") and unrolled ("losses_unrolled",
what model.scan_layers="auto" runs on CPU). On this 8-device mesh they differ in the
last bits (the gradient reductions run in another order), so each is pinned on its own,
and the two must agree to 1e-6 relative.

Any change to the model, loss, optimizer, init or sharding that moves a single bit of
these losses fails this test on the pinned CPU stack, so numerics never drift
silently. After a deliberate change (or a dependency upgrade), regenerate with

    JAXLM_REGENERATE_GOLDEN=1 pytest tests/test_golden_losses.py

and say why in the commit. Bitwise equality is asserted where the recorded stack
(jax/jaxlib version, CPU model and vector ISA) is the one running; XLA may pick other
kernels elsewhere, so there the losses must agree to 1e-5 relative instead.
"""

import dataclasses
import json
import os
import platform
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest
from helpers.batches import packed_batch

from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import jit_train_step, make_lm_step

GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
STEPS = 20


def _stack() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                   if line.startswith("model name"))  # fmt: skip
        isa = "avx512" if " avx512f" in info else ("avx2" if " avx2" in info else "other")
    except (OSError, StopIteration):
        isa = "unknown"
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu, "isa": isa}


def _losses(scan_layers: bool) -> list[float]:
    cfg = dataclasses.replace(get_preset("tiny"), scan_layers=scan_layers)
    optim = OptimConfig(lr=1e-2, warmup_steps=2, z_loss=1e-4)
    mesh = make_mesh((2, 2, 2), jax.devices()[:8])
    optimizer = make_optimizer(optim, STEPS)
    state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(0))
    graphdef, _ = abstract_model(cfg)
    step = jit_train_step(
        make_lm_step(graphdef, optimizer, learning_rate_schedule(optim, STEPS), z_loss=1e-4),
        shardings,
        mesh,
    )
    losses = []
    for i in range(STEPS):
        batch = packed_batch(cfg.vocab_size, 8, 32, seed=i % 4)  # 4 batches, seen 5 times
        with jax.set_mesh(mesh):
            state, metrics = step(state, host_batch_to_global(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses


def test_first_losses_match_the_checked_in_file():
    losses = {"losses": _losses(scan_layers=True), "losses_unrolled": _losses(scan_layers=False)}
    if os.environ.get("JAXLM_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"stack": _stack(), **losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for run in losses.values():
        assert run[-1] < run[0] - 0.5, "the tiny model should be learning the 4 batches"
    np.testing.assert_allclose(losses["losses_unrolled"], losses["losses"], rtol=1e-6)
    if golden["stack"] == _stack():
        for name, run in losses.items():
            assert run == golden[name], name  # bit for bit (floats round-trip through JSON)
    else:
        for name, run in losses.items():
            np.testing.assert_allclose(run, golden[name], rtol=1e-5, err_msg=name)
        pytest.skip(f"close, not bitwise: recorded on {golden['stack']}, running {_stack()}")
