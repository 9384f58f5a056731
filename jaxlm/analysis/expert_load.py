"""A mixture-of-experts run's expert load over training, drawn from its metrics.jsonl.

The train records of a MoE run hold `moe_load_l{layer}_e{expert}`: each expert's share
of its layer's assignments at that step (jaxlm.training.moe_losses). One panel per
layer stacks the shares (they sum to 1), so a balanced layer shows even bands and a
collapsing one a band that swallows the others; the dashed line is the busiest
expert's share, whose ideal is 1/E.
"""

from __future__ import annotations

import re
from pathlib import Path

from jaxlm.analysis.metrics_file import numbered_metrics
from jaxlm.analysis.plotting import new_figure

_KEY = re.compile(r"moe_load_l(\d+)_e(\d+)$")


def load_series(metrics_path: Path) -> tuple[list[int], dict[int, dict[int, list[float]]]]:
    """(steps, {layer: {expert: shares}}) of the train records; a step logged again by a
    resumed run replaces the earlier record. Empty for a dense run."""
    notes: list[str] = []
    by_step = {}
    for _, record in numbered_metrics(metrics_path, notes=notes):
        if record["split"] == "train" and any(_KEY.match(k) for k in record):
            by_step[record["step"]] = record
    steps = sorted(by_step)
    series: dict[int, dict[int, list[float]]] = {}
    for step in steps:
        for key, value in by_step[step].items():
            found = _KEY.match(key)
            if found:
                layer, expert = int(found.group(1)), int(found.group(2))
                series.setdefault(layer, {}).setdefault(expert, []).append(float(value))
    return steps, series


def plot_expert_load(metrics_path: Path, out_png: Path) -> Path | None:
    """Draw the run's expert load to `out_png`; None (nothing drawn) for a dense run."""
    steps, series = load_series(metrics_path)
    if not steps:
        return None
    layers = sorted(series)
    columns = min(4, len(layers))
    rows = -(-len(layers) // columns)
    fig = new_figure(figsize=(3.2 * columns, 2.6 * rows), dpi=110)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, layer in enumerate(layers):
        ax = axes[index // columns][index % columns]
        experts = sorted(series[layer])
        shares = [series[layer][e] for e in experts]
        ax.stackplot(steps, *shares, labels=[f"expert {e}" for e in experts])
        busiest = [max(values) for values in zip(*shares, strict=True)]
        ax.plot(steps, busiest, "k--", linewidth=1, label="busiest")
        ax.axhline(1 / len(experts), color="gray", linewidth=0.8, alpha=0.6)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("step")
        if index % columns == 0:
            ax.set_ylabel("share of assignments")
    for index in range(len(layers), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
