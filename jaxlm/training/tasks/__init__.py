"""One Task per objective, and the registry that picks a run's by `data.format`."""
