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
# # Comparing runs and fitting scaling laws
#
# Two tools for the questions a sweep raises:
#
# * `jaxlm.analysis.compare` reads run workdirs (their `metrics.jsonl` and `config.json`),
#   puts every loss on four x axes (step, tokens, FLOPs, wall time) and builds a
#   final-metrics table; `jaxlm.analysis.compare_plots` draws them. On the command line this
#   is `jaxlm compare runs/a runs/b ...`.
# * `jaxlm.analysis.scaling_law` fits `L(N) = E + A/N^α` and `L(N, D) = E + A/N^α + B/D^β`
#   with an irreducible term, bootstrap uncertainty, and the compute-optimal model
#   size that follows (`jaxlm scaling-fit`).
#
# **The runs in this notebook are synthetic**: their `metrics.jsonl` files are written
# with `MetricsWriter`, the class `jaxlm.training.loop` logs with, from a known loss law plus
# noise. Real runs of meaningful size take far longer than a notebook should, and a
# known law lets us check that the fit recovers it. Point `load_runs` at real
# workdirs (e.g. the points of `jaxlm sweep scaling_sweep`) and everything below
# works the same way.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from jaxlm.analysis.compare import load_runs, table_markdown
from jaxlm.analysis.compare_plots import plot_comparison, plot_scaling_fit
from jaxlm.analysis.scaling_law import (
    LossNDFit,
    bootstrap,
    fit_loss_nd,
    fit_power_law,
    isoflop_optimum,
)
from jaxlm.config import Config, DataConfig, ModelConfig
from jaxlm.models import count_params
from jaxlm.models.flops import flops_per_token
from jaxlm.training.metrics import MetricsWriter

WORKDIR = Path(tempfile.mkdtemp(prefix="jaxlm-compare-"))
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The ground truth
#
# The synthetic losses follow Hoffmann et al.'s (Chinchilla) fitted law, with N the
# non-embedding parameters and D the training tokens:

# %%
TRUE = LossNDFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28, rmse_log=0.0, n_points=0)
print(TRUE.params())
print(f"compute-optimal size grows as C^{TRUE.size_exponent:.3f}")

# %% [markdown]
# ## 2. Three runs, a divergence and a run still going
#
# Three model sizes trained on the same 2048 × 256-token batches for 2000 steps, a
# fourth run with a larger learning rate that learns faster and then goes NaN, and a
# fifth (another seed of the largest model) that has not finished yet: no `summary`
# record. Each record carries what `jaxlm.training.loop` logs:
# the loss, `tokens_seen`, model `flops` so far and `elapsed_s`.

# %%
SEQ, BATCH, STEPS = 2048, 256, 2000


def llama(d_model, n_layers):
    """A Llama-shaped model with 64-wide heads."""
    heads = d_model // 64
    return ModelConfig(
        vocab_size=32000,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=heads,
        max_seq_len=SEQ,
    )


SIZES = {f"d{d}-l{n}": llama(d, n) for d, n in [(384, 6), (768, 12), (1024, 16)]}


def write_run(name, model, *, logged=STEPS, nan_at=None, speedup=1.0, flops_per_s=4e14):
    """A workdir with config.json and metrics.jsonl, as jaxlm.training.loop would leave it after
    `logged` of STEPS steps (fewer: still running). `speedup` > 1 learns faster per token
    (a larger learning rate, say); `nan_at` is where it diverges."""
    workdir = WORKDIR / name
    workdir.mkdir()
    data = DataConfig(seq_len=SEQ, batch_size=BATCH, tokenizer_vocab_size=32000)
    (workdir / "config.json").write_text(Config(name=name, model=model, data=data).to_json())
    n = count_params(model, include_embedding=False)
    per_token = flops_per_token(model, SEQ)
    writer = MetricsWriter(workdir, tensorboard=False)
    for step in range(20, logged + 1, 20):
        tokens = step * SEQ * BATCH
        progress = {
            "tokens_seen": tokens,
            "flops": tokens * per_token,
            "elapsed_s": tokens * per_token / flops_per_s,
        }
        loss = float(TRUE.predict(n, tokens * speedup) * np.exp(rng.normal(0, 0.01)))
        if nan_at is not None and step >= nan_at:
            writer.write(step, "train", {"loss": float("nan"), **progress})
            break  # the trainer stops at a non-finite loss, with no summary
        writer.write(step, "train", {"loss": loss, "mfu": 0.4, **progress})
        if step % 500 == 0:
            eval_loss = float(TRUE.predict(n, tokens * speedup)) + 0.02
            eval_values = {"loss": eval_loss, "bits_per_byte": eval_loss / 2.2}
            writer.write(step, "eval", {**eval_values, **progress})
    else:
        if logged == STEPS:
            wall = STEPS * SEQ * BATCH * per_token / flops_per_s
            writer.write(STEPS, "summary", {"wall_s": wall, "goodput": 0.9})
    writer.close()
    return workdir


