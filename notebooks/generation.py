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
# # Generation: KV cache, sampling filters, batches, stop tokens, RoPE scaling
#
# `jaxlm.inference` turns a trained model into text:
#
# * `kv_cache.py`: a fixed-size key/value cache, so each new token costs one pass
#   over one token instead of a pass over the whole prefix;
# * `sampling.py`: repetition penalty, temperature, top-k, top-p and min-p, in that
#   order, on the next-token logits;
# * `decode.py`: `Generator`, one jitted prefill and one jitted decode step for a
#   batch of prompts of different lengths, each row stopping on its own.
#
# The model is a tiny one trained for a few seconds on the standard library (as in
# `train_tiny`): enough for its next-token distributions to have shape, not enough
# to write working code.

# %%
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from jaxlm.config import Config, apply_overrides
from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.errors import InputError
from jaxlm.inference.decode import Generator
from jaxlm.inference.kv_cache import forward_cached, init_cache
from jaxlm.inference.loading import load_model
from jaxlm.inference.sampling import SamplingConfig, filtered_logits
from jaxlm.models.rope import RopeScaling, frequency_multipliers
from jaxlm.training.loop import train
from jaxlm.training.losses import token_nll

WORKDIR = Path(tempfile.mkdtemp(prefix="jaxlm-generation-")) / "run"
overrides = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.vocab_size=512",
    "model.max_seq_len=64",
    "data.tokenizer_vocab_size=512",
    "data.tokenizer_max_chars=300000",
    "data.seq_len=64",
    "data.batch_size=16",
    "data.eval_max_docs=2",
    "optim.warmup_steps=10",
    "train.steps=400",
    "train.eval_every=0",
    "train.log_every=100",
    "train.progress_bar=false",
]
result = train(apply_overrides(Config(), overrides), WORKDIR)
model = load_model(WORKDIR)
cfg, tokenizer = model.cfg.model, model.tokenizer
print(f"trained at context {cfg.max_seq_len}; final eval loss {result.final_eval['loss']:.3f}")

# %% [markdown]
# ## 1. The KV cache computes what recomputation computes
#
# Prefill writes the prompt's keys and values into cache slots and returns the
# logits; each decode step feeds one token, writes its slot, and attends over the
# valid slots before it. Teacher-forcing a known continuation through the cache must
# reproduce, at every position, the logits of one full forward pass over the whole
# sequence.


# %%
@jax.jit
def cached_pass(params, cache, tokens, positions, start):
    """T tokens per row through the model, written to cache slots [start, start + T)."""
    valid = jnp.ones_like(tokens, bool)
    return forward_cached(cfg, model.graphdef, params, cache, tokens, positions, valid, start)


text = read_text(stdlib_files("validation")[0])
ids = jnp.asarray([[tokenizer.bos_id, *tokenizer.encode(text)][:40]])
n_prompt, n_total = 24, ids.shape[1]
cache = init_cache(cfg, batch=1, slots=n_total)
prefill_logits, cache = cached_pass(
    model.params, cache, ids[:, :n_prompt], jnp.arange(n_prompt)[None], jnp.int32(0)
)
per_position = [prefill_logits[0]]
for t in range(n_prompt, n_total):
    step_logits, cache = cached_pass(
        model.params, cache, ids[:, t : t + 1], jnp.asarray([[t]]), jnp.int32(t)
    )
    per_position.append(step_logits[0])
cached = jnp.concatenate(per_position)

full_forward = jax.jit(lambda params, tokens: nnx.merge(model.graphdef, params)(tokens))
full = full_forward(model.params, ids)[0]
print("cached logits", cached.shape, "full forward", full.shape)
print(f"max |difference| over all {n_total} positions: {float(jnp.abs(cached - full).max()):.2e}")

# %% [markdown]
# The same at the level of whole generations: `Generator`'s greedy tokens equal a
# greedy loop that re-runs the full model on the growing sequence for every token
# (padded to a fixed length so it compiles once: causal attention never looks at the
# padding after the last real token).

# %%
generator = Generator(cfg, model.graphdef, model.params, pad_id=tokenizer.pad_id)
prompt_ids = [tokenizer.bos_id, *tokenizer.encode("    def __init__(self, ")]
out = generator.generate([prompt_ids], max_new_tokens=24)

sequence = list(prompt_ids)
for _ in range(24):
    padded = np.zeros((1, cfg.max_seq_len), np.int32)
    padded[0, : len(sequence)] = sequence
    sequence.append(int(jnp.argmax(full_forward(model.params, padded)[0, len(sequence) - 1])))
