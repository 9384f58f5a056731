"""Figures for comparing runs: loss curves on four x axes, any logged metric against
step (`--metrics`), and scaling-law fits.

Both write a PNG and an SVG with the same stem; matplotlib runs headless (Agg). Only
code about to draw imports this module (`jaxlm compare`, `jaxlm scaling fit`), so it
imports matplotlib at once.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter

from jaxlm.analysis.compare import X_AXES, X_LABELS, Run, smooth
from jaxlm.analysis.plotting import new_figure


def _save(fig, stem: Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    return paths


def plot_comparison(
    runs: list[Run],
    stem: Path,
    *,
    smoothing: float | None = None,
    log_x: bool = False,
    log_y: bool = False,
) -> list[Path]:
    """A 2×2 grid: train loss (lines) and eval loss (markers) of every run against step,
    tokens, FLOPs and wall time. With `smoothing`, train losses are smoothed (the raw
    curve stays, faint). A run that went NaN is drawn up to the NaN, ending in an ×."""
    fig = new_figure(figsize=(12, 8), dpi=110)
    axes = fig.subplots(2, 2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, axis in zip(axes.ravel(), X_AXES, strict=True):
        drawn = 0
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            label = run.label if run.nan_step is None else f"{run.label} (NaN at {run.nan_step})"
            x, y = _points(run.train[axis], run.train["loss"], log_x)
            if len(x):
                if smoothing:
                    ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(x, smooth(y, smoothing), color=color, label=label)
                if run.nan_step is not None:
                    ax.plot(x[-1:], y[-1:], "x", color=color, markersize=9, mew=2)
                label = None
                drawn += 1
            ex, ey = _points(run.eval[axis], run.eval["loss"], log_x)
            if len(ex):
                ax.plot(ex, ey, "o", color=color, markersize=5, mec="black", mew=0.5)
                if label is not None:  # a run with evals only: still in the legend
                    ax.plot([], [], "o", color=color, label=label)
                drawn += 1
        ax.set_xlabel(X_LABELS[axis])
        ax.set_ylabel("loss (nats/token)")
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.grid(True, which="both", alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no run has this axis", ha="center", transform=ax.transAxes)
    handles = axes[0, 0].get_legend_handles_labels()[0]
    handles += [
        Line2D([], [], color="gray", label="train loss"),
        Line2D([], [], color="gray", marker="o", linestyle="", label="eval loss"),
    ]
    # The legend sits below the grid; reserve one line of height per legend row, so
    # a sweep of two dozen runs does not cover the bottom panels' axis labels.
    ncol = min(len(handles), 6)
    legend_h = 0.25 * -(-len(handles) // ncol) + 0.2  # inches
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + legend_h)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (height + legend_h), 1, 1))
    paths = _save(fig, stem)
    return paths


def plot_metrics(runs: list[Run], names: list[str], stem: Path, *, smoothing=None) -> list[Path]:
    """One panel per metric name against step: train records as lines (smoothed like
    the loss curves), eval records as markers. A metric no run logged says so."""
    cols = min(len(names), 2)
    rows = -(-len(names) // cols)
    fig = new_figure(figsize=(6 * cols, 3.6 * rows), dpi=110)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes, names, strict=False):
        drawn = 0
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            x, y = _points(*run.metric("train", name), False)
            if len(x):
                ax.plot(x, smooth(y, smoothing), color=color, label=run.label)
                drawn += 1
            ex, ey = _points(*run.metric("eval", name), False)
            if len(ex):
                label = None if len(x) else run.label
                ax.plot(ex, ey, "o", color=color, mec="black", mew=0.5, label=label)
                drawn += 1
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logged {name!r}", ha="center", transform=ax.transAxes)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, stem)


def _points(x: np.ndarray, y: np.ndarray, log_x: bool) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    if log_x:
        keep &= x > 0
    return x[keep], y[keep]


def plot_scaling_fit(
    panels: list[dict],
    stem: Path,
    *,
    extrapolate: float = 100.0,
) -> list[Path]:
    """One panel per law: data points, the fit, its bootstrap 95% band, and the
    extrapolation (dashed) to `extrapolate` times the largest x.

    Each panel is a dict: x, y (the data), predict (callable: x grid -> curve),
    band_samples (callables from bootstrap fits; may be empty), xlabel, title, and
    optionally ylabel, names (point labels), fit_label, data_label, and x_other /
    y_other: runs shown (grey) but not fitted."""
    fig = new_figure(figsize=(5.5 * len(panels), 4.5), dpi=110)
    axes = fig.subplots(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, p in zip(axes, panels, strict=True):
        x = np.asarray(p["x"], dtype=np.float64)
        lo, hi = x.min() / 2, x.max() * extrapolate
        grid = np.geomspace(lo, hi, 200)
        inside = grid <= x.max()
        fit = p["predict"](grid)
        ax.plot(grid[inside], fit[inside], "C0-", label=p.get("fit_label", "fit"))
        ax.plot(grid[~inside], fit[~inside], "C0--", label="extrapolation")
        curves = [f(grid) for f in p.get("band_samples", [])]
        if curves:
            band = np.percentile(np.stack(curves), [2.5, 97.5], axis=0)
            ax.fill_between(grid, band[0], band[1], color="C0", alpha=0.2, label="bootstrap 95%")
        if len(p.get("x_other", [])):
            ax.plot(p["x_other"], p["y_other"], "o", color="0.7", markersize=4, label="not fitted")
        ax.plot(x, p["y"], "ko", markersize=5, label=p.get("data_label", "runs"))
        names = p.get("names", []) if len(x) <= 12 else []  # more would be unreadable
        for xv, yv, name in zip(x, p["y"], names, strict=False):
            ax.annotate(name, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        shown = np.concatenate([np.asarray(p["y"], float), fit, p.get("y_other", [])])
        shown = shown[np.isfinite(shown) & (shown > 0)]
        ax.set_ylim(shown.min() / 1.15, shown.max() * 1.15)  # a wild band does not rescale
        low, high = ax.get_ylim()
        if high < 10 * low:  # within a decade: label the minor ticks, as plain numbers
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p.get("ylabel", "final eval loss (nats/token)"))
        ax.set_title(p["title"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths = _save(fig, stem)
    return paths
