"""What a benchmark figure was measured on: machine, versions, backend, FLOP convention.

`describe()` returns a JSON-able dict that benchmarks/run.py stores next to every
result (and compile_time.py prints), so a number in results.jsonl can always be traced
to the machine, the library versions and the FLOP convention it was computed under.
No hostname is recorded: results files get committed and shared.

JAX is imported lazily inside `describe()`: importing it starts the backend, which on
a GPU host claims most of the device memory, so run.py calls this module in a child
process (`python benchmarks/environment.py`, which prints the dict as JSON) rather
than importing JAX itself. The child calls jaxlm.runtime.cpu.configure_cpu() first, as the
benchmarks that use JAX do, so GLIBC_TUNABLES is recorded as they run under it
(data_throughput.py does not call it).

    python benchmarks/environment.py            # the dict, as JSON
    python benchmarks/environment.py --summary  # one line
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

FLOP_CONVENTION = (
    "training FLOPs/token = 6*N + 12*L*T*d_model (N = non-embedding params incl. output "
    "head); attention NOT halved for causal masking; MFU under the causal-halved "
    "convention (6*N + 6*L*T*d_model) is reported next to it where a script reports MFU"
)

# Distribution names (what pip installs), in the order summary_line prints them.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "sentencepiece",
    "numpy",
    "torch",
    "transformers",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first `key: value` line of a /proc file; None off Linux."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")  # "24684100 kB"
    return {
        "platform": platform.platform(),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        # The model name can be masked ("AMD EPYC" on Zen 4 and on other generations,
        # with twice the matmul rate apart): the family/model numbers and the vector
        # extensions tell the machines apart.
        "cpu_family": _proc_field("/proc/cpuinfo", "cpu family"),
        "cpu_model_number": _proc_field("/proc/cpuinfo", "model"),
        "avx512": "avx512f" in (_proc_field("/proc/cpuinfo", "flags") or "").split(),
        "arch": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": int(mem_kb.split()[0]) * 1024 if mem_kb else None,
    }


def jax_devices() -> dict:
    """Backend, device kind and count; an error string instead when JAX cannot start."""
    try:
        import jax

        devices = jax.devices()
        return {
            "backend": jax.default_backend(),
            "device_kind": devices[0].device_kind,
            "device_count": len(devices),
        }
    except Exception as e:  # a broken install should not stop recording the rest
        return {"error": f"{type(e).__name__}: {e}"}


def describe(with_jax: bool = True) -> dict:
    """Everything a result needs to be read later (see the module docstring)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "jax": jax_devices() if with_jax else None,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "flop_convention": FLOP_CONVENTION,
    }


def summary_line(env: dict) -> str:
    """One line for printing; tolerates missing or odd fields (old records)."""
    env = env if isinstance(env, dict) else {}
    m = env.get("machine") if isinstance(env.get("machine"), dict) else {}
    j = env.get("jax") if isinstance(env.get("jax"), dict) else {}
    v = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    mem = m.get("memory_bytes")
    mem_s = f", {mem / 2**30:.0f} GiB" if isinstance(mem, int | float) else ""
    host = f"{m.get('cpu') or m.get('arch') or '?'} ({m.get('cpu_count', '?')} cores{mem_s})"
    if j.get("error"):
        devices = f"jax devices: {j['error']}"
    elif j:
        devices = (
            f"{j.get('device_count', '?')} x {j.get('backend', '?')} ({j.get('device_kind', '?')})"
        )
    else:
        devices = "jax devices not recorded"
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    tunables = env.get("glibc_tunables")
    parts = [host, str(m.get("platform") or "?"), devices, f"Python {env.get('python', '?')}"]
    parts += [versions or "versions not recorded"]
    parts += [f"GLIBC_TUNABLES={tunables}" if tunables else "GLIBC_TUNABLES unset"]
    return "; ".join(parts)


if __name__ == "__main__":
    from jaxlm.runtime.cpu import configure_cpu

    configure_cpu()  # record GLIBC_TUNABLES as the JAX benchmarks run (module docstring)
    env = describe()
    print(summary_line(env) if "--summary" in sys.argv[1:] else json.dumps(env, indent=2))
