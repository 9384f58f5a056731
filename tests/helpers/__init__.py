"""Scripts that tests run in subprocesses (other device counts, several processes)."""
