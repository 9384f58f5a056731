"""Sweeps: run every point of an experiment's `sweep()` in its own workdir, resumably.

An experiment module may define

    def sweep() -> list[tuple[str, list[str]]]:
        return [("d128-l2", ["model.d_model=128", "model.n_layers=2"]), ...]

a name and `--set` overrides per point, applied on top of `get_config()`. Point NAME
runs in ROOT/NAME (default ROOT: runs/<experiment>-sweep). ROOT/index.json records,
for every point, its overrides, workdir, status (pending, done, failed, preempted) and,
once done, its final numbers (eval loss, bits per byte, steps, tokens, FLOPs, wall
time, non-embedding parameters), rewritten atomically after each point; ROOT/index.md
is the same as a table.

Running the sweep again skips points that are done and resumes the others from their
checkpoints (each point is an ordinary `jaxlm train` run). Points are independent, so
on a cluster each can be its own job: `jaxlm sweep EXP --list` prints one
`jaxlm train` command per point, and `--only NAME` runs one point and updates the index
(concurrent jobs: give each its own --root, or run them one index update at a time;
index writes are atomic but not merged).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from jaxlm.config import Config, ConfigError, apply_overrides
from jaxlm.data.atomic import atomic_text_writer
from jaxlm.models import count_params
from jaxlm.models.flops import flops_per_token
from jaxlm.training.loop import train

INDEX_FILE = "index.json"


@dataclasses.dataclass
class SweepPoint:
    name: str
    overrides: list[str]


def sweep_points(module: ModuleType) -> list[SweepPoint]:
    """The experiment's points, checked: names unique and usable as directory names."""
    if not hasattr(module, "sweep"):
        raise ConfigError(f"{module.__file__}: no sweep() (an experiment with a sweep defines it)")
    points = []
    for item in module.sweep():
        name, overrides = item
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(
                f"{module.__file__}: sweep point name {name!r} is not a directory name"
            )
        points.append(SweepPoint(str(name), [str(o) for o in overrides]))
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{module.__file__}: sweep point names repeat: {duplicates}")
    return points


def point_config(module: ModuleType, point: SweepPoint, extra: list[str]) -> Config:
    """get_config() + the point's overrides + the command line's (last wins), named."""
    cfg = apply_overrides(module.get_config(), [*point.overrides, *extra])
    return dataclasses.replace(cfg, name=f"{cfg.name}-{point.name}")


def read_index(root: Path) -> dict[str, Any]:
    path = root / INDEX_FILE
    if not path.is_file():
        return {"points": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg}); fix or delete it") from None


def write_index(root: Path, index: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with atomic_text_writer(root / INDEX_FILE) as f:
        f.write(json.dumps(index, indent=2) + "\n")
    with atomic_text_writer(root / "index.md") as f:
        f.write(index_markdown(index))


def index_markdown(index: dict[str, Any]) -> str:
    columns = ("status", "eval_loss", "bits_per_byte", "params_non_embedding", "tokens", "flops")
    lines = [
        f"# sweep {index.get('experiment', '')}",
        "",
        "| point | " + " | ".join(columns) + " | wall_s |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, entry in index["points"].items():
        cells = [_cell(entry.get(c)) for c in (*columns, "wall_s")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def train_command(experiment: str, workdir: Path, point: SweepPoint, extra: list[str]) -> str:
    sets = [a for o in [*point.overrides, *extra] for a in ("--set", o)]
    return shlex.join(["jaxlm", "train", experiment, "--workdir", str(workdir), *sets])


def _results(cfg: Config, result) -> dict[str, Any]:
    ev = result.final_eval or {}
    tokens = result.steps * cfg.data.batch_size * cfg.data.seq_len
    return {
        "eval_loss": ev.get("loss"),
        "bits_per_byte": ev.get("bits_per_byte"),
        "steps": result.steps,
        "tokens": tokens,
        "flops": tokens * flops_per_token(cfg.model, cfg.data.seq_len),
        "wall_s": result.wall_seconds,
        "params_non_embedding": count_params(cfg.model, include_embedding=False),
    }


def run_sweep(
    experiment: str,
    module: ModuleType,
    root: Path,
    *,
    extra: list[str] = (),
    only: list[str] | None = None,
    train_fn: Callable | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the points not yet done (all, or those named in `only`); returns the index."""
    train_fn = train_fn or train
    points = sweep_points(module)
    if only:
        unknown = sorted(set(only) - {p.name for p in points})
        if unknown:
            raise ConfigError(
                f"--only {unknown}: not points of {experiment} ({[p.name for p in points]})"
            )
        points = [p for p in points if p.name in only]
    configs = {p.name: point_config(module, p, list(extra)) for p in points}  # all valid first
    index = read_index(root)
    index["experiment"] = experiment
    for point in points:
        entry = index["points"].setdefault(point.name, {"status": "pending"})
        entry.update(overrides=point.overrides + list(extra), workdir=str(root / point.name))
    write_index(root, index)
    for point in points:
        entry = index["points"][point.name]
        if entry["status"] == "done":
            log(f"[sweep] {point.name}: done, skipped")
            continue
        log(f"[sweep] {point.name}: {' '.join(entry['overrides']) or '(base config)'}")
        cfg = configs[point.name]
        try:
            result = train_fn(cfg, root / point.name)
        except Exception as error:  # one point failing must not lose the others
            entry.update(status="failed", error=f"{type(error).__name__}: {error}")
            log(f"[sweep] {point.name}: failed\n{traceback.format_exc()}")
            write_index(root, index)
            continue
        entry.pop("error", None)
        entry["status"] = "preempted" if result.preempted else "done"
        entry.update(_results(cfg, result))
        write_index(root, index)
        if result.preempted:
            log(f"[sweep] {point.name}: preempted; run the sweep again to resume")
            break
    return index
