# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Post-training data: SFT loss masks and DPO implied rewards
#
# Supervised fine-tuning (SFT) and preference optimisation (DPO and friends) reuse
# the pretraining step; what changes is the data and the loss on top of the logits:
#
# * **SFT** trains on conversations, but only on what the assistant says: the loss
#   mask is 0 on the system and user turns and on the role headers.
# * **DPO** compares a *chosen* and a *rejected* answer to the same prompt through
#   the log-probability ratio of the policy to a frozen reference model.
#
# Both data sets here are made from the Python standard library itself
# (`jaxlm.data.stdlib_tasks`): "write the function with this signature and
# docstring", answered by its real source (SFT and `chosen`) or by a plausible wrong
# version of it (`rejected`).

# %%
import difflib
import html
import json
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from IPython.display import HTML, display

from jaxlm.analysis.inspect_batch import render_batch
from jaxlm.config import ModelConfig, PreferenceConfig
from jaxlm.data.chat import encode_conversation, parse_conversation
from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.posttrain.functions import FunctionLimits
from jaxlm.data.preference import PreferenceStats, encode_pair, parse_preference, stack_pairs
from jaxlm.data.sft import sft_dataset
from jaxlm.data.stdlib_tasks import write_posttrain_sets
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.models.params import abstract_model, init_params
from jaxlm.training.preference_losses import (
    pair_losses_and_rewards,
    preference_loss,
    sequence_logps,
)

WORKDIR = Path(tempfile.mkdtemp(prefix="jaxlm-posttrain-"))

# %% [markdown]
# ## 1. The data sets
#
# `write_posttrain_sets` writes `sft_{train,val}.jsonl`, `dpo_{train,val}.jsonl` and
# a manifest (`jaxlm data posttrain OUT_DIR` on the command line). Here it reads only
# the first 40 files of each split and keeps short functions, so it takes a second.
# Train and validation tasks come from disjoint files, the same split pretraining
# uses.

# %%
limits = FunctionLimits(max_body_lines=8, max_answer_chars=500)
sets = WORKDIR / "sets"
manifest = write_posttrain_sets(sets, max_files=40, max_sft=16, max_pairs=16, limits=limits)
print(json.dumps(manifest["splits"], indent=1))
print("corruptions in dpo_train:", manifest["files"]["dpo_train.jsonl"]["corruptions"])

tokenizer = train_tokenizer(
    [read_text(path) for path in stdlib_files("train")[:80]],
    WORKDIR / "tok",
    vocab_size=1024,
    max_chars=300_000,
)

# %% [markdown]
# ## 2. One SFT conversation, token by token
#
# Each turn is rendered in the ChatML layout `<|im_start|>{role}\n{content}<|im_end|>\n`,
# where the two markers are single special tokens that no text can forge.
# `encode_conversation` returns the token ids and a `train_token` flag per token:
# **1 on the assistant's content and on the `<|im_end|>` that closes it** (so the
# model learns to stop), 0 elsewhere. Green tokens below are trained, grey ones are
# context only.

# %%
record = json.loads((sets / "sft_train.jsonl").read_text().splitlines()[0])
messages = parse_conversation(record)
for message in messages:
    print(f"--- {message.role}\n{message.content}")
encoded = encode_conversation(messages, tokenizer, max_len=1024)


def token_html(tokens, flags):
    """Each token as a box: green when trained, grey when context only."""
    spans = []
    for token, flag in zip(tokens, flags, strict=True):
        piece = tokenizer.piece(int(token)).replace("▁", " ")
        colour = "#b7e4b0" if flag else "#e4e4e4"
        text = html.escape(piece.replace("\n", "↵"))
        style = f"background:{colour};white-space:pre;margin-right:1px"
        spans.append(f'<span style="{style}">{text}</span>' + ("<br>" * piece.count("\n")))
    return '<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>"


display(HTML(token_html(encoded.tokens, encoded.train_token)))
print(f"{len(encoded.tokens)} tokens, {int(encoded.train_token.sum())} trained")

# %% [markdown]
# The same in plain text around the turn boundary: the assistant header is context,
# the answer starts being trained right after it.

# %%
start = int(np.flatnonzero(encoded.train_token)[0])
for i in range(start - 6, start + 4):
    token = int(encoded.tokens[i])
    print(f"{i:4d} {token:5d} {tokenizer.piece(token)!r:16s} train={encoded.train_token[i]}")
end = int(np.flatnonzero(encoded.train_token)[-1])
print("   …")
for i in range(end - 2, len(encoded.tokens)):
    token = int(encoded.tokens[i])
    print(f"{i:4d} {token:5d} {tokenizer.piece(token)!r:16s} train={encoded.train_token[i]}")

# %% [markdown]
# In a packed SFT batch (`sft_dataset`, what a `data.format=chat` run reads) the flag
# becomes the loss mask of the position *before* the token, since position t
# predicts token t + 1. `render_batch` wraps what carries no loss in `⟦…⟧`: the
# prompts are wrapped, the answers are not.

