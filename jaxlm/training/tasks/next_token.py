"""What a run optimises and how it is evaluated, chosen by `data.format`.

    text, chat    next-token loss (chat: only assistant tokens carry loss); evaluation
                  reports held-out loss per supervised token and bits per byte
    preference    config.preference's objective (DPO, IPO, SimPO, + NLL) on [B, 2, T]
                  pairs; evaluation reports the loss and preference accuracy (the
                  share of held-out pairs whose implied reward ranks chosen first)

The host loop (train.py) only sees `train_step(state, batch)`, `eval_step(state,
batch)` returning sums, and `summarize(list of sums)` giving the reported numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.sharding import replicated
from jaxlm.training.metrics import bits_per_byte
from jaxlm.training.param_views import ParamViews
from jaxlm.training.steps import jit_eval_step, jit_train_step, make_eval_step, make_lm_step


@dataclasses.dataclass
class Objective:
    train_step: Callable  # (state, global batch) -> (state, metrics); state donated
    eval_step: Callable  # (state, global batch) -> dict of sums (device arrays)
    summarize: Callable[[list[dict[str, float]]], dict[str, float]]
    rows_per_example: int  # 2 for preference pairs (chosen and rejected)


def build_objective(
    cfg: Config,
    graphdef: nnx.GraphDef,
    optimizer,
    schedule,
    state_shardings,
    mesh: Mesh,
    views: ParamViews,
    token_bytes: np.ndarray,
) -> Objective:
    if cfg.data.format == "preference":
        return _preference(cfg, graphdef, optimizer, schedule, state_shardings, mesh, views)
    return _next_token(
        cfg, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes
    )


def _next_token(cfg, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
    step = make_lm_step(
        graphdef,
        optimizer,
        schedule,
        grad_accum=cfg.optim.grad_accum,
        z_loss=cfg.optim.z_loss,
        spike_factor=cfg.optim.spike_factor,
        spike_warmup_steps=cfg.optim.spike_warmup_steps,
        views=views,
    )
    evaluate = jit_eval_step(make_eval_step(graphdef, views), state_shardings, mesh)
    token_bytes = jax.device_put(token_bytes, replicated(mesh))

    def eval_step(state, batch):
        return evaluate(state.params, state.frozen, batch, token_bytes)

    return Objective(jit_train_step(step, state_shardings, mesh), eval_step, next_token_summary, 1)


def next_token_summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """Loss per supervised token and bits per byte from `make_eval_step`'s sums.

    Bits per byte = total nats over the scored tokens / (ln 2 * the UTF-8 bytes those
    tokens decode to); `jaxlm eval` reports the same numbers.
    """
    sums = {k: float(sum(float(r[k]) for r in results)) for k in results[0]}
    return {
        "loss": sums["nll"] / max(sums["num_tokens"], 1.0),
        "bits_per_byte": bits_per_byte(sums["nll"], sums["num_bytes"]),
        "tokens": sums["num_tokens"],
        "bytes": sums["num_bytes"],
    }


def _preference(cfg, graphdef, optimizer, schedule, state_shardings, mesh, views):
    from jaxlm.sharding import batch_sharding
    from jaxlm.training.preference_steps import make_preference_eval_step, make_preference_step

    step = make_preference_step(
        graphdef,
        optimizer,
        schedule,
        cfg.preference,
        grad_accum=cfg.optim.grad_accum,
        spike_factor=cfg.optim.spike_factor,
        spike_warmup_steps=cfg.optim.spike_warmup_steps,
        views=views,
    )
    evaluate = jax.jit(
        make_preference_eval_step(graphdef, cfg.preference, views),
        in_shardings=(state_shardings.params, state_shardings.frozen, batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )

    def eval_step(state, batch):
        return evaluate(state.params, state.frozen, batch)

    def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
        sums = {k: float(sum(float(r[k]) for r in results)) for k in results[0]}
        pairs = max(sums["pairs"], 1.0)
        out = {"pairs": sums["pairs"]}
        for key, value in sums.items():
            if key.endswith("_sum"):
                out[key[: -len("_sum")]] = value / pairs
        out["accuracy"] = sums["correct"] / pairs  # implied-reward ranking
        out["logp_accuracy"] = sums["logp_correct"] / pairs  # reference-free ranking
        return out

    return Objective(jit_train_step(step, state_shardings, mesh), eval_step, summarize, 2)
