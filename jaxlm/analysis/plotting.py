"""Loss-curve plots from metrics.jsonl files (PNG, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxlm.analysis.compare import load_run


def new_figure(**kwargs):
    """A matplotlib Figure drawn off-screen, without pyplot.

    `matplotlib.use("Agg")` or pyplot figures would switch the backend (or leak figures)
    for the whole process: in a notebook, plots made afterwards would stop showing.
    A bare Figure needs neither, and `fig.savefig` still writes PNG, SVG or PDF.
    """
    # matplotlib loads on the first figure, not with this module: the training loop and
    # `jaxlm data inspect` import it at start-up and draw only at the end, or never.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_loss_curves(
    metrics_paths: Sequence[Path],
    out_png: Path,
    *,
    labels: Sequence[str] | None = None,
    x_axis: str = "step",
) -> Path:
    """Train loss (lines) and eval loss (markers) of one or more runs on one figure.

    Read as `jaxlm compare` reads runs (jaxlm.analysis.compare.load_run): steps logged again by a
    resumed run replace the earlier ones, a torn last line is skipped, a NaN ends the
    curve. `x_axis` is one of jaxlm.analysis.compare.X_AXES (step, tokens, flops, elapsed_s)."""
    labels = list(labels) if labels else [Path(p).parent.name for p in metrics_paths]
    fig = new_figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    for path, label in zip(metrics_paths, labels, strict=True):
        run = load_run(path, label)
        train, evals = run.train, run.eval
        (line,) = ax.plot(train[x_axis], train["loss"], label=label)
        if len(evals):
            ax.plot(
                evals[x_axis],
                evals["loss"],
                "o",
                color=line.get_color(),
                label=f"{label} (eval)",
            )
    ax.set_xlabel(x_axis)
    ax.set_ylabel("next-token loss (nats)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