# %%
sft_batch = next(
    iter(sft_dataset([sets / "sft_train.jsonl"], tokenizer, seq_len=512, batch_size=2, seed=0))
)
sft_batch = {k: v for k, v in sft_batch.items() if not k.startswith("_")}
print(render_batch(sft_batch, tokenizer.decode, rows=1, max_chars=900))

# %% [markdown]
# ## 3. A preference pair
#
# A DPO record holds two whole conversations with the same user turn. The rejected
# answer is the real function broken in one of four ways (another function's body,
# the last statement dropped, two dependent statements swapped, a comparison
# flipped), always one that still compiles. The diff shows what the model has to
# learn to prefer.

# %%
pair_lines = (sets / "dpo_train.jsonl").read_text().splitlines()
records = [json.loads(line) for line in pair_lines]
first = records[0]
chosen, rejected = parse_preference(first)
print("corruption:", first["corruption"])
diff = difflib.unified_diff(
    chosen[-1].content.splitlines(),
    rejected[-1].content.splitlines(),
    "chosen",
    "rejected",
    lineterm="",
)
print("\n".join(diff))

# %% [markdown]
# `encode_pair` encodes both sides and keeps the loss only on the **final assistant
# turn** (the response; the shared prompt cancels in the comparison anyway).
# `stack_pairs` makes a `[B, 2, T]` batch (choice 0 = chosen, 1 = rejected) in the
# usual schema. Pairs whose responses would be cut at T are left out here, so every
# pair differs where it should.

# %%
T = 384
stats = PreferenceStats()
pairs = []
for index, item in enumerate(records):
    chosen_msgs, rejected_msgs = parse_preference(item)
    lengths = [
        len(encode_conversation(m, tokenizer, max_len=10**6).tokens)
        for m in (chosen_msgs, rejected_msgs)
    ]
    if max(lengths) <= T:
        pair = encode_pair(
            (f"dpo_train.jsonl:{index + 1}", item), tokenizer=tokenizer, seq_len=T, stats=stats
        )
        pairs.append(pair)
kinds = [records[int(p["where"].split(":")[1]) - 1]["corruption"] for p in pairs]
batch = stack_pairs(pairs, batch_size=len(pairs), pad_id=tokenizer.pad_id)
batch = {k: v for k, v in batch.items() if not k.startswith("_")}
print(f"{len(pairs)} of {len(records)} pairs fit in T={T}: {kinds}")
print({k: v.shape for k, v in batch.items()})
print("response tokens [chosen, rejected]:\n", batch["loss_mask"].sum(-1))

# %% [markdown]
# ## 4. Implied rewards, margin and loss
#
# With summed response log-probabilities π (policy) and r (reference),
#
#     reward(y) = β (π(y) − r(y)),   h = (π_c − r_c) − (π_r − r_r),
#     DPO loss = −log σ(β h)
#
# so a policy equal to its reference has zero rewards and loss log 2 ≈ 0.693 on every
# pair. Here the reference is a freshly initialised tiny model and the policy a
# randomly perturbed copy of it: rewards are small and of either sign.

# %%
cfg = ModelConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=T)
graphdef, _ = abstract_model(cfg)
reference = init_params(cfg, jax.random.key(0))
leaves, treedef = jax.tree.flatten(reference)
noise_keys = jax.random.split(jax.random.key(1), len(leaves))
policy = jax.tree.unflatten(
    treedef,
    [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, noise_keys, strict=True)],
)


def response_logps(params, batch):
    """Summed log-probs of each response [B, 2] and its supervised token counts."""
    flat = {k: v.reshape(-1, T) for k, v in batch.items()}
    logits = nnx.merge(graphdef, params)(
        flat["tokens"], positions=flat["positions"], segment_ids=flat["segment_ids"]
    )
    logp, count = sequence_logps(logits, flat["targets"], flat["loss_mask"])
    return logp.reshape(-1, 2), count.reshape(-1, 2)


response_logps_jit = jax.jit(response_logps)
ref_logp, counts = response_logps_jit(reference, batch)
policy_logp, _ = response_logps_jit(policy, batch)

dpo = PreferenceConfig(loss="sigmoid", beta=0.1)
args = (
    policy_logp[:, 0],
    policy_logp[:, 1],
    ref_logp[:, 0],
    ref_logp[:, 1],
    counts[:, 0],
    counts[:, 1],
)
losses, chosen_reward, rejected_reward = pair_losses_and_rewards(dpo, *args)
print(" pair  π_chosen  π_rejected  r_chosen  r_rejected  reward_c  reward_r  margin   loss")
for b in range(len(pairs)):
    print(
        f"{b:5d} {float(policy_logp[b, 0]):9.2f} {float(policy_logp[b, 1]):11.2f} "
        f"{float(ref_logp[b, 0]):9.2f} {float(ref_logp[b, 1]):11.2f} "
        f"{float(chosen_reward[b]):9.4f} {float(rejected_reward[b]):9.4f} "
        f"{float(chosen_reward[b] - rejected_reward[b]):7.4f} {float(losses[b]):6.4f}"
    )
