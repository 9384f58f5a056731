"""Experiment modules: each has a docstring (what it tests, how to run it) and get_config()."""
