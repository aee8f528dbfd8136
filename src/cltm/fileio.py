"""The project's one atomic write and one stable hash.

Every artefact cltm writes (manifests, results tables, failure tables, journals, configs) goes through
:func:`atomic_write`: the bytes go to a temporary file in the destination's directory, are flushed to disk,
and the file is renamed over the destination. A reader (or a crash) therefore sees the old file or the new
one, never half of one. :func:`stable_hash` is the one short hash of a JSON-able setting (cache
identities, results tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (same directory: atomic).

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet_atomic(df: Any, path: str | Path) -> Path:
    """Write a polars DataFrame as Parquet through :func:`atomic_write`."""
    return atomic_write(path, df.write_parquet)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write text (UTF-8) through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def stable_hash(value: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-able value (sorted keys; anything else by ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
