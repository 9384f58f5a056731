"""Test harness: 8 fake CPU devices, set before JAX initialises its backend.

Sharding tests build meshes over these; a test that needs another device count runs
in a subprocess. Tiny model dimensions differ from one another (see presets.tiny) so
a transposed axis cannot hide.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)
