"""The Zarr embedding cache: create, open, append, read, verify, export."""
