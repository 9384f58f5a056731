"""Render benchmark records (benchmarks/results.jsonl) as Markdown tables, one per suite.

Each suite's script writes its own JSON shape; the `*_rows` functions below pull the
figures a reader compares out of it, one table row per measured configuration, and
every row keeps the date, the machine and the exact command. Records of failed runs are
listed with their return code, so a failure is visible rather than silently missing.
Missing fields (older records) render as "-", never as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from environment import FLOP_CONVENTION, summary_line


def _num(x, fmt: str = ",.0f") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "-"


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, int | float) else "-"


def _gib(x) -> str:
    return f"{x / 2**30:.2f} GiB" if isinstance(x, int | float) and x else "-"


def machine_short(env: dict) -> str:
    """`1 x gpu (NVIDIA H100 80GB HBM3)` or `cpu, AMD EPYC ... (2 cores)`, plus jax version."""
    env = env if isinstance(env, dict) else {}
    j = env.get("jax") if isinstance(env.get("jax"), dict) else {}
    m = env.get("machine") if isinstance(env.get("machine"), dict) else {}
    v = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    if j.get("backend") and j.get("backend") != "cpu":
        where = f"{j.get('device_count', '?')} x {j.get('device_kind', '?')}"
    else:
        where = f"CPU, {m.get('cpu') or m.get('arch') or '?'} ({m.get('cpu_count', '?')} cores)"
    return f"{where}, jax {v.get('jax') or '?'}"


def train_rows(r: dict) -> list[list[str]]:
    jax_r, torch_r = r.get("jax") or {}, r.get("torch") or {}
    cfg = r.get("config") or {}
    shape = (
        f"d{cfg.get('d_model', '?')} L{cfg.get('n_layers', '?')} V{cfg.get('vocab_size', '?')} "
        f"seq {r.get('seq', '?')} batch {r.get('batch', '?')} {cfg.get('compute_dtype', '?')}"
    )
    step = jax_r.get("median_step_s")
    max_batch = (r.get("max_batch") or {}).get("largest_ok")
    return [
        [
            shape,
            _num(jax_r.get("tokens_per_s")),
            f"{step * 1e3:.1f}" if isinstance(step, int | float) else "-",
            _pct(jax_r.get("mfu")),
            _pct(jax_r.get("mfu_causal_halved")),
            _gib(jax_r.get("peak_memory_bytes")),
            _num(max_batch),
            _num(torch_r.get("tokens_per_s")),
            _num(r.get("ratio_jax_over_torch"), ".2f"),
        ]
    ]


def data_rows(r: dict) -> list[list[str]]:
    return [
        [
            str(x.get("source", "-")),
            _num(x.get("workers")),
            _num(x.get("tokens_per_s")),
            _num(x.get("real_fraction"), ".3f"),
            _num(x.get("longest_wait_s"), ".3f"),
        ]
        for x in r.get("results") or []
    ]


def decode_rows(r: dict) -> list[list[str]]:
    return [
        [
            str(x.get("preset", "-")),
            _num(x.get("batch")),
            _num(x.get("decode_tokens_per_s"), ",.1f"),
            _num(x.get("ms_per_step"), ".2f"),
            _num(x.get("at_full_forward_ms"), ".2f"),
            _num(x.get("at_cached_step_ms"), ".2f"),
            _num(x.get("at_speedup"), ".1f"),
        ]
        for x in r.get("runs") or []
    ]


def checkpoint_rows(r: dict) -> list[list[str]]:
    m = r.get("median") or {}
    written = m.get("bytes")
    return [
        [
            str(r.get("preset", "-")),
            _num(m.get("blocking_s"), ".3f"),
            _num(m.get("fingerprint_s"), ".3f"),
            _num(m.get("total_s"), ".3f"),
            _num(written / 2**20 if isinstance(written, int | float) else None),
        ]
    ]


def _arrow(before, after) -> str:
    return f"{_num(before, '.2f')} -> {_num(after, '.2f')}"


def compile_rows(r: dict) -> list[list[str]]:
    rows = [
        [
            _num(x.get("n_layers")),
            "scan" if x.get("scan_layers") else "unrolled",
            _num(x.get("lower_s"), ".2f"),
            _num(x.get("compile_s"), ".2f"),
        ]
        for x in r.get("rows") or []
    ]
    cache = r.get("cache")
    if isinstance(cache, dict):
        rows.append(
            [
                _num(cache.get("n_layers")),
                "scan, persistent cache cold -> warm",
                _arrow(cache.get("cold_lower_s"), cache.get("warm_lower_s")),
                _arrow(cache.get("cold_s"), cache.get("warm_s")),
            ]
        )
    return rows


Table = tuple[str, list[str], Callable[[dict], list[list[str]]], str]
TABLES: dict[str, Table] = {
    "train": (
        "Training throughput (train_throughput.py)",
        [
            "shape",
            "jaxlm tok/s",
            "ms/step",
            "MFU",
            "MFU causal-halved",
            "peak mem",
            "max batch",
            "PyTorch tok/s",
            "jaxlm / PyTorch",
        ],
        train_rows,
        f"FLOP convention: {FLOP_CONVENTION}. CPU peak: measured fp32 matmul of the same "
        "run; GPU/TPU peak: data-sheet dense bf16. tok/s counts every position.",
    ),
    "data": (
        "Input pipeline (data_throughput.py)",
        ["source", "workers", "packed tokens/s", "real fraction", "longest wait s"],
        data_rows,
        "",
    ),
    "decode": (
        "KV-cached decode (decode_throughput.py)",
        [
            "preset",
            "batch",
            "decode tok/s",
            "ms/step",
            "full forward ms",
            "cached step ms",
            "speedup",
        ],
        decode_rows,
        "",
    ),
    "checkpoint": (
        "Checkpoint saves (checkpoint_save.py), median of saves 2..",
        ["preset", "blocking s", "fingerprint s", "total s", "MiB written"],
        checkpoint_rows,
        "",
    ),
    "compile": (
        "Train-step compile time (compile_time.py)",
        ["n_layers", "layers", "lower s", "compile s"],
        compile_rows,
        "",
    ),
}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render(records: list[dict], source: Path | str = "results.jsonl") -> str:
    """The Markdown page for every record, grouped by suite in TABLES order."""
    out = [
        "# Benchmark results",
        "",
        f"Rendered by `python benchmarks/run.py` from `{Path(source).name}` "
        "(one JSON record per run, with its full environment); do not edit by hand.",
        "",
    ]
    environments = []
    for record in records:
        line = summary_line(record.get("environment"))
        if line not in environments:
            environments.append(line)
    if environments:
        out += ["Environments:", ""]
        out += [f"- E{i + 1}: {line}" for i, line in enumerate(environments)]
        out.append("")
    for suite, (title, header, rows_of, footer) in TABLES.items():
        mine = [r for r in records if r.get("suite") == suite]
        if not mine:
            continue
        out += [f"## {title}", ""]
        out.append(_row(["date", "machine", "command", *header]))
        out.append(_row(["---"] * (3 + len(header))))
        for record in mine:
            env_id = f"E{environments.index(summary_line(record.get('environment'))) + 1}"
            first = [
                str(record.get("started", "-"))[:10],
                f"{machine_short(record.get('environment'))} ({env_id})",
                f"`{record.get('command', '-')}`",
            ]
            result = record.get("result")
            if record.get("returncode") != 0 or not isinstance(result, dict):
                failed = f"failed (return code {record.get('returncode')})"
                out.append(_row([*first, failed, *["-"] * (len(header) - 1)]))
                continue
            for cells in rows_of(result) or [["-"] * len(header)]:
                out.append(_row([*first, *cells]))
        out.append("")
        if footer:
            out += [footer, ""]
    return "\n".join(out)
