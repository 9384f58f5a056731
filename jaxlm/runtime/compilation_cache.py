"""The persistent XLA compilation cache: on by default, so a rerun skips recompiling.

A train step of the 1b preset takes tens of seconds to compile, and every rerun,
resume, sweep point, `jaxlm eval` or `jaxlm generate` of the same shapes compiles the
same programs again. JAX can keep compiled executables on disk, keyed by the program,
its shardings, the devices and the jax/XLA versions, and load them instead of
compiling. jaxlm turns that on for its entry points (`enable()`):

    JAXLM_COMPILATION_CACHE unset   ~/.cache/jaxlm/xla   (XDG_CACHE_HOME respected)
    JAXLM_COMPILATION_CACHE=DIR     DIR
    JAXLM_COMPILATION_CACHE=off     no persistent cache (also: 0, none, empty)

A directory the user already gave JAX (JAX_COMPILATION_CACHE_DIR or
jax.config.update("jax_compilation_cache_dir", ...)) is kept as it is. Only programs
that took at least MIN_COMPILE_SECONDS to compile are written (JAX's own default
threshold), so the many tiny helper programs do not litter the directory.

The cache is trusted code: anyone who can write to it can make this process run what
they put there (JAX's warning). The default directory is created private (0700); do
not point JAXLM_COMPILATION_CACHE at a directory others can write to.

JAX reads the directory when it first compiles something with the cache in use, so
`enable()` must run before the first compilation to cover it; calling it again is a
no-op.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENV = "JAXLM_COMPILATION_CACHE"
OFF_VALUES = ("", "0", "off", "none", "false")
MIN_COMPILE_SECONDS = 1.0


def cache_dir_from_env(environ: dict[str, str] | None = None) -> Path | None:
    """Where the cache should live according to the environment; None when it is off."""
    env = os.environ if environ is None else environ
    if ENV in env:
        value = env[ENV].strip()
        return None if value.lower() in OFF_VALUES else Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "jaxlm" / "xla"


def enable(directory: Path | str | None = None) -> Path | None:
    """Turn the persistent cache on (see the module docstring); returns its directory.

    `directory` overrides the environment. A directory JAX was already given wins over
    both. When the directory cannot be created the run goes on without a cache, with a
    warning: a slower start is better than no start.
    """
    # The CLI imports this module at start-up; JAX loads when a command runs, not for --help.
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = Path(directory).expanduser() if directory is not None else cache_dir_from_env()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        message = f"{ENV}: cannot create {path} ({e}); compiling without a persistent cache"
        warnings.warn(message, stacklevel=2)
        return None
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