paths = [write_run(name, model) for name, model in SIZES.items()]
paths.append(write_run("d768-l12-lr3e-2", SIZES["d768-l12"], speedup=1.5, nan_at=900))
paths.append(write_run("d1024-l16-seed1", SIZES["d1024-l16"], logged=1200))
print((paths[0] / "metrics.jsonl").read_text().splitlines()[0])

# %% [markdown]
# `load_runs` reads them back. The status column tells finished runs from a run that
# went NaN (its series are cut before the NaN) and one still in progress. The table
# is what `jaxlm compare` writes as `final_metrics.md` (and `.csv`).

# %%
runs = load_runs(paths)
display(Markdown(table_markdown(runs)))

# %% [markdown]
# `plot_comparison` draws every run's training loss (lines, smoothed here) and eval
# loss (dots) against the four x axes. Against steps the sizes look alike in cost;
# against FLOPs or wall time the larger models pay for their lower loss, and the
# curves cross: at a small compute budget the small model is ahead. The NaN run ends
# in an ×.

# %%
png, _svg = plot_comparison(runs, WORKDIR / "comparison", smoothing=0.6, log_x=True)
display(Image(filename=png))

# %% [markdown]
# ## 3. An IsoFLOP grid and the fit of L(N, D)
#
# A scaling study trains several sizes at each of a few compute budgets C ≈ 6·N·D.
# Here: 4 budgets × 5 sizes spread around the optimum, with 0.5 % multiplicative
# noise on every final loss. `fit_loss_nd` needs no starting guess (a grid over the
# exponents, then Levenberg-Marquardt in log space); `bootstrap` refits on resampled
# points to give each parameter a spread.

# %%
N, D, C = [], [], []
for budget in (1e17, 1e18, 1e19, 1e20):
    n_opt, _ = TRUE.optimal_allocation(budget)
    for n in n_opt * np.geomspace(1 / 6, 6, 5):
        N.append(n)
        D.append(budget / (6 * n))
        C.append(budget)
N, D, C = map(np.asarray, (N, D, C))
loss = TRUE.predict(N, D) * np.exp(rng.normal(0, 0.005, len(N)))

fit = fit_loss_nd(N, D, loss)
boot = bootstrap(fit_loss_nd, N, D, loss, n=100, seed=0)
print(f"{'':6s} {'true':>8s} {'fitted':>8s}   95% bootstrap interval")
for name, estimate in boot.estimates(fit).items():
    truth = TRUE.params()[name]
    print(f"{name:6s} {truth:8.3f} {estimate.value:8.3f}   [{estimate.lo:.3f}, {estimate.hi:.3f}]")
print(f"log-space RMSE of the fit: {fit.rmse_log:.4f} (noise was 0.005)")

# %% [markdown]
# ## 4. Compute-optimal size
#
# Minimising the fitted L(N, D) subject to 6·N·D = C gives `N_opt ∝ C^a` with
# `a = β / (α + β)`. The IsoFLOP method is a model-free cross-check: a parabola in
# log N through each budget's losses gives that budget's best size, and a line
# through those gives the exponent directly.