recomputed = sequence[len(prompt_ids) :]
print("KV cache :", out.tokens[0])
print("recompute:", recomputed)
print("equal:", out.tokens[0] == recomputed)
print(repr(tokenizer.decode(prompt_ids + out.tokens[0])))

# %% [markdown]
# ## 2. Sampling settings on one next-token distribution
#
# `filtered_logits` applies the filters in order (repetition penalty, temperature,
# top-k, top-p, min-p); removed tokens get −∞ and can never be drawn. Below, the 25
# most likely next tokens after a prompt under each setting. Temperature reshapes
# the whole distribution (flatter above 1, sharper below); top-k keeps a fixed number
# of tokens; top-p keeps the smallest set whose probability reaches p, so it keeps
# few tokens where the model is sure and many where it is not; min-p keeps tokens at
# least `min_p` times as likely as the best one. The repetition penalty lowers every
# token already in the prompt (hatched).
#
# (`train` saved its loss curve with matplotlib's file-only backend; `%matplotlib
# inline` brings the notebook's inline figures back.)

# %%
context = [tokenizer.bos_id, *tokenizer.encode("import os\nimport sys\n\n\ndef main(")]
logits = model.module()(jnp.asarray([context]))[:, -1]
seen = jnp.zeros_like(logits, bool).at[0, jnp.asarray(context)].set(True)
base_probs = np.asarray(jax.nn.softmax(logits[0]))
order = np.argsort(-base_probs)[:25]
labels = [repr(tokenizer.piece(int(i)))[1:-1] for i in order]

settings = {
    "temperature 1 (the model)": SamplingConfig(temperature=1.0),
    "temperature 0.5": SamplingConfig(temperature=0.5),
    "temperature 1.5": SamplingConfig(temperature=1.5),
    "top-k 5": SamplingConfig(temperature=1.0, top_k=5),
    "top-p 0.8": SamplingConfig(temperature=1.0, top_p=0.8),
    "min-p 0.1": SamplingConfig(temperature=1.0, min_p=0.1),
    "repetition penalty 2": SamplingConfig(temperature=1.0, repetition_penalty=2.0),
}
fig, axes = plt.subplots(len(settings), 1, figsize=(12, 2.0 * len(settings)), sharex=True)
for ax, (name, sampling) in zip(axes, settings.items(), strict=True):
    filtered = filtered_logits(logits, seen, sampling)
    probs = np.asarray(jax.nn.softmax(filtered[0]))
    kept = int(np.isfinite(np.asarray(filtered[0])).sum())
    bars = ax.bar(range(len(order)), probs[order], color="C0")
    for bar, token_id in zip(bars, order, strict=True):
        if bool(seen[0, token_id]):
            bar.set_hatch("//")
    ax.set_title(f"{name}: {kept} of {cfg.vocab_size} tokens can be drawn", fontsize=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p")
axes[-1].set_xticks(range(len(order)), labels, rotation=90, fontfamily="monospace")
fig.tight_layout()
plt.show()

# %% [markdown]
# A sampled generation draws from the filtered distribution at every step, with step
# t's key folded from the seed, so a seed reproduces its text exactly.

# %%
for seed in (0, 1):
    sampled = generator.generate(
        [context], max_new_tokens=30, sampling=SamplingConfig(temperature=0.8, top_p=0.9), seed=seed
    )
    print(f"seed {seed}: {tokenizer.decode(context + sampled.tokens[0])!r}")

# %% [markdown]
# ## 3. A batch of prompts of different lengths, and stop tokens
#
# Prompts are right-padded into one cache; each row's new tokens take the same cache
# slots but RoPE gets each token's true position, so a row's output does not depend
# on what else is in its batch. Each row stops on its own at a stop token (the stop
# token is not part of the output); here the stop tokens are EOS and every piece
# that contains a newline, so each row completes one line.

# %%
prompts_text = ["import ", "class Config:\n    def ", "        raise ValueError("]
prompts = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts_text]
print("prompt lengths:", [len(p) for p in prompts])
newline_ids = [i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i])]
stops = [tokenizer.eos_id, *newline_ids]

batched = generator.generate(prompts, max_new_tokens=20, stop_ids=stops)
for text, tokens, stopped in zip(prompts_text, batched.tokens, batched.stopped, strict=True):
    how = "stopped at a stop token" if stopped else "hit max_new_tokens"
    print(f"{len(tokens):2d} tokens, {how}: {text + tokenizer.decode(tokens)!r}")

