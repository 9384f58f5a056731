"""Checkpointing: the Orbax manager, integrity and shape checks, params export/import,
resume rules."""