# %%
iso = isoflop_optimum(N, C, loss)
print(
    f"exponent a: true {TRUE.size_exponent:.3f}, from L(N, D) {fit.size_exponent:.3f}, "
    f"IsoFLOP {iso.a:.3f}"
)
print(f"\n{'budget C':>10s} {'N_opt':>10s} {'D_opt':>10s} {'tokens/param':>13s} {'loss':>7s}")
for budget in (1e19, 1e21, 1e23):
    n_opt, d_opt = fit.optimal_allocation(budget)
    print(
        f"{budget:10.0e} {n_opt:10.3g} {d_opt:10.3g} {d_opt / n_opt:13.1f} "
        f"{float(fit.predict(n_opt, d_opt)):7.3f}"
    )

# %% [markdown]
# Each IsoFLOP budget is one curve of loss against size, with its minimum marked.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for budget in np.unique(C):
    at = np.equal(C, budget)
    sizes = np.geomspace(N[at].min(), N[at].max(), 100)
    (line,) = ax.plot(N[at], loss[at], "o", label=f"C = {budget:.0e}")
    ax.plot(sizes, fit.predict(sizes, budget / (6 * sizes)), color=line.get_color())
for level in iso.levels:
    ax.axvline(level["n_opt"], color="gray", linewidth=0.5)
ax.set_xscale("log")
ax.set_xlabel("non-embedding parameters N")
ax.set_ylabel("final loss")
ax.set_title("IsoFLOP curves: points, fitted L(N, D), parabola minima (grey)")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. Data, fit and extrapolation
#
# `plot_scaling_fit` draws one panel per law: the data, the fit, its bootstrap 95 %
# band and the extrapolation (dashed) far beyond the data. Left: a one-variable law
# `L(N)` fitted to sizes trained on plenty of data (D = 10¹² tokens), whose true
# exponent is α = 0.34. Right: `N_opt(C)` from the L(N, D) fit above, through the
# budgets' points (all runs are shown, not only the optimal ones).

# %%
sizes = np.geomspace(1e6, 3e8, 7)
size_loss = TRUE.predict(sizes, 1e12) * np.exp(rng.normal(0, 0.005, len(sizes)))
size_fit = fit_power_law(sizes, size_loss)
size_boot = bootstrap(fit_power_law, sizes, size_loss, n=200, seed=0)
print(
    f"L(N): α = {size_fit.alpha:.3f} (true 0.34), E = {size_fit.E:.3f} "
    f"(true E + B/D^β = {TRUE.E + TRUE.B / 1e12**TRUE.beta:.3f})"
)


def curves(boot, law, n=200):
    """Callables for the band: the law with each bootstrap sample's parameters."""
    samples = boot.samples
    count = min(n, len(next(iter(samples.values()))))
    fits = [
        type(law)(**{k: samples[k][i] for k in law.params()}, rmse_log=0.0, n_points=0)
        for i in range(count)
    ]
    return fits


panels = [
    {
        "x": sizes,
        "y": size_loss,
        "predict": size_fit.predict,
        "band_samples": [f.predict for f in curves(size_boot, size_fit)],
        "xlabel": "non-embedding parameters N",
        "title": f"L(N) = E + A/N^α: α = {size_fit.alpha:.3f}",
    },
    {
        "x": 6 * N * D,
        "y": N,
        "predict": lambda c: fit.optimal_allocation(np.asarray(c))[0],
        "band_samples": [
            lambda c, f=f: f.optimal_allocation(np.asarray(c))[0] for f in curves(boot, fit)
        ],
        "xlabel": "FLOPs C",
        "ylabel": "non-embedding parameters N",
        "title": f"N_opt(C) ∝ C^{fit.size_exponent:.3f} (true {TRUE.size_exponent:.3f})",
        "fit_label": "N_opt(C)",
    },
]
png, _svg = plot_scaling_fit(panels, WORKDIR / "scaling", extrapolate=100.0)
display(Image(filename=png))
