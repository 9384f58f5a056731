"""The one entry point of the benchmark suite: run benchmarks, append JSONL, render Markdown.

    python benchmarks/run.py                         # every suite, CPU profile
    python benchmarks/run.py train compile           # some suites
    python benchmarks/run.py --profile gpu train     # the GPU shapes (1b, 125m; bf16, cuDNN)
    python benchmarks/run.py --render                # only re-render results.md from the JSONL

Each suite is one or more runs of a script next to this file (train_throughput.py,
data_throughput.py, decode_throughput.py, checkpoint_save.py, compile_time.py), each
in its own child process (a GPU backend claims most of the device memory per process,
and a crash in one run must not lose the others) with `--json` pointing at a temporary
file. Every run appends one record to --results (default benchmarks/results.jsonl):

    {"suite", "command", "started", "wall_s", "returncode", "environment", "result"}

`environment` comes from benchmarks/environment.py, measured once per invocation in a
child: machine, Python and library versions, JAX backend and devices, GLIBC_TUNABLES and
the FLOP convention (6N + 12LTd per token, attention not halved; scripts that report
MFU also report the causal-halved figure). A failed run is recorded too, with its
return code and the tail of its output, and makes this script exit 1.

Then the whole JSONL is rendered to --markdown (default benchmarks/results.md): one
table per suite, a row per measured configuration, oldest first, the command in every
row, so a figure can be traced to the run that made it and rerun. The Markdown is
derived data: edit the JSONL (or rerun), never the table.

Profiles pick the commands: `cpu` (the shapes issue 8 names: the reference shape and
minimind-26m against PyTorch, the stdlib data pipeline, tiny / minimind-26m decode,
125m checkpoint saves, compile time at depths 2-16), `gpu` (125m and 1b at bf16 with
cuDNN attention, the largest batch search, 1b decode and compile) and `quick` (tiny
shapes for tests/test_benchmarks.py; numbers meaningless). Run on an otherwise idle
machine: the figures are wall-clock rates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from environment import summary_line
from render_results import render

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# suite -> profile -> list of argument lists, each one run of the suite's script.
SCRIPTS = {
    "train": "train_throughput.py",
    "data": "data_throughput.py",
    "decode": "decode_throughput.py",
    "checkpoint": "checkpoint_save.py",
    "compile": "compile_time.py",
}
QUICK_TRAIN = "--d-model 64 --n-layers 2 --n-heads 4 --n-kv-heads 4 --vocab 512 --seq 64 --batch 2"
GPU_1B = "--preset 1b --seq 2048 --dtype bfloat16 --attention cudnn --remat dots --no-torch"
PROFILES: dict[str, dict[str, list[str]]] = {
    "cpu": {
        "train": ["", "--preset minimind-26m --seq 256 --batch 16"],
        "data": [""],
        "decode": [""],
        "checkpoint": [""],
        "compile": [""],
    },
    "gpu": {
        "train": [
            "--preset 125m --seq 1024 --batch 32 --dtype bfloat16 --attention cudnn --no-torch",
            f"{GPU_1B} --batch 8 --find-max-batch 64",
        ],
        "data": ["--modes tokens --workers 0"],
        "decode": ["--presets 125m 1b --batches 1 16 --dtype bfloat16"],
        "checkpoint": ["--preset 1b --saves 4"],
        "compile": [
            "--preset 1b --depths 4 8 16 --seq 2048 --batch 8 --dtype bfloat16 "
            "--attention cudnn --remat dots"
        ],
    },
    "quick": {
        "train": [f"{QUICK_TRAIN} --steps 2 --warmup 1 --no-torch"],
        "data": ["--modes tokens --workers 0 --seconds 1 --warmup-batches 2"],
        "decode": ["--presets tiny --batches 1 --new-tokens 9 --context 64 --repeats 2"],
        "checkpoint": ["--preset tiny --saves 2"],
        "compile": ["--quick --no-cache-check"],
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suites", nargs="*", choices=[[], *SCRIPTS], help="default: all")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--results", default=str(HERE / "results.jsonl"), help="JSONL to append")
    p.add_argument("--markdown", default=str(HERE / "results.md"), help="table to rewrite")
    p.add_argument("--render", action="store_true", help="only render the Markdown")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    return p.parse_args(argv)


def environment() -> dict:
    """environment.describe() from a child process (see environment.py on why)."""
    out = subprocess.run(
        [sys.executable, str(HERE / "environment.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout)


def run_one(suite: str, extra: str, env: dict, timeout: float) -> dict:
    """Run one benchmark command in a child; its record (result None when it failed)."""
    argv = shlex.split(extra)
    shown = " ".join(["python", f"benchmarks/{SCRIPTS[suite]}", *argv])
    print(f"== {shown}", flush=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="jaxlm-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(HERE / SCRIPTS[suite]), *argv, "--json", str(out)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=timeout,
            )  # fmt: skip
            returncode, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as e:
            returncode = -1
            output = (e.stdout or b"").decode(errors="replace") + f"\ntimed out after {timeout}s"
        wall = time.perf_counter() - t0
        print(output, end="" if output.endswith("\n") else "\n", flush=True)
        result = json.loads(out.read_text()) if returncode == 0 and out.is_file() else None
    record = {
        "suite": suite,
        "command": shown,
        "started": started,
        "wall_s": round(wall, 1),
        "returncode": returncode,
        "environment": env,
        "result": result,
    }
    if result is None:
        record["output_tail"] = output[-4000:]
    return record


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict]:
    """Every record of the JSONL; a malformed line is an error naming the file and line."""
    records = []
    if not path.is_file():
        return records
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or "suite" not in record:
            raise SystemExit(f"{path}:{lineno}: not a benchmark record (no 'suite' key)")
        records.append(record)
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    results, markdown = Path(args.results), Path(args.markdown)
    failed = 0
    if not args.render:
        env = environment()
        print(f"environment: {summary_line(env)}", flush=True)
        for suite in args.suites or list(SCRIPTS):
            for extra in PROFILES[args.profile][suite]:
                record = run_one(suite, extra, env, args.timeout)
                append(results, record)
                failed += record["returncode"] != 0
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render(read_records(results), results))
    print(f"appended to {results}; rendered {markdown}" if not args.render else f"{markdown}")
    if failed:
        print(f"{failed} run(s) failed: their records carry the output tail", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
