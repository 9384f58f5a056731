"""Reading runs for comparison: loss series on four x axes and a table of final metrics.

A run is a workdir with `metrics.jsonl` (read by jaxlm.analysis.metrics_file) and usually
`config.json`. Each train and eval record is placed on four x axes: `step`, `tokens`
(trained so far), `flops` (model FLOPs so far, the MFU convention of jaxlm.models.flops)
and `elapsed_s` (wall seconds of the run so far). Runs written before those fields
existed get them derived, and the run's notes say so:

    tokens     = step * data.batch_size * data.seq_len (* 2 for preference pairs)
    flops      = tokens * jaxlm.models.flops.flops_per_token(model, data.seq_len)
    elapsed_s  = cumulative step_time_s * steps per log window, plus eval_s of the
                 evals so far (startup, compilation and checkpoint waits not counted)

(An old eval record's own `tokens` is the number of held-out tokens, not training
progress, so it is not used as such.)

Runs may still be going or may have failed:

- a last line cut short (still being written) is ignored, with a note; an unreadable
  line in the middle (a kill mid-write, then a resume appending to it) is skipped with
  a note naming the line;
- a resumed run that logs a step again supersedes the records from that step on;
- status: "finished" (a summary record ends the log), "preempted" (stopped by a
  signal after saving; rerun to resume), "in progress" (no summary yet: running, or
  stopped without finishing) or "NaN at step N" (a train or eval loss that is NaN or
  infinite; the series are cut before it).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.analysis.metrics_file import numbered_metrics
from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.models.flops import flops_per_token

X_AXES = ("step", "tokens", "flops", "elapsed_s")
X_LABELS = {
    "step": "step",
    "tokens": "tokens trained",
    "flops": "model FLOPs (6N + 12·L·T·d per token)",
    "elapsed_s": "wall time (s)",
}
_SERIES_KEYS = (*X_AXES, "loss", "bits_per_byte", "mfu")

TABLE_COLUMNS = (
    "run",
    "status",
    "steps",
    "final_train_loss",
    "final_eval_loss",
    "bits_per_byte",
    "tokens",
    "flops",
    "wall_s",
    "mean_mfu",
    "goodput",
)


@dataclasses.dataclass
class Series:
    """One split's records as columns, in step order; NaN where a value is unknown."""

    columns: dict[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def __len__(self) -> int:
        return len(self.columns["step"])

    def cut_before(self, step: float) -> Series:
        keep = self.columns["step"] < step
        return Series({k: v[keep] for k, v in self.columns.items()})


@dataclasses.dataclass
class Run:
    path: Path  # the workdir
    label: str
    train: Series  # finite losses only (cut before a NaN)
    eval: Series
    status: str
    nan_step: int | None
    final: dict[str, Any]  # the table row
    notes: list[str]
    records: list[dict] = dataclasses.field(default_factory=list)  # train/eval, as kept

    def metric(self, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of `key` in this run's `split` records that have it (any
        metric a run logs: an RL run's reward, kl, entropy, accuracy, ...)."""
        rows = [r for r in self.records if r["split"] == split and key in r]
        steps = np.array([float(r["step"]) for r in rows])
        return steps, np.array([_num(r[key]) for r in rows], dtype=float)


def load_run(path: Path | str, label: str | None = None) -> Run:
    """A run from its workdir (or its metrics.jsonl); see the module docstring."""
    workdir, metrics_path = _locate(Path(path))
    notes: list[str] = []
    records, order = _read_records(metrics_path, notes)
    config = _read_config(workdir / "config.json")
    records = _drop_superseded(records, notes)
    _fill_progress(records, config, workdir, notes)

    train = [r for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval" and "loss" in r]
    summaries = [r for r in records if r["split"] == "summary"]

    nan_step = None
    for r in sorted(train + evals, key=lambda r: (r["step"], r["_line"])):
        if not math.isfinite(_num(r["loss"])):
            nan_step = int(r["step"])
            break
    last_logged = max((order[id(r)] for r in train + evals), default=-1)
    finished = [s for s in summaries if order[id(s)] > last_logged]
    if nan_step is not None:
        status = f"NaN at step {nan_step}"
    elif finished and _num(finished[-1].get("preempted", 0)) > 0:
        status = "preempted"
    elif finished:
        status = "finished"
    else:
        status = "in progress"

    train_s, eval_s = _series(train), _series(evals)
    final = _final_row(label or workdir.name, status, train_s, eval_s, finished, records)
    if nan_step is not None:
        train_s, eval_s = train_s.cut_before(nan_step), eval_s.cut_before(nan_step)
    return Run(
        path=workdir,
        label=label or workdir.name,
        train=train_s,
        eval=eval_s,
        status=status,
        nan_step=nan_step,
        final=final,
        notes=notes,
        records=[r for r in records if r["split"] in ("train", "eval")],
    )


def load_runs(paths, labels=None) -> list[Run]:
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"--labels has {len(labels)} names for {len(paths)} runs: {labels}")
    return [load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]


def table_markdown(runs: list[Run]) -> str:
    """The final-metrics table as Markdown, followed by each run's notes."""
    header = [
        "run",
        "status",
        "steps",
        "train loss",
        "eval loss",
        "bits/byte",
        "tokens",
        "FLOPs",
        "wall time",
        "mean MFU",
        "goodput",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        f = run.final
        cells = [
            f["run"],
            f["status"],
            _fmt(f["steps"], "{:,.0f}"),
            _fmt(f["final_train_loss"], "{:.4f}"),
            _fmt(f["final_eval_loss"], "{:.4f}"),
            _fmt(f["bits_per_byte"], "{:.4f}"),
            _fmt_si(f["tokens"]),
            _fmt(f["flops"], "{:.3g}"),
            _fmt_duration(f["wall_s"]),
            _fmt(f["mean_mfu"], "{:.1%}"),
            _fmt(f["goodput"], "{:.1%}"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [f"- {run.label} ({run.path}): {n}" for run in runs for n in run.notes]
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\nNotes:\n\n" + "\n".join(notes) + "\n"
    return text


def table_csv(runs: list[Run]) -> str:
    """The final-metrics table as CSV: full-precision numbers, empty where unknown."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*TABLE_COLUMNS, "path"])
    for run in runs:
        row = []
        for key in TABLE_COLUMNS:
            v = run.final[key]
            row.append("" if v is None else repr(v) if isinstance(v, float) else v)
        writer.writerow([*row, str(run.path)])
    return buf.getvalue()


def write_tables(runs: list[Run], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / "final_metrics.md", out_dir / "final_metrics.csv"
    md.write_text(table_markdown(runs), encoding="utf-8")
    csv_path.write_text(table_csv(runs), encoding="utf-8")
    return md, csv_path


def smooth(values: np.ndarray, amount: float | None) -> np.ndarray:
    """EMA with factor `amount` in (0, 1) (bias-corrected, as TensorBoard), or a trailing
    mean over `amount` >= 1 logged points; None or 0 leaves the values as they are."""
    values = np.asarray(values, dtype=np.float64)
    if not amount or len(values) == 0:
        return values
    if 0 < amount < 1:
        out, acc, weight = np.empty_like(values), 0.0, 0.0
        for i, v in enumerate(values):
            acc = amount * acc + (1 - amount) * v
            weight = amount * weight + (1 - amount)
            out[i] = acc / weight
        return out
    if amount >= 1 and float(amount).is_integer():
        w = int(amount)
        csum = np.concatenate([[0.0], np.cumsum(values)])
        idx = np.arange(1, len(values) + 1)
        start = np.maximum(idx - w, 0)
        return (csum[idx] - csum[start]) / (idx - start)
    raise InputError(
        f"--smooth {amount}: give an EMA factor in (0, 1) or a whole number of points >= 1"
    )


# --------------------------------------------------------------------------- internals


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_file():
        if path.suffix != ".jsonl":
            raise InputError(f"{path}: not a run directory or a metrics .jsonl file")
        return path.parent, path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: not found (is {path} a jaxlm run directory?)")
    return path, metrics


def _read_records(path: Path, notes: list[str]) -> tuple[list[dict], dict[int, int]]:
    """Parsed records (each with `_line`) and their file order, tolerating damage."""
    records = []
    for lineno, record in numbered_metrics(path, notes=notes):
        record["_line"] = lineno
        records.append(record)
    if not records:
        raise InputError(f"{path}: no metrics records")
    return records, {id(r): i for i, r in enumerate(records)}


def _drop_superseded(records: list[dict], notes: list[str]) -> list[dict]:
    """A train (eval) step logged again (a resume from an earlier checkpoint) replaces the
    train and eval (eval) records from that step on."""
    kept: list[dict] = []
    last = {"train": -1, "eval": -1}
    for r in records:
        split = r["split"]
        if split in last and r["step"] <= last[split]:
            cut = r["step"]
            splits = ("train", "eval") if split == "train" else ("eval",)
            dropped = [k for k in kept if k["split"] in splits and k["step"] >= cut]
            kept = [k for k in kept if not (k["split"] in splits and k["step"] >= cut)]
            notes.append(
                f"line {r['_line']}: step {cut} logged again (resumed); "
                f"{len(dropped)} earlier record(s) from step {cut} on superseded"
            )
            for s in last:
                if s in splits:
                    last[s] = max([k["step"] for k in kept if k["split"] == s], default=-1)
        if split in last:
            last[split] = r["step"]
        kept.append(r)
    return kept


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def model_config(config: dict, path: Path):
    """The ModelConfig of a config.json dict; keys this version does not know are ignored."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model = config.get("model")
    if not isinstance(model, dict):
        raise InputError(f"{path}: no 'model' section")
    try:
        return ModelConfig(**{k: v for k, v in model.items() if k in fields})
    except (InputError, TypeError) as e:
        raise InputError(f"{path}: {e}") from None


def _fill_progress(records: list[dict], config: dict | None, workdir: Path, notes) -> None:
    """Give every train/eval record `tokens`, `flops`, `elapsed_s` (measured or derived)."""
    derived: set[str] = set()
    per_step = per_token = None
    if config is not None:
        data = config.get("data") or {}
        rows = 2 if data.get("format") == "preference" else 1
        try:
            per_step = int(data["batch_size"]) * int(data["seq_len"]) * rows
        except (KeyError, TypeError, ValueError):
            per_step = None
    clock, last_train_step = 0.0, 0
    missing_config = False
    for r in records:
        if r["split"] not in ("train", "eval"):
            continue
        # Training progress is "tokens_seen" (jaxlm.training.loop); an eval record's own "tokens" is
        # its held-out token count, and a train record's "tokens" (none are written now)
        # is not trusted either.
        r.pop("tokens", None)
        if "tokens_seen" in r:
            r["tokens"] = r["tokens_seen"]
        elif per_step is None:
            missing_config = True
        else:
            r["tokens"] = r["step"] * per_step
            derived.add("tokens")
        if "flops" not in r and "tokens" in r:
            if per_token is None and per_step is not None:
                seq_len = int(config["data"]["seq_len"])
                per_token = flops_per_token(model_config(config, workdir / "config.json"), seq_len)
            if per_token is not None:
                r["flops"] = float(_num(r["tokens"]) * per_token)
                derived.add("flops")
        if "elapsed_s" in r and math.isfinite(_num(r["elapsed_s"])):
            clock = _num(r["elapsed_s"])
        else:
            if r["split"] == "train":
                dt = _num(r.get("step_time_s", math.nan))
                clock += (dt if math.isfinite(dt) else 0.0) * max(r["step"] - last_train_step, 0)
            else:
                dt = _num(r.get("eval_s", math.nan))
                clock += dt if math.isfinite(dt) else 0.0
            r["elapsed_s"] = clock
            derived.add("elapsed_s")
        if r["split"] == "train":
            last_train_step = r["step"]
    if missing_config:
        notes.append("no usable config.json and no logged tokens: tokens and FLOPs unknown")
    if "tokens" in derived or "flops" in derived:
        notes.append(
            "tokens/FLOPs derived from config.json (step × batch_size × seq_len; "
            "FLOPs/token from jaxlm.models.flops), not logged by this run"
        )
    if "elapsed_s" in derived:
        notes.append(
            "wall time derived as cumulative step_time_s × steps per log window + eval_s "
            "(startup, compilation and checkpoint waits not counted), not logged by this run"
        )


def _num(v: Any) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # "nan", "inf": how MetricsWriter writes non-finite values
        except ValueError:
            return math.nan
    return math.nan


def _series(records: list[dict]) -> Series:
    records = sorted(records, key=lambda r: r["step"])
    return Series({k: np.array([_num(r.get(k, math.nan)) for r in records]) for k in _SERIES_KEYS})


def _last(values: np.ndarray) -> float | None:
    """The last value (NaN if that is what was logged); None when nothing was logged."""
    return float(values[-1]) if len(values) else None


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def _final_row(label, status, train: Series, evals: Series, summaries, records) -> dict:
    summary = summaries[-1] if summaries else {}
    mfu = train["mfu"][np.isfinite(train["mfu"])]
    steps = max(
        [r["step"] for r in records if r["split"] in ("train", "eval", "summary")], default=0
    )
    final_eval = _last(evals["loss"])
    if final_eval is None and "eval_loss" in summary:
        final_eval = _num(summary["eval_loss"])
    bpb = evals["bits_per_byte"][np.isfinite(evals["bits_per_byte"])]

    def progress(key):  # the furthest point the run has logged on this axis
        values = np.concatenate([train[key], evals[key]])
        values = values[np.isfinite(values)]
        return float(values.max()) if len(values) else None

    return {
        "run": label,
        "status": status,
        "steps": int(steps),
        "final_train_loss": _last(train["loss"]),
        "final_eval_loss": final_eval,
        "bits_per_byte": float(bpb[-1]) if len(bpb) else None,
        "tokens": progress("tokens"),
        "flops": progress("flops"),
        "wall_s": progress("elapsed_s"),
        "mean_mfu": float(mfu.mean()) if len(mfu) else None,
        "goodput": _known(_num(summary.get("goodput", math.nan))),
    }


def _fmt(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def _fmt_si(value) -> str:
    if value is None:
        return "–"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


def _fmt_duration(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
