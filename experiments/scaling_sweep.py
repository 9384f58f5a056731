"""A small scaling sweep on the stdlib: model sizes x token budgets, for `jaxlm scaling-fit`.

Five widths/depths (0.11M to 3.2M non-embedding parameters) each trained for two token
budgets, with the learning-rate schedule stretched to each budget (cosine to 10%), so
every run is a finished run at its own length, as a Chinchilla-style fit of
L(N, D) = E + A/N^alpha + B/D^beta assumes:

    jaxlm sweep scaling_sweep                            # 10 runs, one after another
    jaxlm sweep scaling_sweep --list                     # or one cluster job per point
    jaxlm compare runs/scaling_sweep-sweep/*/ --out runs/scaling_sweep-compare --log-x
    jaxlm scaling-fit runs/scaling_sweep-sweep/*/ --out runs/scaling_sweep-fit --budget 1e15

Sized for a CPU: the budgets are 1.2M and 3.3M tokens, far below compute-optimal for
the larger models. On an accelerator raise `data.batch_size` with `--set` (it applies
to every point) or the step counts in STEPS here.
The tokenizer is trained once per run from the same corpus and seed, so every run sees
the same pieces.
"""

import dataclasses

from experiments.quickstart import get_config as quickstart_config
from jaxlm.config import Config, apply_overrides

SIZES = {
    # name: (d_model, n_layers, n_heads)
    "d64-l2": (64, 2, 2),
    "d96-l3": (96, 3, 3),
    "d128-l4": (128, 4, 4),
    "d192-l4": (192, 4, 4),
    "d256-l4": (256, 4, 4),
}
STEPS = (300, 800)  # token budgets: steps x 16 rows x 256 tokens


def get_config() -> Config:
    """The quickstart's data and optimiser; the final evaluation only; no sample."""
    cfg = dataclasses.replace(quickstart_config(), name="scaling_sweep")
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


def sweep() -> list[tuple[str, list[str]]]:
    points = []
    for name, (d, n, h) in SIZES.items():
        for steps in STEPS:
            model = [f"model.d_model={d}", f"model.n_layers={n}", f"model.n_heads={h}"]
            points.append((f"{name}-s{steps}", [*model, f"model.n_kv_heads={h}",
                                                 f"train.steps={steps}"]))  # fmt: skip
    return points


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
