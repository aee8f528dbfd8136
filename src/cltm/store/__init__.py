"""The Zarr embedding cache: create, open, append, read, verify, export.

``Cache.open(path)`` is what every later stage uses: ``.manifest``, ``.n_layers``, ``.dim``, ``.done``,
``.failures``, ``.attrs`` and ``.read_layer(layer, rows=None, stat="mean")`` -> float32 [rows, dim].
"""

from cltm.store.cache import (
    FORMAT_VERSION,
    Cache,
    CacheError,
    CacheMismatchError,
    cltm_owned,
    identity_differences,
    open_or_create,
)
from cltm.store.lock import CacheLockedError

__all__ = [
    "FORMAT_VERSION",
    "Cache",
    "CacheError",
    "CacheLockedError",
    "CacheMismatchError",
    "cltm_owned",
    "identity_differences",
    "open_or_create",
]
