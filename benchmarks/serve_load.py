"""`jaxlm serve` under concurrent load, against the same requests served one at a time.

Starts `jaxlm serve MODEL` (a subprocess on 127.0.0.1, port chosen by the OS) and
drives it with the official `openai` package's asyncio client: C workers each send
streaming completions back to back until R requests are done. Every request asks for
exactly --tokens new tokens (`ignore_eos`: no early stop, so every level does the same
work) after a prompt cut from the standard library's source (lengths vary, as real
prompts do). Per request it records the time to first token (TTFT: send -> first text
chunk) and the time per output token after the first (TPOT: (end - first chunk) /
(tokens - 1)). Per level it reports requests/s and output tokens/s over the wall time
of the level, and TTFT / TPOT percentiles (p50, p90, p99).

The baseline is a server with --slots 1 at concurrency 1 (requests served strictly one
at a time); then each batched server (--batched-slots, one or more sizes) is driven at
each --clients level. Each server is warmed (every prompt sent once) before timing.

Run (repository root, venv, idle machine):

    python benchmarks/serve_load.py MODEL --clients 1 8 32 --requests 64 --tokens 64 \\
        --batched-slots 8 32 --json experiments/results/serving/load_amd_epyc.json

Not wired into benchmarks/run.py: it needs a trained model directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import environment  # benchmarks/environment.py: the machine each result was measured on
import openai

from jaxlm.data.corpus import read_text, stdlib_files


def prompts(count: int, seed: int = 0) -> list[str]:
    """`count` prompts of 40 to 400 characters cut from stdlib source files."""
    files = stdlib_files("validation")
    out = []
    for i in range(count):
        text = read_text(files[(seed + i * 7) % len(files)])
        size = 40 + (i * 37) % 360
        start = (i * 1013) % max(1, len(text) - size)
        out.append(text[start : start + size])
    return out


@contextlib.contextmanager
def serving(model: str, slots: int, extra: list[str]):
    cmd = [sys.executable, "-m", "jaxlm.cli", "serve", model, "--port", "0"]
    cmd += ["--slots", str(slots), "--max-in-flight", "4096", *extra]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 600
            while True:
                found = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
                if found:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{log.read_text()}")
                time.sleep(0.2)
            yield found.group(1) + "/v1"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)


async def one_request(client, name: str, prompt: str, tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    count = 0
    stream = await client.completions.create(
        model=name,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0.8,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {
        "ttft_s": first - start,
        "tpot_s": (end - first) / max(count - 1, 1),
        "tokens": count,
        "latency_s": end - start,
    }


async def level(url: str, name: str, texts: list[str], clients: int, tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    queue = list(enumerate(texts))
    results: list[dict] = []

    async def worker():
        while queue:
            _, text = queue.pop(0)
            results.append(await one_request(client, name, text, tokens))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    total = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens_per_s": round(total / wall, 1),
        **{f"ttft_{k}_ms": v for k, v in percentiles([r["ttft_s"] for r in results]).items()},
        **{f"tpot_{k}_ms": v for k, v in percentiles([r["tpot_s"] for r in results]).items()},
    }


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"p{p}": round(1000 * cuts[p - 1], 2) for p in (50, 90, 99)}


async def warm(url: str, name: str, texts: list[str]) -> None:
    """Send every prompt once (2 tokens) so each prompt bucket is compiled before timing."""
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    for text in texts:
        await one_request(client, name, text, 2)
    await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batched-slots", type=int, nargs="+", default=[32])
    parser.add_argument("--serve-args", default="", help="extra `jaxlm serve` flags")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    name = Path(args.model).absolute().name
    texts = prompts(args.requests)
    extra = args.serve_args.split()
    rows = []
    with serving(args.model, 1, extra) as url:
        asyncio.run(warm(url, name, texts))
        row = asyncio.run(level(url, name, texts, 1, args.tokens))
        rows.append({"server": "one at a time (--slots 1)", "slots": 1, **row})
        print(json.dumps(rows[-1]), flush=True)
    for slots in args.batched_slots:
        with serving(args.model, slots, extra) as url:
            asyncio.run(warm(url, name, texts))
            for clients in args.clients:
                row = asyncio.run(level(url, name, texts, clients, args.tokens))
                rows.append({"server": "continuous batching", "slots": slots, **row})
                print(json.dumps(rows[-1]), flush=True)
    record = {
        "benchmark": "serve_load",
        "model": str(Path(args.model).absolute()),
        "tokens_per_request": args.tokens,
        "requests_per_level": args.requests,
        "serve_args": extra,
        "machine": environment.machine(),
        "levels": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
