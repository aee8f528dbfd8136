"""Bring-your-own embeddings for ``run_matrix``: .npy / .npz arrays and HDF5 files (e.g. ``cltm store
export``).

Arrays are [n_layers, n_utts, dim] aligned with a manifest's rows; a 2-D [n_utts, dim] array (one vector per
utterance, e.g. ECAPA x-vectors computed elsewhere) is taken as a single layer. HDF5 files are searched for
the first dataset named ``pooled/mean``, ``mean``, ``embeddings`` or ``features`` (else the only 2-/3-D float
dataset); a ``manifest.parquet`` next to the file, or a manifest stored inside it (a ``manifest`` group of
column datasets), is used when no manifest is given. A small registry keyed by file suffix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

EMBEDDING_DATASETS = ("pooled/mean", "mean", "embeddings", "features")

# a loader returns (array, manifest or None, done mask or None)
Loader = Callable[[Path], tuple[np.ndarray, pl.DataFrame | None, np.ndarray | None]]
_LOADERS: dict[str, Loader] = {}


def _register(*suffixes: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        for suffix in suffixes:
            _LOADERS[suffix] = fn
        return fn

    return wrap


def _as_layers(arr: np.ndarray, source: Path) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{source}: embeddings must be [n_layers, n_utts, dim] or [n_utts, dim], got {arr.shape}"
        )
    return arr


@_register(".npy")
def _load_npy(path: Path) -> tuple[np.ndarray, pl.DataFrame | None, np.ndarray | None]:
    return np.load(path, mmap_mode="r"), None, None


@_register(".npz")
def _load_npz(path: Path) -> tuple[np.ndarray, pl.DataFrame | None, np.ndarray | None]:
    with np.load(path) as data:
        arrays = [k for k in data.files if k not in ("done", "utt_id", "utt_ids")]
        names = [k for k in EMBEDDING_DATASETS if k in data.files] or arrays
        if len(names) != 1 and not any(k in data.files for k in EMBEDDING_DATASETS):
            raise ValueError(f"{path}: several arrays {data.files}; name the embeddings one `embeddings`")
        done = np.asarray(data["done"], dtype=bool) if "done" in data.files else None
        # an `utt_id` array names the rows: the manifest is then checked (and aligned) against it
        ids_key = next((k for k in ("utt_id", "utt_ids") if k in data.files), None)
        ids = pl.DataFrame({"utt_id": [str(u) for u in data[ids_key].tolist()]}) if ids_key else None
        return np.asarray(data[names[0]]), ids, done


@_register(".h5", ".hdf5", ".hdf")
def _load_h5(path: Path) -> tuple[np.ndarray, pl.DataFrame | None, np.ndarray | None]:
    import h5py

    with h5py.File(path, "r") as f:
        name = next((k for k in EMBEDDING_DATASETS if k in f), None)
        if name is None:
            found: list[str] = []
            f.visititems(
                lambda k, v: (
                    found.append(k)
                    if isinstance(v, h5py.Dataset) and v.ndim in (2, 3) and v.dtype.kind == "f"
                    else None
                )
            )
            if len(found) != 1:
                raise ValueError(
                    f"{path}: cannot tell which dataset holds the embeddings (candidates {found}); "
                    f"name it one of {list(EMBEDDING_DATASETS)}"
                )
            name = found[0]
        arr = np.asarray(f[name][...], dtype=np.float32)
        done = np.asarray(f["done"][...], dtype=bool) if "done" in f else None
        manifest = None
        if "manifest" in f and isinstance(f["manifest"], h5py.Group):
            cols = {}
            for key, ds in f["manifest"].items():
                values = ds[...]
                if values.dtype.kind in ("S", "O"):
                    # `cltm store export` writes missing strings as "": read them back as nulls
                    values = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
                    values = [v if v != "" else None for v in values]
                cols[key] = values
            manifest = pl.DataFrame(cols)
    return arr, manifest, done


def load_embeddings(
    path: str | Path, manifest: pl.DataFrame | None = None
) -> tuple[np.ndarray, pl.DataFrame]:
    """Embeddings [n_layers, n_utts, dim] and the manifest their rows follow.

    The manifest comes from the argument, else from inside the file, else from ``manifest.parquet`` next to
    it.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"embeddings file not found: {p}")
    loader = _LOADERS.get(p.suffix.lower())
    if loader is None:
        raise ValueError(f"{p}: unknown embeddings format {p.suffix!r}; use one of {sorted(_LOADERS)}")
    arr, inner, done = loader(p)
    arr = _as_layers(np.asarray(arr), p)
    if manifest is not None and inner is not None and "utt_id" in inner.columns:
        # the file names its rows: the given manifest must hold the same utterances (any order)
        manifest = align_manifest(manifest, inner["utt_id"], what=f"{p}")
    if manifest is None and inner is not None and inner.columns != ["utt_id"]:
        manifest = inner
    if manifest is None and (p.parent / "manifest.parquet").exists():
        manifest = pl.read_parquet(p.parent / "manifest.parquet")
        if inner is not None and "utt_id" in inner.columns:
            manifest = align_manifest(manifest, inner["utt_id"], what=f"{p}")
    if manifest is None:
        raise ValueError(f"{p}: no manifest inside the file or next to it; pass one (--manifest FILE)")
    if manifest.height != arr.shape[1]:
        raise ValueError(
            f"{p}: {arr.shape[1]} embedding rows but the manifest has {manifest.height} rows; "
            "they must be aligned row by row"
        )
    if done is not None and len(done) == arr.shape[1] and not done.all():
        # an export of an unfinished cache: rows never extracted hold zeros, so they are dropped here
        arr, manifest = arr[:, done], manifest.filter(pl.Series(done))
    return arr, manifest


