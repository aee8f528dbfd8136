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
        names = [k for k in EMBEDDING_DATASETS if k in data.files] or list(data.files)
        if len(names) != 1 and not any(k in data.files for k in EMBEDDING_DATASETS):
            raise ValueError(f"{path}: several arrays {data.files}; name the embeddings one `embeddings`")
        done = np.asarray(data["done"], dtype=bool) if "done" in data.files else None
        return np.asarray(data[names[0]]), None, done


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
    if manifest is None:
        manifest = inner
    if manifest is None and (p.parent / "manifest.parquet").exists():
        manifest = pl.read_parquet(p.parent / "manifest.parquet")
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
