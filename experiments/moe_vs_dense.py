"""Dense vs mixture-of-experts at equal active compute, on the stdlib corpus.

Each size is trained twice with the same data, schedule, attention and token count:

    dense  the Llama MLP of width d_ff (jaxlm's 8/3 rule);
    moe    8 routed experts of width d_ff / 2, each token sent to its top 2: the same
           active MLP FLOPs per token (plus a router of d_model x 8), 4x the MLP
           parameters. Capacity buckets (factor 1.25, the fastest implementation on
           CPU), the default balance and z losses.

plus two variants of the small MoE: dropless (`ragged`) and with the
auxiliary-loss-free bias instead of the balance loss; and the small pair again at 4x
the tokens.

So the MoE model spends the same FLOPs per token on ~4x the MLP parameters, and the
question is what that buys in loss per FLOP and per second of wall time:

    jaxlm sweep moe_vs_dense
    jaxlm compare runs/moe_vs_dense-sweep/*/ --out runs/moe_vs_dense-compare

The measured result (and the machine) is in the README's "Mixture of experts" section.
"""

import dataclasses

from experiments._stdlib_lm import get_config as stdlib_lm_config
from jaxlm.config import Config, apply_overrides

SIZES = {
    # name: (d_model, n_layers, n_heads, dense d_ff by jaxlm's 8/3 rule)
    "s": (128, 2, 2, 384),
    "m": (192, 3, 3, 512),
    "l": (256, 4, 4, 704),
}
EXPERTS, TOP_K = 8, 2


def get_config() -> Config:
    """The d256 stdlib recipe (experiments/_stdlib_lm.py) at 400 steps (l size, dense),
    without the end-of-run sample."""
    cfg = dataclasses.replace(stdlib_lm_config(), name="moe_vs_dense")
    return apply_overrides(
        cfg,
        [
            "train.steps=400",
            "train.eval_every=100",
            "train.checkpoint_every=200",
            "train.generate_prompt=",
            "optim.warmup_steps=40",
        ],
    )


def sweep() -> list[tuple[str, list[str]]]:
    points = []
    for name, (d, n, h, d_ff) in SIZES.items():
        shape = [f"model.d_model={d}", f"model.n_layers={n}", f"model.n_heads={h}",
                 f"model.n_kv_heads={h}", f"model.d_ff={d_ff}"]  # fmt: skip
        moe = [f"model.moe_experts={EXPERTS}", f"model.moe_top_k={TOP_K}",
               f"model.moe_d_ff={d_ff // TOP_K}", "model.moe_impl=buckets",
               "model.moe_capacity_factor=1.25"]  # fmt: skip
        points += [(f"{name}-dense", shape), (f"{name}-moe", shape + moe)]
    # Two variants at the smallest size, to see what the buckets' drops and the
    # balance loss cost: dropless (ragged; slow on CPU, where ragged_dot runs every
    # expert on every row), and auxiliary-loss-free balancing (a bias, no balance loss).
    s_moe = points[1][1]
    keep = [o for o in s_moe if "capacity" not in o and "impl" not in o]
    points += [
        ("s-moe-dropless", [*keep, "model.moe_impl=ragged", "model.moe_capacity_factor=0"]),
        ("s-moe-bias", [*s_moe, "model.moe_balance_weight=0", "model.moe_bias_rate=0.001"]),
    ]
    # The small pair again at 4x the tokens (1600 steps): does the gap close with
    # training?
    long = ["train.steps=1600", "train.eval_every=400", "optim.warmup_steps=160"]
    points += [("s-dense-long", [*points[0][1], *long]), ("s-moe-long", [*s_moe, *long])]
    return points


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
