"""Test harness: 8 fake CPU devices, set before JAX initialises its backend.

Sharding tests build meshes over these; a test that needs another device count runs
in a subprocess. Tiny model dimensions differ from one another (see presets.tiny) so
a transposed axis cannot hide.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Hermetic runs: no persistent XLA cache shared with earlier runs or the user's
# (test_compilation_cache.py turns it on in its own subprocesses).
os.environ["JAXLM_COMPILATION_CACHE"] = "off"

import jax

jax.config.update("jax_num_cpu_devices", 8)

# Within this process, one XLA cache of its own, new and deleted at exit: dozens of
# tests train the same tiny models, and each run builds its jitted steps anew, so
# without it every one of them compiles the same programs again (seconds each on a
# 2-core CI machine). A hit loads the executable an identical program compiled to.
_XLA_CACHE = tempfile.mkdtemp(prefix="jaxlm-tests-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
