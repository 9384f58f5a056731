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
# # Train a tiny model in-process, plot its loss, generate from it
#
# `jaxlm train` and `python -m experiments.quickstart` are thin wrappers around one
# function, `jaxlm.training.loop.train(cfg, workdir)`. Called from a notebook it runs the
# same host loop: it trains a tokenizer into the workdir, initialises a sharded
# state, trains with periodic evaluation, writes `metrics.jsonl`, TensorBoard events
# and a checkpoint, and returns a summary.
#
# The model here is deliberately tiny (2 layers, d_model 64, 200 steps of 16 × 64
# tokens) so the whole notebook runs in well under a minute on a laptop CPU. Do not
# expect it to write good code: expect its loss to fall, well below the uniform
# guess, and its samples to look like Python-shaped noise.

# %%
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxlm.analysis.metrics_file import read_metrics
from jaxlm.config import Config, apply_overrides
from jaxlm.inference.decode import Generator
from jaxlm.inference.loading import load_model
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.models import count_params
from jaxlm.training.loop import train

WORKDIR = Path(tempfile.mkdtemp(prefix="jaxlm-train-tiny-")) / "run"
print("workdir:", WORKDIR)

# %% [markdown]
# ## 1. The config
#
# A run is one frozen, typed `Config`. Overrides are the same `key=value` strings as
# `jaxlm train ... --set key=value`; an unknown key is an error naming the closest
# valid one. The data source defaults to `stdlib`, the embedded corpus.

# %%
overrides = [
    "name=train_tiny",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.vocab_size=1024",
    "model.max_seq_len=64",
    "data.tokenizer_vocab_size=1024",
    "data.tokenizer_max_chars=500000",
    "data.seq_len=64",
    "data.batch_size=16",
    "data.eval_max_docs=8",
    "optim.lr=3e-3",
    "optim.warmup_steps=20",
    "train.steps=200",
    "train.eval_every=50",
    "train.log_every=5",
    "train.progress_bar=false",
]
cfg = apply_overrides(Config(), overrides)
print(f"{count_params(cfg.model):,d} parameters")
print(cfg.model)

# %% [markdown]
# ## 2. Train
#
# The log lines below are the run's own: where the tokenizer went, the FLOP
# convention used for MFU, and an evaluation every 50 steps with held-out loss and
# **bits per byte** (the loss per byte of text rather than per token, so it can be
# compared across tokenizers and with gzip). Most of the wall time is compilation;
# the steps themselves take milliseconds.

# %%
result = train(cfg, WORKDIR)
print(f"\nfinal eval: {result.final_eval}")
print(f"gzip -9 on the same held-out bytes: {result.gzip_bits_per_byte:.3f} bits/byte")
print("time ledger:", {k: round(v, 2) for k, v in result.timing.items()})
print("files:", sorted(p.name for p in WORKDIR.iterdir()))

# %% [markdown]
# ## 3. The loss curve from `metrics.jsonl`
#
# Every log window and every evaluation is one JSON line with its `split`
# (`train`, `eval` or the final `summary`). Training losses are means over the log
# window; the dashed line is the loss of a uniform guess over the vocabulary,
# `ln(V)`, where every run starts. (`train` also saved its own `loss_curve.png` in
# the workdir.)

# %%
records = read_metrics(WORKDIR / "metrics.jsonl")
train_records = [r for r in records if r["split"] == "train"]
eval_records = [r for r in records if r["split"] == "eval"]
print(train_records[-1])

fig, (ax_step, ax_bpb) = plt.subplots(1, 2, figsize=(12, 4))
ax_step.plot(
    [r["step"] for r in train_records],
    [r["loss"] for r in train_records],
    label="train (5-step means)",
)
ax_step.plot(
    [r["step"] for r in eval_records],
    [r["loss"] for r in eval_records],
    "o-",
    label="held-out eval",
)
ax_step.axhline(np.log(cfg.model.vocab_size), color="gray", linestyle="--", label="ln V")
ax_step.set_xlabel("step")
ax_step.set_ylabel("loss (nats/token)")
ax_step.legend()
ax_bpb.plot(
    [r["tokens_seen"] for r in eval_records],
    [r["bits_per_byte"] for r in eval_records],
    "o-",
    label="model",
)
ax_bpb.axhline(result.gzip_bits_per_byte, color="gray", linestyle="--", label="gzip -9")
ax_bpb.set_xlabel("tokens trained")
ax_bpb.set_ylabel("held-out bits per byte")
ax_bpb.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Load the checkpoint and generate
#
# `load_model` accepts a training workdir (its newest good checkpoint) or a
# `jaxlm export` directory and returns the config, graph definition, parameters and
# tokenizer. `Generator` compiles one prefill and one cached decode step and reuses
# them for every call with the same shapes.
#
# Greedy decoding of a model this small quickly falls into a loop; sampling with a
# temperature and nucleus (top-p) gives more varied, still Python-looking text. The
# same seed gives the same sample.

# %%
model = load_model(WORKDIR)
print("loaded", model.source)
tokenizer = model.tokenizer
generator = Generator(model.cfg.model, model.graphdef, model.params, pad_id=tokenizer.pad_id)

prompt_text = "def __init__(self"
prompt = [tokenizer.bos_id, *tokenizer.encode(prompt_text)]
settings = {
    "greedy": SamplingConfig(),
    "temperature 0.8, top-p 0.95": SamplingConfig(temperature=0.8, top_p=0.95),
}
for label, sampling in settings.items():
    out = generator.generate(
        [prompt], max_new_tokens=40, sampling=sampling, stop_ids=[tokenizer.eos_id], seed=0
    )
    print(f"--- {label} ({len(out.tokens[0])} tokens, decode {out.decode_s:.2f}s)")
    print(prompt_text + tokenizer.decode(out.tokens[0]))

# %% [markdown]
# The loaded model is also an ordinary NNX module (`model.module()`), handy for a
# one-off forward pass: here, the five tokens it finds most likely after the prompt.

# %%
logits = model.module()(np.asarray([prompt]))[0, -1]
probs = jax.nn.softmax(logits)
for token_id in np.argsort(-np.asarray(probs))[:5]:
    print(f"{float(probs[token_id]):6.1%}  {tokenizer.piece(int(token_id))!r}")