total, sums = preference_loss(dpo, *args)
print(
    f"\nmean loss {float(total / sums['pairs']):.4f}; ranked correctly "
    f"{int(sums['correct'])}/{int(sums['pairs'])}"
)

# %% [markdown]
# ## 5. What β does
#
# First, 15 plain DPO steps (β = 0.1, Adam) on this batch, with the reference
# frozen: the margins grow and every pair ends up ranked correctly. (A real run does
# this with `data.format=preference` and `jaxlm.training.preference_steps`, on many batches.)
#
# Then β. It scales the log-ratio difference h before the sigmoid: at h = 0 every β
# gives log 2, and a larger β makes the loss react more sharply to h, so a preference
# is satisfied by a smaller move away from the reference (β is the strength of the
# implicit KL penalty). In the figure, the curves are −log σ(β h) and the dots are the
# trained pairs, now at large positive h; on the right, the mean loss of those same
# log-probabilities under each β.

# %%
opt = optax.adam(1e-3)


def dpo_loss(params, batch, ref_logp):
    logp, count = response_logps(params, batch)
    total, sums = preference_loss(
        dpo, logp[:, 0], logp[:, 1], ref_logp[:, 0], ref_logp[:, 1], count[:, 0], count[:, 1]
    )
    return total / sums["pairs"], sums


@jax.jit
def dpo_step(params, opt_state, batch, ref_logp):
    (loss, sums), grads = jax.value_and_grad(dpo_loss, has_aux=True)(params, batch, ref_logp)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, sums


trained, opt_state = policy, opt.init(policy)
for step in range(1, 16):
    trained, opt_state, loss, sums = dpo_step(trained, opt_state, batch, ref_logp)
    if step in (1, 5, 10, 15):
        print(
            f"step {step:2d}: loss {float(loss):.4f}, mean margin "
            f"{float(sums['margin_sum'] / sums['pairs']):.3f}, "
            f"accuracy {float(sums['correct'] / sums['pairs']):.0%}"
        )

trained_logp, _ = response_logps_jit(trained, batch)
h = np.asarray((trained_logp[:, 0] - ref_logp[:, 0]) - (trained_logp[:, 1] - ref_logp[:, 1]))

# %%
grid = np.linspace(-1.1, 1.1, 400) * np.abs(h).max()
fig, (ax_curve, ax_beta) = plt.subplots(1, 2, figsize=(12, 4))
for beta in (0.03, 0.1, 0.3, 1.0):
    (line,) = ax_curve.plot(grid, -np.asarray(jax.nn.log_sigmoid(beta * grid)), label=f"β={beta}")
    ax_curve.plot(h, -np.asarray(jax.nn.log_sigmoid(beta * h)), "o", color=line.get_color())
ax_curve.axhline(np.log(2), color="gray", linestyle=":", label="log 2 (h = 0)")
ax_curve.set_xlabel("h = policy/reference log-ratio, chosen minus rejected (nats)")
ax_curve.set_ylabel("DPO loss −log σ(βh)")
ax_curve.set_ylim(0, 5)
ax_curve.legend()

betas = np.geomspace(0.01, 3, 30)
mean_loss = []
for beta in betas:
    cfg_beta = PreferenceConfig(loss="sigmoid", beta=float(beta))
    total, sums = preference_loss(
        cfg_beta,
        trained_logp[:, 0],
        trained_logp[:, 1],
        ref_logp[:, 0],
        ref_logp[:, 1],
        counts[:, 0],
        counts[:, 1],
    )
    mean_loss.append(float(total / sums["pairs"]))
ax_beta.semilogx(betas, mean_loss, "o-")
ax_beta.set_xlabel("β")
ax_beta.set_ylabel("mean DPO loss on this batch")
ax_beta.set_title("same log-probs, different β")
fig.tight_layout()
plt.show()

# %% [markdown]
# IPO and SimPO are the other two objectives of `preference.loss`. IPO regresses h
# to a target 1/(2β) (5 nats at β = 0.1) instead of pushing it ever higher: these
# pairs, trained with DPO far past that target, get a large IPO loss that would pull
# them back. SimPO drops the reference and compares length-normalised log-probs
# with a target margin γ, so its margin is per token and much smaller.

# %%
for loss_name in ("sigmoid", "ipo", "simpo"):
    cfg_loss = PreferenceConfig(loss=loss_name, beta=0.1)
    total, sums = preference_loss(
        cfg_loss,
        trained_logp[:, 0],
        trained_logp[:, 1],
        ref_logp[:, 0],
        ref_logp[:, 1],
        counts[:, 0],
        counts[:, 1],
    )
    print(
        f"{loss_name:8s} mean loss {float(total / sums['pairs']):9.4f}   mean margin "
        f"{float(sums['margin_sum'] / sums['pairs']):8.4f}"
    )
