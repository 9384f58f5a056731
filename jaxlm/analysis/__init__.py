"""Analysis: reading run directories back and drawing them.

    metrics_file.py   metrics.jsonl read back: the one parser (strict or tolerant)
    compare.py        runs -> loss series on step/tokens/FLOPs/time axes, final-metric tables
    compare_plots.py  comparison and scaling-fit figures (PNG + SVG)
    plotting.py       loss curves of runs; `new_figure`, matplotlib without pyplot
    expert_load.py    a mixture-of-experts run's expert shares per layer over training
    scaling_law.py    scaling-law fits with bootstrap bands and compute-optimal sizes
    inspect_batch.py  a packed batch as text or a picture: segments, positions, loss

May import: the root modules (errors, source_spec, config, presets, sharding) and
models (FLOPs per token of a config). Nothing here knows how a run is trained, which
is why the training loop can use it to draw its own loss curves and to continue its
wall clock on resume. matplotlib loads on the first figure, not on import.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
