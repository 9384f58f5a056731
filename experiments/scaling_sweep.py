"""A CPU-sized scaling sweep on the stdlib: an IsoFLOP grid plus fixed token budgets.

Two families of finished runs (the cosine schedule is stretched to each run's length,
decaying to 10%, so every run is a complete run at its own budget, as the fits assume):

* IsoFLOP grid: three compute levels (3e12, 1e13, 3e13 model FLOPs) with four to six
  model sizes each; a point's step count is its level over its FLOPs per step
  (jaxlm.models.flops: 6N + attention, embedding lookups free, output head counted). Each
  level's losses against log N give that level's compute-optimal size (Hoffmann et
  al.'s approach 2), and the grid varies N and D independently for L(N, D).
* Fixed budgets: five sizes at 300 and 800 steps (1.2M and 3.3M tokens).

    jaxlm sweep scaling_sweep                            # 25 runs, one after another
    jaxlm sweep scaling_sweep --list                     # or one cluster job per point
    jaxlm compare runs/scaling_sweep-sweep/*/ --out runs/scaling_sweep-compare --log-x
    jaxlm scaling-fit runs/scaling_sweep-sweep/*/ --out runs/scaling_sweep-fit --budget 1e15

About 75 minutes on a 2-core CPU; the measured results and fits are in
experiments/results/scaling_sweep/ and the README. The sizes (33k to 3.2M non-embedding
parameters) bracket each level's optimum on that hardware (every level's minimum is
interior); on an accelerator scale LEVELS up and SIZES with them. The tokenizer is
trained once per run from the same corpus and seed, so every run sees the same pieces.
"""

import dataclasses

from experiments._stdlib_lm import get_config as stdlib_lm_config
from jaxlm.config import Config, apply_overrides

SIZES = {
    # name: (d_model, n_layers, n_heads)
    "d32-l2": (32, 2, 2),
    "d48-l2": (48, 2, 2),
    "d64-l2": (64, 2, 2),
    "d96-l3": (96, 3, 3),
    "d128-l4": (128, 4, 4),
    "d192-l4": (192, 4, 4),
    "d256-l4": (256, 4, 4),
}
# compute level (model FLOPs) -> the sizes trained at it: the runs keep >= 130 steps
LEVELS = {
    "3e12": ("d32-l2", "d48-l2", "d64-l2", "d96-l3"),
    "1e13": ("d32-l2", "d48-l2", "d64-l2", "d96-l3", "d128-l4", "d192-l4"),
    "3e13": ("d64-l2", "d96-l3", "d128-l4", "d192-l4", "d256-l4"),
}
BUDGET_SIZES = ("d64-l2", "d96-l3", "d128-l4", "d192-l4", "d256-l4")
STEPS = (300, 800)  # fixed budgets: steps x 16 rows x 256 tokens


def get_config() -> Config:
    """The stdlib recipe's data and optimiser (experiments/_stdlib_lm.py); the final
    evaluation only; no sample."""
    cfg = dataclasses.replace(stdlib_lm_config(), name="scaling_sweep")
    return apply_overrides(
        cfg,
        [
            "model.d_model=128",
            "optim.warmup_steps=30",
            f"train.steps={STEPS[0]}",
            "train.eval_every=0",
            "train.generate_prompt=",
        ],
    )


def _model(size: str) -> list[str]:
    d, n, h = SIZES[size]
    return [f"model.d_model={d}", f"model.n_layers={n}", f"model.n_heads={h}",
            f"model.n_kv_heads={h}"]  # fmt: skip


def isoflop_steps(size: str, compute: float) -> int:
    """Steps that spend `compute` model FLOPs on `size` at the base batch and length."""
    from jaxlm.models.flops import flops_per_token

    cfg = apply_overrides(get_config(), _model(size))
    per_step = flops_per_token(cfg.model, cfg.data.seq_len) * cfg.data.batch_size * cfg.data.seq_len
    return round(compute / per_step)


def sweep() -> list[tuple[str, list[str]]]:
    points = []
    for level, sizes in LEVELS.items():
        for size in sizes:
            steps = isoflop_steps(size, float(level))
            points.append((f"iso{level}-{size}", [*_model(size), f"train.steps={steps}"]))
    for size in BUDGET_SIZES:
        for steps in STEPS:
            points.append((f"{size}-s{steps}", [*_model(size), f"train.steps={steps}"]))
    return points


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
