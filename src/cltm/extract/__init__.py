"""Model loading, length-bucketed batching, pooling, and the resumable, shardable extraction runner.

``build_tiny_model`` and ``load_model`` live in :mod:`cltm.extract.models`; ``extract`` (the runner) in
:mod:`cltm.extract.runner`; its settings objects in :mod:`cltm.extract.settings`. Everything is imported on
first use, so ``cltm.extract.settings`` (the CLI's defaults) loads without torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "FBANK_ID": "cltm.extract.models",
    "LoadedModel": "cltm.extract.models",
    "build_tiny_model": "cltm.extract.models",
    "fbank_model": "cltm.extract.models",
    "load_model": "cltm.extract.models",
    "extract": "cltm.extract.runner",
    "ExtractionSummary": "cltm.extract.runner",
    "BatchSettings": "cltm.extract.settings",
    "ExtractSettings": "cltm.extract.settings",
    "ModelSettings": "cltm.extract.settings",
    "OutputSettings": "cltm.extract.settings",
    "ProgressCallback": "cltm.extract.settings",
    "SettingsError": "cltm.extract.settings",
    "MIN_MAX_SECONDS": "cltm.extract.settings",
    "parse_shard": "cltm.extract.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltm.extract' has no attribute {name!r}")


__all__ = sorted(_LAZY)
