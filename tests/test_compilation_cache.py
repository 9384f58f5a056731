"""The persistent compilation cache: where it lives, how to turn it off, and that a
second process really loads the first one's executables instead of compiling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm.runtime.compilation_cache import ENV, cache_dir_from_env

# A child process: enable the cache as the entry points do, compile one program, and
# report the cache events and the settings jaxlm chose.
CHILD = """
import json, sys
import jax, jax.numpy as jnp
from jaxlm.runtime import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compilation_cache.enable()
threshold = jax.config.jax_persistent_cache_min_compile_time_secs
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny program
def f(x):
    for i in range(20):
        x = jnp.tanh(x @ x.T) + i
    return x
jax.jit(f)(jnp.ones((32, 32))).block_until_ready()
print(json.dumps({"path": str(path), "threshold": threshold,
                  "hits": sum("cache_hits" in e for e in events),
                  "misses": sum("cache_misses" in e for e in events)}))
"""


def run_child(env_value: str | None, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "JAX_COMPILATION_CACHE_DIR")}
    if env_value is not None:
        env[ENV] = env_value
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # the default location, kept in tmp
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_directory_follows_the_environment(tmp_path):
    home_cache = Path("~/.cache").expanduser() / "jaxlm" / "xla"
    assert cache_dir_from_env({}) == home_cache
    assert cache_dir_from_env({"XDG_CACHE_HOME": "/c"}) == Path("/c/jaxlm/xla")
    assert cache_dir_from_env({ENV: str(tmp_path)}) == tmp_path
    for off in ("off", "0", "none", "", " OFF "):
        assert cache_dir_from_env({ENV: off}) is None


def test_a_second_process_loads_the_first_ones_executables(tmp_path):
    cache = tmp_path / "cache"
    first = run_child(str(cache), tmp_path)
    assert first["path"] == str(cache) and first["threshold"] == 1.0
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any(cache.iterdir())
    second = run_child(str(cache), tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0


@pytest.mark.slow  # ~19 s; the second-process cache test here runs by default
def test_on_by_default_and_off_on_request(tmp_path):
    default = run_child(None, tmp_path)
    assert default["path"] == str(tmp_path / "xdg" / "jaxlm" / "xla")
    assert (tmp_path / "xdg" / "jaxlm" / "xla").stat().st_mode & 0o777 == 0o700
    off = run_child("off", tmp_path)
    assert off["path"] == "None" and off["hits"] == 0
