"""Analysis: run comparison tables and plots, scaling-law fits (reads run files)."""
