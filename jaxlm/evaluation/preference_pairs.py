"""Scoring a file of preference pairs with a model: `jaxlm eval MODEL --pairs FILE`.

Each pair (jaxlm.data.preference's formats: MiniMind's `{"chosen", "rejected"}` or
`{"prompt", "chosen", "rejected"}`) is encoded as preference training encodes it, and
scored by the same eval step and sums (jaxlm.training.preference_steps), so the numbers
are those a preference run's `eval` records would show:

    logp_accuracy   share of pairs whose chosen response has the higher mean per-token
                    log-prob under MODEL: reference-free, meaningful for any model
    accuracy        with --reference REF: share of pairs whose DPO implied reward
                    β·(log π - log π_ref) ranks chosen first, a tie counting half;
                    with loss and margin at preference.beta = --beta
    chosen_logp, rejected_logp   mean summed response log-probs

Without a reference the implied rewards are SimPO's (β times the mean token log-prob,
γ = 0), whose ranking is logp_accuracy's; the DPO numbers are left out.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxlm.config import Config, PreferenceConfig
from jaxlm.data.posttrain_inputs import all_pairs
from jaxlm.evaluation.language_model import place_batch
from jaxlm.training.param_views import FULL
from jaxlm.training.preference_losses import ranking_accuracy
from jaxlm.training.preference_steps import make_preference_eval_step


def score_pairs(model, path: str, *, seq_len: int, batch_size: int, beta: float, reference=None):
    """Summary dict of the pairs in jsonl `path` (see the module docstring)."""
    cfg: Config = model.cfg
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=seq_len))
    batches = all_pairs(cfg, model.tokenizer, f"jsonl:{path}", "--pairs", 0, 1, batch_size)
    loss = "simpo" if reference is None else "sigmoid"
    pref = PreferenceConfig(loss=loss, beta=beta, simpo_gamma=0.0)
    step = jax.jit(make_preference_eval_step(model.graphdef, pref, FULL))
    frozen = None if reference is None else reference.params
    sums: dict[str, float] = {}
    for batch in batches:
        batch = {k: v for k, v in batch.items() if not k.startswith("_")}
        out = step(model.params, frozen, place_batch(batch, model.mesh))
        for key, value in jax.device_get(out).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    pairs = sums.get("pairs", 0.0)
    if not pairs:
        return {"pairs": 0}
    summary = {
        "pairs": int(pairs),
        "logp_accuracy": sums["logp_correct"] / pairs,
        "chosen_logp": sums["chosen_logp_sum"] / pairs,
        "rejected_logp": sums["rejected_logp_sum"] / pairs,
    }
    if reference is not None:
        summary.update(
            accuracy=ranking_accuracy(sums["correct"], sums["ties"], pairs),
            reward_ties=sums["ties"] / pairs,
            loss=sums["loss_sum"] / pairs,
            margin=sums["margin_sum"] / pairs,
            beta=beta,
        )
    return summary
