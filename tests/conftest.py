"""Test harness: 8 fake CPU devices, set before JAX initialises its backend.

Sharding tests build meshes over these; a test that needs another device count runs
in a subprocess. Tiny model dimensions differ from one another (see presets.tiny) so
a transposed axis cannot hide.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Hermetic runs: no persistent XLA cache shared with earlier runs or the user's
# (test_compilation_cache.py turns it on in its own subprocesses).
os.environ["JAXLM_COMPILATION_CACHE"] = "off"

import jax

jax.config.update("jax_num_cpu_devices", 8)