alone = [generator.generate([p], max_new_tokens=20, stop_ids=stops).tokens[0] for p in prompts]
print("each row equals the prompt generated alone:", alone == batched.tokens)

# %% [markdown]
# ## 4. Past the trained context: RoPE scaling at inference
#
# The model was trained on 64-token rows. `Generator` refuses to go beyond
# `model.max_seq_len`, and says how to extend it:

# %%
try:
    generator.generate([prompts[0]], max_new_tokens=100)
except InputError as error:
    print("InputError:", error)

# %% [markdown]
# `load_model(..., overrides=[...])` accepts only settings that leave the weights'
# shapes alone (maximum length, RoPE scaling, compute dtype, attention
# implementation); anything else is refused by name:

# %%
try:
    load_model(WORKDIR, overrides=["model.d_model=128"])
except InputError as error:
    print("InputError:", error)

# %% [markdown]
# Each scaling replaces RoPE's frequency f_i of dimension pair i by m_i · f_i, for a
# factor s = new context / trained context (here 4). `linear` (position
# interpolation) divides every frequency by s: all positions, the trained ones too,
# are squeezed into the trained range of angles. `ntk` leaves the fastest pair alone
# and interpolates the slowest by exactly 1/s; `yarn` interpolates only the pairs
# that turn less than once over the trained context, leaves the fast ones alone and
# blends between (it also sharpens attention slightly).

# %%
head_dim = cfg.d_model // cfg.n_heads
fig, ax = plt.subplots(figsize=(8, 3.5))
for method in ("linear", "ntk", "yarn"):
    scaling = RopeScaling(method=method, factor=4.0, original_max_len=cfg.max_seq_len)
    multipliers = frequency_multipliers(head_dim, cfg.rope_theta, scaling)
    ax.plot(multipliers, "o-", label=method)
ax.set_xlabel("dimension pair i (fast → slow rotation)")
ax.set_ylabel("frequency multiplier m_i")
ax.set_title(f"RoPE scaling by a factor of 4, head dim {head_dim}")
ax.legend()
plt.show()

# %% [markdown]
# Loss by position on a held-out file of 256 tokens, four times the trained context:
# the context raised to 256 with RoPE left alone, or scaled by 4 with each method.
# Without fine-tuning, interpolation typically costs some loss inside the trained
# context (every angle moved), while NTK and YaRN keep the fast pairs, which local
# attention relies on. How badly unscaled RoPE does past the context depends on how
# much the model attends far back: this tiny model mostly reads the last few tokens,
# so none of the curves blow up. `experiments/context_extension.py` measures this on
# a real run, with a short fine-tune at the longer length.

# %%
long_ids = [tokenizer.bos_id, *tokenizer.encode(read_text(stdlib_files("validation")[1]))][:257]
inputs, targets = jnp.asarray([long_ids[:-1]]), jnp.asarray([long_ids[1:]])
longer = ["model.max_seq_len=256"]
variants = {
    "none": longer,
    "linear": [*longer, "model.rope_scaling=linear", "model.rope_scaling_factor=4"],
    "ntk": [*longer, "model.rope_scaling=ntk", "model.rope_scaling_factor=4"],
    "yarn": [
        *longer,
        "model.rope_scaling=yarn",
        "model.rope_scaling_factor=4",
        "model.rope_original_max_len=64",
    ],
}
fig, ax = plt.subplots(figsize=(10, 4))
window = 16
for name, extra in variants.items():
    scaled = load_model(WORKDIR, overrides=extra)
    nll, _ = token_nll(scaled.module()(inputs), targets)
    nll = np.asarray(nll[0])
    smooth = np.convolve(nll, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(len(smooth)) + window, smooth, label=name)
    print(
        f"{name:7s} mean loss, positions < 64: {nll[:64].mean():.3f}; >= 64: {nll[64:].mean():.3f}"
    )
ax.axvline(64, color="gray", linestyle="--", label="trained context")
ax.set_xlabel("position")
ax.set_ylabel(f"loss ({window}-token moving mean)")
ax.legend()
plt.show()

# %% [markdown]
# With scaling on, the same `Generator` goes past 64 tokens:

# %%
yarn = load_model(WORKDIR, overrides=variants["yarn"])
long_generator = Generator(yarn.cfg.model, yarn.graphdef, yarn.params, pad_id=tokenizer.pad_id)
long_out = long_generator.generate([long_ids[:40]], max_new_tokens=100)
print(f"{len(long_ids[:40])} prompt + {len(long_out.tokens[0])} new tokens")
print(tokenizer.decode(long_out.tokens[0])[:400])
