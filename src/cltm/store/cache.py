"""The embedding cache: one model x one manifest, pooled hidden states of every layer, in a Zarr v3 directory.

Layout (DESIGN §3.2)::

    cache.zarr/
      zarr.json            group attrs: format version, model id/revision/config hash, n_layers, dim, ...
      pooled/mean          float16 [n_layers, n_rows, dim], chunks (1, C, dim)  <- one layer = few big reads
      pooled/std           (if pooled) same shape
      n_frames             int32 [n_rows], chunks (C,)
      seconds              float32 [n_rows], chunks (C,)  audio seconds decoded (fills missing durations)
      done                 bool  [n_rows], chunks (C,)  <- set only after the row's data is written
      frames/layer_<k>/    optional frame-level features, append-only parts (see write_frames)
      manifest.parquet     the manifest rows in cache order (= the input manifest's row order)
      failures/*.parquet   utt_id, stage, error (one file per writer, so shards never share a file)
      checksums/*.parquet  CRC32 of every chunk file written (see cltm.store.checksums), checked by verify
      locks/<shard>.lock   the running writer of each shard (see cltm.store.lock)

Durability: zarr's LocalStore (>= 3.1) writes every chunk to a temporary file and ``os.replace``s it, so a
chunk file is always either the old or the new complete chunk, never torn; a SIGKILL can leave stray
``*.partial`` files, which readers ignore and ``verify`` reports. Rows are grouped in chunks of C rows and a
chunk is written by exactly one writer (shards own disjoint chunk sets), so read-modify-write of a partly
filled chunk never loses another writer's rows. The ``done`` flags of a set of rows are written only after
their data (pooled stats, n_frames, frames) returned from the store and the chunks' checksums were recorded.

Every array is written with ``write_empty_chunks`` on, so a chunk file exists for every chunk holding a done
row: a missing file means lost data (``read_layer`` raises, ``verify`` reports), never "all zeros".
Deleting (``--force``) only ever removes a directory that is provably a cltm cache (only cltm's own entries,
and cltm's layout or attrs), after taking every writer lock in it; anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr

from cltm.fileio import write_parquet_atomic
from cltm.store.checksums import record_checksums
from cltm.store.lock import lock_all

FORMAT_VERSION = 1
STATS = ("mean", "std")
FAILURE_COLUMNS = ("utt_id", "stage", "error")
# attrs that must agree between an existing cache and a new extraction into it
IDENTITY_ATTRS = (
    "model_id",
    "revision",
    "config_hash",
    "weights_hash",
    "manifest_hash",
    "trim_silence",
    "max_seconds",
    "n_layers",
    "dim",
    "pooling",
    "dtype",
    "compute_dtype",
    "frames_layers",
)
# every top-level entry cltm itself puts in a cache directory; a directory holding anything else is not ours
CACHE_ENTRIES = frozenset(
    {
        "zarr.json",
        "pooled",
        "n_frames",
        "seconds",
        "done",
        "frames",
        "manifest.parquet",
        "failures",
        "journal",
        "locks",
        "checksums",
    }
)
_ARRAYS = ("n_frames", "seconds", "done")


class CacheError(ValueError):
    """A cache that cannot be opened or written as asked (missing, incompatible, corrupt)."""


class CacheMismatchError(CacheError):
    """An existing cache was built from another model/revision/manifest than the one asked for."""

    def __init__(self, path: str | Path, differences: dict[str, tuple[Any, Any]]):
        self.path = Path(path)
        self.differences = differences
        lines = [f"  {k}: cache has {old!r}, this run has {new!r}" for k, (old, new) in differences.items()]
        super().__init__(
            f"{path}: the existing cache was built differently:\n"
            + "\n".join(lines)
            + "\nUse another --out, or --force to discard the cache and start again."
        )


def _failures_schema() -> dict[str, Any]:
    return {c: pl.Utf8 for c in FAILURE_COLUMNS}


class Cache:
    """A pooled-embedding cache on local disk. Open with :meth:`open`, build with :meth:`create`."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self._group = group
        self._manifest: pl.DataFrame | None = None

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        manifest: pl.DataFrame,
        n_layers: int,
        dim: int,
        attrs: dict[str, Any] | None = None,
        pooling: Sequence[str] = ("mean", "std"),
        dtype: str = "float16",
        chunk_rows: int = 512,
        frames_layers: Sequence[int] = (),
    ) -> Cache:
        """Create a new cache at ``path``; raises FileExistsError if something is already there.

        The cache is built in a temporary sibling directory and renamed into place, so concurrent creators
        (shards starting together) race safely: exactly one rename wins, the others get FileExistsError and
        should :meth:`open` and check the attrs instead (see :func:`open_or_create`).
        """
        path = Path(path)
        bad = [p for p in pooling if p not in STATS]
        if bad or not pooling:
            raise CacheError(f"pooling must be a non-empty subset of {STATS}, got {list(pooling)}")
        if path.is_dir() and not any(path.iterdir()):
            try:  # an empty directory (`mkdir feats.zarr`) is taken as a new cache; rmdir refuses non-empty
                path.rmdir()
            except OSError:
                pass
        if path.exists():
            raise FileExistsError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        n_rows = manifest.height
        c = max(1, min(int(chunk_rows), max(n_rows, 1)))
        try:
            group = zarr.open_group(tmp, mode="w")
            all_attrs = {
                "format": "cltm-embedding-cache",
                "format_version": FORMAT_VERSION,
                "n_layers": int(n_layers),
                "dim": int(dim),
                "n_rows": int(n_rows),
                "pooling": list(pooling),
                "dtype": dtype,
                "chunk_rows": c,
                "frames_layers": [int(x) for x in frames_layers],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            all_attrs.update(attrs or {})
            group.attrs.update(_jsonable(all_attrs))
            for stat in pooling:
                group.create_array(
                    f"pooled/{stat}",
                    shape=(n_layers, n_rows, dim),
                    chunks=(1, c, dim),
                    dtype=dtype,
                    fill_value=0,
                    compressors=None,  # embeddings barely compress; raw chunks read at memory speed
                )
            # uncompressed too: verify checks chunk file sizes, and these are tiny anyway
            group.create_array(
                "n_frames", shape=(n_rows,), chunks=(c,), dtype="int32", fill_value=0, compressors=None
            )
            group.create_array(
                "seconds", shape=(n_rows,), chunks=(c,), dtype="float32", fill_value=np.nan, compressors=None
            )
            group.create_array(
                "done", shape=(n_rows,), chunks=(c,), dtype="bool", fill_value=False, compressors=None
            )
            for layer in frames_layers:  # created here so that shards never write a shared group file
                group.require_group(f"frames/layer_{int(layer)}")
            manifest.write_parquet(tmp / "manifest.parquet")
            (tmp / "failures").mkdir()
            os.rename(tmp, path)  # atomic; fails if another creator got there first
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.exists():
                raise FileExistsError(path) from err
            raise
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | Path, *, mode: str = "r") -> Cache:
        """Open an existing cache (``mode="r"`` read-only, ``"r+"`` to write rows)."""
        path = Path(path)
        if not path.exists():
            raise CacheError(f"{path}: no such cache; build one with `cltm extract --out {path}`")
        if not (path / "zarr.json").exists():
            raise CacheError(f"{path}: not an embedding cache (no zarr.json); build one with `cltm extract`")
        try:
            group = zarr.open_group(path, mode=mode)
            attrs = dict(group.attrs)
        except Exception as err:  # corrupt JSON, unreadable file: zarr raises many types
            raise CacheError(
                f"{path}: the cache's zarr.json cannot be read ({type(err).__name__}: {err}); the cache "
                f"metadata is damaged: rebuild it with `cltm extract --force --out {path}`"
            ) from None
        if attrs.get("format") != "cltm-embedding-cache":
            raise CacheError(f"{path}: a Zarr group but not a cltm embedding cache (attrs.format missing)")
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise CacheError(f"{path}: cache format version {version}, this cltm reads {FORMAT_VERSION}")
        needed = [f"pooled/{s}/zarr.json" for s in attrs.get("pooling", [])]
        needed += [f"{a}/zarr.json" for a in _ARRAYS] + ["manifest.parquet"]
        missing = [name for name in needed if not (path / name).is_file()]
        if missing:
            raise CacheError(
                f"{path}: damaged cache, missing {', '.join(missing)}; rebuild it with "
                f"`cltm extract --force --out {path}`"
            )
        return cls(path, group)

    # -------------------------------------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def n_layers(self) -> int:
        return int(self._group.attrs["n_layers"])

    @property
    def dim(self) -> int:
        return int(self._group.attrs["dim"])

    @property
    def n_rows(self) -> int:
        return int(self._group.attrs["n_rows"])

    @property
    def chunk_rows(self) -> int:
        return int(self._group.attrs["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    @property
    def pooling(self) -> list[str]:
        return list(self._group.attrs["pooling"])

    @property
    def manifest(self) -> pl.DataFrame:
        """The manifest rows in cache order (row i of every array = row i here).

        Missing ``duration`` values are filled with the seconds the extraction decoded (done rows only).
        """
        if self._manifest is None:
            table = pl.read_parquet(self.path / "manifest.parquet")
            decoded = pl.Series("decoded", np.asarray(self._group["seconds"][:], dtype=np.float64))
            decoded = decoded.fill_nan(None)
            if "duration" in table.columns:
                filled = table["duration"].cast(pl.Float64).fill_nan(None).fill_null(decoded)
            else:
                filled = decoded
            self._manifest = table.with_columns(filled.alias("duration"))
        return self._manifest

    @property
    def done(self) -> np.ndarray:
        """bool [n_rows]: True where the row's data is durably in the cache."""
        return np.asarray(self._group["done"][:], dtype=bool)

    @property
    def n_frames(self) -> np.ndarray:
        return np.asarray(self._group["n_frames"][:], dtype=np.int32)

    @property
    def failures(self) -> pl.DataFrame:
        """utt_id, stage, error for every row that could not be processed (and is still not done)."""
        files = sorted((self.path / "failures").glob("*.parquet"), key=lambda p: p.stat().st_mtime)
        frames = [pl.read_parquet(f) for f in files]
        if not frames:
            return pl.DataFrame(schema=_failures_schema())
        table = pl.concat(frames, how="vertical_relaxed").unique("utt_id", keep="last", maintain_order=True)
        done_ids = self.manifest.filter(pl.Series(self.done))["utt_id"]
        return table.filter(~pl.col("utt_id").is_in(done_ids.implode()))

    def array(self, name: str) -> zarr.Array:
        return self._group[name]

    def _writable(self, name: str) -> zarr.Array:
        # write_empty_chunks is a runtime setting taken when the array is opened: a chunk of zeros (all-zero
        # std of one-frame rows) must still get its file, or it would read as missing data
        with zarr.config.set({"array.write_empty_chunks": True}):
            return self._group[name]

    def chunk_file(self, array: str, *index: int) -> Path:
        """The file holding chunk ``index`` of ``array`` (e.g. ``("pooled/mean", layer, chunk, 0)``)."""
        return self.path.joinpath(*array.split("/"), "c", *map(str, index))

    def missing_chunks(self, layer: int, chunks: np.ndarray, stat: str = "mean") -> list[int]:
        """The chunks of ``chunks`` whose pooled file is absent although some of their rows are done."""
        absent = [
            int(c) for c in chunks if not os.path.exists(self.chunk_file(f"pooled/{stat}", layer, int(c), 0))
        ]
        if not absent:
            return []
        done = self._group["done"]
        return [c for c in absent if np.asarray(done[c * self.chunk_rows : (c + 1) * self.chunk_rows]).any()]

    def _check_chunks(self, layer: int, chunks: np.ndarray, stat: str) -> None:
        lost = self.missing_chunks(layer, chunks, stat)
        if lost:
            spans = ", ".join(
                f"{c * self.chunk_rows}-{min((c + 1) * self.chunk_rows, self.n_rows) - 1}" for c in lost[:5]
            )
            more = f" and {len(lost) - 5} more chunk(s)" if len(lost) > 5 else ""
            raise CacheError(
                f"{self.path}: layer {layer} ({stat}): chunk file(s) missing for done rows {spans}{more}; "
                f"that data is lost, not zero. Run `cltm store verify --repair {self.path}`, then re-run "
                "the same `cltm extract` to recompute those rows."
            )

    # ---------------------------------------------------------------------------------------------- reading
    def read_layer(
        self, layer: int, rows: np.ndarray | Sequence[int] | None = None, stat: str = "mean"
    ) -> np.ndarray:
        """Pooled ``stat`` of one layer as float32 [rows, dim] (all rows, cache order, when rows is None).

        Rows that are not done read as zeros; check :attr:`done`. The hot path of every probe sweep. A chunk
        file that is missing although it holds done rows (deleted, lost in a copy) raises :class:`CacheError`
        instead of reading as zeros; the check is one ``stat`` per chunk read.
        """
        if stat not in self.pooling:
            raise CacheError(f"{self.path}: stat {stat!r} not in this cache (pooled: {self.pooling})")
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for a cache with {self.n_layers} hidden states")
        layer = layer % self.n_layers
        arr = self._group[f"pooled/{stat}"]
        if rows is None:
            self._check_chunks(layer, np.arange(self.n_chunks), stat)
            return np.asarray(arr[layer], dtype=np.float32)
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_rows or idx.max() >= self.n_rows):
            raise IndexError(f"row index out of range for a cache with {self.n_rows} rows")
        idx = idx % max(self.n_rows, 1)
        self._check_chunks(layer, np.unique(idx // self.chunk_rows), stat)
        if idx.size > self.n_rows // 4:
            # many rows: one sequential read of the layer then a gather beats per-chunk selection
            return np.asarray(arr[layer], dtype=np.float32)[idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        block = arr.get_orthogonal_selection((layer, uniq, slice(None)))
        return np.asarray(block, dtype=np.float32)[inverse]

    def read_layers(self, layers: Sequence[int] | None = None, stat: str = "mean") -> np.ndarray:
        """float32 [len(layers), n_rows, dim]; all layers when None."""
        layers = range(self.n_layers) if layers is None else layers
        return np.stack([self.read_layer(layer, stat=stat) for layer in layers])

    def to_numpy(self, stat: str = "mean") -> np.ndarray:
        """The whole pooled stat as float32 [n_layers, n_rows, dim] (what bring-your-own arrays look like)."""
        return self.read_layers(None, stat=stat)

    # ---------------------------------------------------------------------------------------------- writing
    def chunk_of(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows) // self.chunk_rows

    def chunk_rows_range(self, chunk: int) -> range:
        return range(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.n_rows))

    def write_rows(
        self,
        rows: np.ndarray,
        pooled: dict[str, np.ndarray],
        n_frames: np.ndarray,
        *,
        seconds: np.ndarray | None = None,
        frames: dict[int, list[np.ndarray]] | None = None,
        writer: str = "w0",
    ) -> None:
        """Write finished rows (data first, then their ``done`` flags).

        ``pooled[stat]`` is [n_layers, len(rows), dim]; ``frames[layer]`` a list of [frames_i, dim] arrays in
        the order of ``rows``. The caller guarantees that no other writer owns these rows' chunks.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        order = np.argsort(rows, kind="stable")
        rows_sorted = rows[order]
        if np.any(np.diff(rows_sorted) == 0):
            raise CacheError("write_rows got the same row twice")
        for stat in self.pooling:
            data = np.asarray(pooled[stat])[:, order]
            arr = self._writable(f"pooled/{stat}")
            arr.set_orthogonal_selection((slice(None), rows_sorted, slice(None)), data.astype(arr.dtype))
        self._writable("n_frames").set_orthogonal_selection((rows_sorted,), np.asarray(n_frames)[order])
        if seconds is not None:
            self._writable("seconds").set_orthogonal_selection((rows_sorted,), np.asarray(seconds)[order])
        if frames:
            for layer, items in frames.items():
                self._write_frames_part(layer, rows, items, writer)
        chunks = np.unique(rows_sorted // self.chunk_rows)
        keys = [f"{a}/c/{c}" for a in ("n_frames", "seconds") for c in chunks]
        keys += [
            f"pooled/{stat}/c/{layer}/{c}/0"
            for stat in self.pooling
            for layer in range(self.n_layers)
            for c in chunks
        ]
        record_checksums(self.path, keys, writer)
        # only now, with every byte of the rows' data in the store, do the rows count as done
        self._writable("done").set_orthogonal_selection((rows_sorted,), np.ones(rows_sorted.size, dtype=bool))

    def reset_rows(self, rows: np.ndarray) -> None:
        """Mark rows not done (used by --force on a compatible cache, and by tests)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        self._writable("done").set_orthogonal_selection((rows,), np.zeros(rows.size, dtype=bool))

    def write_failures(self, failures: pl.DataFrame, writer: str) -> None:
        """Replace this writer's failure table (atomically: temp file + rename)."""
        target = self.path / "failures" / f"{writer}.parquet"
        target.parent.mkdir(exist_ok=True)
        write_parquet_atomic(failures.select(FAILURE_COLUMNS).cast(_failures_schema()), target)

    # ------------------------------------------------------------------------------------------ frame level
    def _write_frames_part(self, layer: int, rows: np.ndarray, items: list[np.ndarray], writer: str) -> None:
        """Append one immutable part: rows, offsets and concatenated frames of one layer.

        Parts are write-once files named by writer + time, so shards never share one and a crash can only
        leave a part whose rows are not marked done (a later part for the same row wins when reading).
        """
        lengths = np.array([len(x) for x in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        data = np.concatenate(items, axis=0) if items else np.zeros((0, self.dim), dtype=np.float16)
        name = f"frames/layer_{layer}/{writer}-{time.time_ns():020d}"
        part = self._group.require_group(name)
        part.create_array("rows", data=np.asarray(rows, dtype=np.int64), overwrite=True)
        part.create_array("offsets", data=offsets, overwrite=True)
        part.create_array(
            "data",
            data=data.astype(self._group.attrs.get("dtype", "float16")),
            chunks=(max(1, min(65536, data.shape[0])), self.dim),
            compressors=None,
            overwrite=True,
        )

    def frame_parts(self, layer: int) -> list[str]:
        root = self.path / "frames" / f"layer_{layer}"
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "zarr.json").exists())

    def read_frames(self, layer: int, row: int) -> np.ndarray:
        """Frame-level features [frames, dim] float32 of one row (only for layers extracted with frames)."""
        if layer not in self._group.attrs.get("frames_layers", []):
            raise CacheError(f"{self.path}: no frame-level features for layer {layer}")
        found = None
        for name in self.frame_parts(layer):  # later parts win (sorted by time)
            part = self._group[f"frames/layer_{layer}/{name}"]
            hit = np.flatnonzero(np.asarray(part["rows"][:]) == row)
            if hit.size:
                found = (part, int(hit[-1]))
        if found is None:
            raise KeyError(f"row {row} has no frame-level features for layer {layer}")
        part, i = found
        offsets = np.asarray(part["offsets"][:])
        return np.asarray(part["data"][offsets[i] : offsets[i + 1]], dtype=np.float32)

    # ------------------------------------------------------------------------------------------------ misc
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return (
            f"Cache({str(self.path)!r}, model={self.attrs.get('model_id')!r}, layers={self.n_layers}, "
            f"dim={self.dim}, rows={self.n_rows}, done={int(self.done.sum())})"
        )


def identity_differences(existing: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The identity attrs (model, revision, config, manifest, shape, pooling, dtype) that differ."""
    out = {}
    for key in IDENTITY_ATTRS:
        if key in wanted and _jsonable(existing.get(key)) != _jsonable(wanted[key]):
            out[key] = (existing.get(key), wanted[key])
    return out


def cltm_owned(path: str | Path) -> tuple[bool, str]:
    """Is ``path`` provably a cltm cache (or the leftovers of one), so that ``--force`` may delete it?

    Yes only when every top-level entry is one cltm itself makes (:data:`CACHE_ENTRIES`, temp files aside)
    and either zarr.json declares a cltm cache, or the cache layout is there (manifest.parquet and done/), or
    only cltm's bookkeeping is left (journal/, locks/, checksums/, failures/). Returns (owned, description).
    """
    path = Path(path)
    if not path.is_dir():
        return False, "not a directory"
    entries = sorted(p.name for p in path.iterdir())
    foreign = [
        n for n in entries if n not in CACHE_ENTRIES and not n.endswith(".partial") and not n.startswith(".")
    ]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return False, f"it holds files cltm did not make ({shown})"
    try:
        declared = (
            json.loads((path / "zarr.json").read_text())["attributes"]["format"] == "cltm-embedding-cache"
        )
    except (OSError, ValueError, KeyError, TypeError):
        declared = False
    layout = (path / "manifest.parquet").is_file() and (path / "done").is_dir()
    leftovers = bool(entries) and set(entries) <= {"journal", "locks", "checksums", "failures"}
    if declared or layout:
        return True, "a cltm cache"
    if leftovers:
        return True, f"only the leftovers of a deleted cltm cache ({', '.join(entries)})"
    return False, "it is not a cltm cache"


def open_or_create(
    path: str | Path,
    *,
    manifest: pl.DataFrame,
    n_layers: int,
    dim: int,
    attrs: dict[str, Any],
    pooling: Sequence[str] = ("mean", "std"),
    dtype: str = "float16",
    chunk_rows: int = 512,
    frames_layers: Sequence[int] = (),
    force: bool = False,
) -> Cache:
    """Open the cache for writing if it matches this extraction, else create it (race-safe across shards).

    A cache built from another model id, revision, config, manifest, pooling, storage or compute dtype or
    frames layers raises :class:`CacheMismatchError` naming every difference, unless ``force``: then it is
    deleted and rebuilt, but only if it is provably a cltm cache (:func:`cltm_owned`) and no writer holds a
    lock in it; anything else is refused (:class:`CacheError`). An empty directory is a new cache.
    """
    path = Path(path)
    wanted = dict(
        attrs,
        n_layers=int(n_layers),
        dim=int(dim),
        pooling=list(pooling),
        dtype=dtype,
        frames_layers=[int(x) for x in frames_layers],
    )
    for _ in range(3):
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            try:
                return Cache.create(
                    path,
                    manifest=manifest,
                    n_layers=n_layers,
                    dim=dim,
                    attrs=attrs,
                    pooling=pooling,
                    dtype=dtype,
                    chunk_rows=chunk_rows,
                    frames_layers=frames_layers,
                )
            except FileExistsError:
                pass  # another shard created it first: open and check below
        owned, what = cltm_owned(path)
        if not path.is_dir():
            raise CacheError(f"{path} exists and is not a directory; choose another --out")
        try:
            cache = Cache.open(path, mode="r+")
            diff = identity_differences(cache.attrs, wanted)
        except CacheError as err:
            if not owned:
                raise CacheError(
                    f"{path} exists and is not a cltm cache: {what}. cltm never writes into or deletes such "
                    "a directory (not even with --force): choose another --out."
                ) from None
            if not force:
                raise CacheError(
                    f"{err}"
                    if (path / "zarr.json").exists()
                    else f"{path} holds {what}; use --force to clear it, or choose another --out"
                ) from None
            diff = {"cache": (str(err), "a valid cache")}
        if not diff:
            return cache
        if not force:
            raise CacheMismatchError(path, diff)
        if not owned:  # a cltm cache with foreign files added: deleting it would take those too
            raise CacheError(f"{path}: refusing --force: {what}. Move them out, or choose another --out.")
        held = lock_all(path)  # refuses if another writer is running in it
        try:
            shutil.rmtree(path)
        finally:
            for lock in held:
                lock.release()
        force = False  # rebuild once
    raise CacheError(f"{path}: could not create or open the cache")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
