"""cltm: per-layer Cross-Lingual Transfer Matrices from self-supervised speech models."""

__version__ = "0.1.0"
