"""Process-level CPU settings that must be in place before the process starts.

XLA:CPU allocates every temporary of a step afresh (logits, saved activations, scan
buffers: ~1 GB a step at the benchmark's reference shape). With glibc's default
malloc, the worker threads' arenas and large-block mmaps hand that memory back to
the kernel after each step and fault it in again on the next: ~220k page faults and
~0.35 s of kernel time per step on a 2-core machine. Keeping freed memory in one
arena (no per-thread arenas, no mmap for large blocks, no trimming) removes most of
them: 780 -> 620 ms per step (min of 10) for the benchmark's reference shape.

glibc reads `GLIBC_TUNABLES` only when a process starts (`mallopt` later does not
reproduce the effect), so `configure_cpu()` re-executes the interpreter once with
them set. Call it first thing in a CPU entry point, before JAX (or any thread)
starts. Set JAXLM_CPU_TUNING=0 to opt out.
"""

from __future__ import annotations

import os
import platform
import sys

MALLOC_TUNABLES: tuple[str, ...] = (
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=68719476736",
)
_MARK = "JAXLM_CPU_CONFIGURED"


def cpu_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` with jaxlm's malloc tunables added to GLIBC_TUNABLES.

    Tunables the user already set (by name) are kept as they are.
    """
    env = dict(os.environ if environ is None else environ)
    current = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    names = {t.split("=", 1)[0] for t in current}
    added = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in names]
    env["GLIBC_TUNABLES"] = ":".join(current + added)
    return env


def _accelerator_present() -> bool:
    """Whether JAX will likely pick a GPU/TPU; decided before JAX is imported.

    The tunables are measured on CPU only; on accelerator hosts the large host buffers
    (checkpoint staging, prefetch) are better left to glibc's defaults.
    """
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return not platforms.split(",")[0].strip().startswith("cpu")
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0", "/dev/vfio/0"))


def configure_cpu() -> bool:
    """Ensure this process runs with the malloc tunables; re-exec once if it does not.

    Returns True when the settings are in effect, False when they do not apply (not
    Linux/glibc, an accelerator host, or JAXLM_CPU_TUNING=0). Does not return when it re-executes.
    """
    if os.environ.get("JAXLM_CPU_TUNING", "1") == "0":
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _accelerator_present():
        return False
    if os.environ.get(_MARK) == "1":
        return True
    env = cpu_environment()
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return True  # unreachable
