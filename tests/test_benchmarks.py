"""benchmarks/run.py: records appended per run with their environment, tables rendered.

The figures themselves are not checked (speed is measured, never asserted): these tests
check the plumbing that makes a figure traceable, i.e. that every run lands in the
JSONL with its command, environment and result, that a failed run is recorded as
failed, and that the Markdown shows the numbers of the records it was rendered from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import render_results  # noqa: E402
import run as bench_run  # noqa: E402

ENV = {
    "machine": {"cpu": "Test CPU", "cpu_count": 2, "arch": "x86_64", "memory_bytes": 2**34},
    "python": "3.11.7",
    "versions": {"jax": "0.10.2", "flax": "0.12.8"},
    "jax": {"backend": "cpu", "device_kind": "cpu", "device_count": 1},
    "glibc_tunables": "",
    "flop_convention": "test",
}
GPU_ENV = {**ENV, "jax": {"backend": "gpu", "device_kind": "NVIDIA H100", "device_count": 1}}


def record(suite: str, result: dict | None, env=ENV, returncode: int = 0) -> dict:
    return {
        "suite": suite,
        "command": f"python benchmarks/{bench_run.SCRIPTS[suite]} --x",
        "started": "2026-11-23T10:00:00+00:00",
        "wall_s": 1.0,
        "returncode": returncode,
        "environment": env,
        "result": result,
    }


def test_render_shows_the_figures_of_every_suite():
    train = {
        "config": {"d_model": 256, "n_layers": 4, "vocab_size": 8192, "compute_dtype": "float32"},
        "seq": 256,
        "batch": 16,
        "jax": {
            "tokens_per_s": 6698.4,
            "median_step_s": 0.6115,
            "mfu": 0.537,
            "mfu_causal_halved": 0.481,
            "peak_memory_bytes": None,
        },
        "torch": {"tokens_per_s": 4768.0},
        "ratio_jax_over_torch": 1.404,
    }
    gpu_train = {
        "config": {"d_model": 2048, "n_layers": 16, "vocab_size": 32000},
        "jax": {
            "tokens_per_s": 47649,
            "median_step_s": 0.3438,
            "mfu": 0.396,
            "mfu_causal_halved": 0.352,
            "peak_memory_bytes": 60 * 2**30,
        },
        "max_batch": {"largest_ok": 16},
    }
    data = {"results": [{"source": "tokens", "workers": 0, "tokens_per_s": 7080250.0,
                         "real_fraction": 0.981, "longest_wait_s": 0.05}]}  # fmt: skip
    decode = {"runs": [{"preset": "tiny", "batch": 16, "decode_tokens_per_s": 53114.2,
                        "ms_per_step": 0.3, "at_full_forward_ms": 63.4,
                        "at_cached_step_ms": 0.73, "at_speedup": 87.0}]}  # fmt: skip
    checkpoint = {"preset": "125m", "median": {"blocking_s": 0.183, "fingerprint_s": 0.185,
                                               "total_s": 3.65, "bytes": 1371218462}}  # fmt: skip
    compile_ = {
        "rows": [{"n_layers": 16, "scan_layers": False, "lower_s": 1.5, "compile_s": 12.25}],
        "cache": {
            "n_layers": 4,
            "cold_s": 3.5,
            "warm_s": 0.21,
            "cold_lower_s": 0.4,
            "warm_lower_s": 0.41,
        },
    }
    records = [
        record("train", train),
        record("train", gpu_train, env=GPU_ENV),
        record("data", data),
        record("decode", decode),
        record("checkpoint", checkpoint),
        record("compile", compile_),
        record("compile", None, returncode=2),
    ]
    md = render_results.render(records)
    rows = {line for line in md.splitlines() if line.startswith("| 2026-11-23")}
    assert len(rows) == 8  # compile: a depth row and the cache row

    def row_with(*cells: str) -> str:
        matches = [r for r in rows if all(f"| {c} |" in r for c in cells)]
        assert len(matches) == 1, (cells, md)
        return matches[0]

    row_with("d256 L4 V8192 seq 256 batch 16 float32", "6,698", "611.5", "53.7%", "48.1%",
             "4,768", "1.40")  # fmt: skip
    gpu = row_with("47,649", "343.8", "39.6%", "35.2%", "60.00 GiB", "16")
    assert "1 x NVIDIA H100, jax 0.10.2 (E2)" in gpu
    row_with("tokens", "0", "7,080,250", "0.981", "0.050")
    row_with("tiny", "16", "53,114.2", "0.30", "63.40", "0.73", "87.0")
    row_with("125m", "0.183", "0.185", "3.650", "1,308")
    row_with("16", "unrolled", "1.50", "12.25")
    row_with("4", "scan, persistent cache cold -> warm", "0.40 -> 0.41", "3.50 -> 0.21")
    row_with("failed (return code 2)")
    # Both environments are listed in full, and the FLOP convention is under the table.
    assert "- E1: Test CPU (2 cores, 16 GiB)" in md and "- E2: " in md
    assert "attention NOT halved for causal masking" in md


# Slow: ~95 s: every benchmark at its smallest size; the helpers' own tests here run by default
@pytest.mark.slow
def test_run_records_each_benchmark_with_its_environment(tmp_path):
    results, md = tmp_path / "results.jsonl", tmp_path / "results.md"
    args = ["--profile", "quick", "--results", str(results), "--markdown", str(md)]
    assert bench_run.main(["train", "compile", *args]) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["suite"] for r in records] == ["train", "compile"]
    for r in records:
        assert r["returncode"] == 0
        assert r["environment"]["versions"]["jax"] and r["environment"]["jax"]["backend"] == "cpu"
        assert r["command"] in md.read_text()
    train, compile_ = records[0]["result"], records[1]["result"]
    assert train["jax"]["tokens_per_s"] > 0 and train["seq"] == 64
    assert {(row["n_layers"], row["scan_layers"]) for row in compile_["rows"]} == {
        (1, True), (1, False), (2, True), (2, False)
    }  # fmt: skip
    # --render alone rewrites the page from the JSONL, running nothing.
    md.unlink()
    assert bench_run.main(["--render", *args]) == 0
    assert md.read_text().count("| 2026-") == 1 + 4  # one train row, four compile rows


def test_a_failed_run_is_recorded_and_fails_the_invocation(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_run.PROFILES["quick"], "train", ["--preset no-such-preset"])
    results, md = tmp_path / "results.jsonl", tmp_path / "results.md"
    code = bench_run.main(
        ["train", "--profile", "quick", "--results", str(results), "--markdown", str(md)]
    )
    assert code == 1
    (rec,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert rec["returncode"] != 0 and rec["result"] is None
    assert "no-such-preset" in rec["output_tail"]
    assert f"failed (return code {rec['returncode']})" in md.read_text()


def test_a_malformed_results_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("train", {})) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"results\.jsonl:2: not JSON"):
        bench_run.read_records(path)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_matmul_shapes_finds_every_matmul_of_the_train_step(scan_layers):
    """benchmarks/matmul_shapes.py: the contractions it collects from the real train
    step add up to exactly the FLOPs of jaxlm's convention (6N + 12LTd per token, with
    full attention at a sequence too short for blocks), a scanned stack counting each
    layer; and each contraction's einsum equation computes what dot_general does."""
    import dataclasses

    import jax
    import matmul_shapes
    import numpy as np

    from jaxlm.config import ModelConfig, OptimConfig
    from jaxlm.models.flops import flops_per_token

    cfg = ModelConfig(
        vocab_size=96, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16
    )
    cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
    found = matmul_shapes.step_contractions(cfg, OptimConfig(), batch=2, seq=16)
    total = sum(c.flops * calls for c, calls in found.items())
    assert total == flops_per_token(cfg, 16) * 2 * 16
    rng = np.random.default_rng(0)
    for c in found:
        lhs = rng.standard_normal(c.lhs).astype(np.float32)
        rhs = rng.standard_normal(c.rhs).astype(np.float32)
        dims = ((c.lhs_contract, c.rhs_contract), (c.lhs_batch, c.rhs_batch))
        want = jax.lax.dot_general(lhs, rhs, dims)
        np.testing.assert_allclose(np.einsum(c.einsum(), lhs, rhs), want, rtol=1e-4, atol=1e-4)