def align_manifest(manifest: pl.DataFrame, utt_ids: pl.Series | list[str], *, what: str) -> pl.DataFrame:
    """``manifest`` reordered to the features' row order (``utt_ids``); refuses any other set of utterances.

    A manifest in another order is aligned by utt_id (never by position: a reordered manifest would silently
    give every row another label). A manifest with missing, extra or duplicated utt_ids is refused with the
    first rows that differ.
    """
    ids = [str(u) for u in (utt_ids.to_list() if isinstance(utt_ids, pl.Series) else utt_ids)]
    if "utt_id" not in manifest.columns:
        raise ValueError(f"--manifest has no utt_id column, so its rows cannot be matched to {what}")
    mine = [str(u) for u in manifest["utt_id"].to_list()]
    if mine == ids:
        return manifest
    dupes = manifest.filter(pl.col("utt_id").cast(pl.String).is_duplicated())["utt_id"].unique().to_list()
    if dupes:
        raise ValueError(
            f"--manifest has duplicated utt_id(s) {sorted(map(str, dupes))[:5]}; each row must be unique"
        )
    if set(mine) != set(ids) or len(mine) != len(ids):
        missing = [u for u in ids if u not in set(mine)][:5]
        extra = [u for u in mine if u not in set(ids)][:5]
        first = next(
            (k for k, (a, b) in enumerate(zip(mine, ids, strict=False)) if a != b), min(len(mine), len(ids))
        )
        raise ValueError(
            f"--manifest does not hold the utterances of {what}: {len(mine)} rows vs {len(ids)}; first "
            f"differing row {first} (manifest {mine[first] if first < len(mine) else None!r}, features "
            f"{ids[first] if first < len(ids) else None!r}); missing from the manifest {missing}, not in the "
            f"features {extra}. Use the manifest the features were extracted from"
        )
    order = {u: k for k, u in enumerate(mine)}
    return manifest[[order[u] for u in ids]]


# ------------------------------------------------------------------------------------------------------------
# Feature sources: what run_matrix reads layers from
# ------------------------------------------------------------------------------------------------------------


@runtime_checkable
class FeatureSource(Protocol):
    """Anything ``run_matrix`` can read embeddings from: a ``cltm.store.Cache`` or :class:`ArrayFeatures`.

    ``read_layer(layer)`` gives float32 [n_rows, dim] aligned with ``manifest``'s rows; ``done`` marks the
    rows that hold data (rows never extracted read as zeros and are left out).
    """

    @property
    def n_layers(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    @property
    def manifest(self) -> pl.DataFrame | None: ...

    @property
    def done(self) -> np.ndarray: ...

    def read_layer(self, layer: int) -> np.ndarray: ...


class ArrayFeatures:
    """In-memory (or memory-mapped) embeddings [n_layers, n_rows, dim] as a :class:`FeatureSource`."""

    def __init__(self, array: Any, manifest: pl.DataFrame | None = None, done: np.ndarray | None = None):
        arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        self.array = arr[None] if arr.ndim == 2 else arr
        if self.array.ndim != 3:
            raise ValueError(f"embeddings must be [n_layers, n_utts, dim] or [n_utts, dim], got {arr.shape}")
        self._manifest = manifest
        self._done = np.ones(self.array.shape[1], bool) if done is None else np.asarray(done, bool)

    @property
    def n_layers(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[1])

    @property
    def manifest(self) -> pl.DataFrame | None:
        return self._manifest

    @property
    def done(self) -> np.ndarray:
        return self._done

    def read_layer(self, layer: int) -> np.ndarray:
        return np.asarray(self.array[layer], dtype=np.float32)


def as_feature_source(features: Any, manifest: pl.DataFrame | None = None) -> FeatureSource:
    """A cache (or its path), an embeddings file (.h5/.npz/.npy), an array, or a FeatureSource as one."""
    if isinstance(features, FeatureSource):
        return features
    if isinstance(features, (str, Path)):
        p = Path(features)
        if p.suffix.lower() in _LOADERS:
            arr, man = load_embeddings(p, manifest)
            return ArrayFeatures(arr, man)
        from cltm.store import Cache

        return Cache.open(p)
    return ArrayFeatures(features, manifest)
