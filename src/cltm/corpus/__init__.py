"""Corpus manifests: schema, validation, importers, sampling, splits, trial lists, the demo corpus.

The manifest API (:mod:`cltm.corpus.manifest`) is re-exported here. Importers, the summary table and the
sampling helpers live in their own modules (``cltm.corpus.importers``, ``cltm.corpus.info``,
``cltm.corpus.sampling``, ``cltm.corpus.synth``); the importer entry points are also reachable from here,
loaded on first use. Importing ``cltm.corpus`` needs only polars (no torch).
"""

from __future__ import annotations

from typing import Any

from cltm.corpus.manifest import (
    COLUMNS,
    GENDER_ALIASES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SPLIT_VALUES,
    ColumnSpec,
    ManifestError,
    Problem,
    conform,
    manifest_hash,
    normalize_gender,
    normalize_genders,
    read_manifest,
    validate,
    write_manifest,
)

# name -> module, imported when first asked for (keeps `import cltm.corpus` light)
_LAZY = {
    "IMPORTERS": "cltm.corpus.importers",
    "CorpusImportError": "cltm.corpus.importers",
    "import_corpus": "cltm.corpus.importers",
    "import_commonvoice": "cltm.corpus.importers",
    "import_table": "cltm.corpus.importers",
    "import_folder": "cltm.corpus.importers",
    "summarize": "cltm.corpus.info",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltm.corpus' has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "GENDER_ALIASES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLIT_VALUES",
    "ColumnSpec",
    "CorpusImportError",
    "IMPORTERS",
    "ManifestError",
    "Problem",
    "conform",
    "import_commonvoice",
    "import_corpus",
    "import_folder",
    "import_table",
    "manifest_hash",
    "normalize_gender",
    "normalize_genders",
    "read_manifest",
    "summarize",
    "validate",
    "write_manifest",
]
