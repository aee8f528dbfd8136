"""Model loading, length-bucketed batching, pooling, and the resumable, shardable extraction runner.

``build_tiny_model`` and ``load_model`` live in :mod:`cltm.extract.models`; ``extract`` (the runner) in
:mod:`cltm.extract.runner`.
"""

from __future__ import annotations

from typing import Any

from cltm.extract.models import FBANK_ID, LoadedModel, build_tiny_model, fbank_model, load_model

_LAZY = {
    "extract": "cltm.extract.runner",
    "ExtractionSummary": "cltm.extract.runner",
    "parse_shard": "cltm.extract.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltm.extract' has no attribute {name!r}")


__all__ = [
    "FBANK_ID",
    "ExtractionSummary",
    "LoadedModel",
    "build_tiny_model",
    "extract",
    "fbank_model",
    "load_model",
    "parse_shard",
]
