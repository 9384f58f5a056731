"""Runtime: the process around a run, independent of what it trains.

    distributed.py        multi-host start-up through JAX's distributed runtime, peer watch
    launch.py             N local processes as one JAX job (`jaxlm launch`)
    preemption.py         SIGTERM/SIGINT -> finish the step, save, exit 0
    watchdog.py           end a run whose step stopped making progress (exit 75)
    goodput.py            where the wall time went: productive steps against the rest
    compilation_cache.py  the persistent XLA compilation cache
    cpu.py                process-level CPU settings (malloc, XLA flags)

May import: the root modules only. Training and the CLI call into here.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
