"""The CLTM engine: conditions, sweep runner, statistics and matrix properties."""
