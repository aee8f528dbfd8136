"""Cache tools: a summary (info), an integrity check (verify) and exports through a small format registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cltm.fileio import atomic_write
from cltm.store.cache import Cache, CacheError
from cltm.store.checksums import file_crc32, read_checksums


# ------------------------------------------------------------------------------------------------------ info
def cache_info(cache: Cache) -> dict[str, Any]:
    """Model, shape, rows done/failed, bytes on disk and per hour of extracted audio."""
    attrs = cache.attrs
    done = cache.done
    manifest = cache.manifest
    seconds = manifest["duration"].to_numpy()[done] if "duration" in manifest.columns else np.array([])
    hours = float(np.nansum(seconds)) / 3600 if seconds.size else 0.0
    disk = cache.disk_bytes()
    return {
        "path": str(cache.path),
        "model_id": attrs.get("model_id"),
        "revision": attrs.get("revision"),
        "config_hash": attrs.get("config_hash"),
        "weights_hash": attrs.get("weights_hash"),
        "n_layers": cache.n_layers,
        "dim": cache.dim,
        "pooling": cache.pooling,
        "dtype": attrs.get("dtype"),
        "rows": cache.n_rows,
        "done": int(done.sum()),
        "failed": cache.failures.height,
        "pending": int((~done).sum()) - cache.failures.height,
        "audio_hours_done": hours,
        "bytes_on_disk": disk,
        "bytes_per_audio_hour": disk / hours if hours > 0 else float("nan"),
        "frames_layers": attrs.get("frames_layers", []),
        "manifest_hash": attrs.get("manifest_hash"),
        "tool": attrs.get("tool"),
        "created": attrs.get("created"),
    }


# ---------------------------------------------------------------------------------------------------- verify
@dataclass
class VerifyReport:
    """Problems make a cache invalid; warnings (e.g. stray temp files from a killed run) do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_rows: int = 0
    bad_rows: set[int] = field(default_factory=set)  # done rows whose data is missing or wrong

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows_text(rows: np.ndarray, ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"{int(r)} ({ids[int(r)]})" for r in rows[:limit])
    return shown + (f" … and {len(rows) - limit} more" if len(rows) > limit else "")


def verify_path(path: str | Path) -> VerifyReport:
    """Open and verify the cache at ``path``; never raises: every problem is listed."""
    report = VerifyReport()
    try:
        cache = Cache.open(path)
    except CacheError as err:
        report.problems.append(str(err))
        return report
    try:
        return verify_cache(cache)
    except Exception as err:  # a damage verify does not know yet must still end in a message
        report.problems.append(f"{path}: verify stopped at an unreadable part ({type(err).__name__}: {err})")
        return report


def _expected_chunk_bytes(arr: Any) -> int | None:
    """Size of one uncompressed chunk file (None for compressed arrays, whose size varies)."""
    if getattr(arr, "compressors", ()) or getattr(arr, "filters", ()):
        return None
    return int(np.prod(arr.chunks)) * np.dtype(str(arr.dtype)).itemsize


def verify_cache(cache: Cache) -> VerifyReport:
    """Check that every done row is present, intact, finite and consistent with the manifest.

    Chunk files are checked on disk: present (Zarr silently reads a missing chunk as zeros), of the right size
    (a truncated copy), readable, and with the CRC32 recorded when they were written (a flipped byte, a
    swapped or replaced file; caches written before checksums existed get a warning instead).
    """
    from cltm.corpus import manifest_hash

    report = VerifyReport()
    attrs = cache.attrs
    try:
        stored = pl.read_parquet(cache.path / "manifest.parquet")
    except Exception as err:
        report.problems.append(f"manifest.parquet cannot be read ({type(err).__name__}: {err})")
        return report
    if "utt_id" not in stored.columns:
        report.problems.append("manifest.parquet has no utt_id column")
        return report
    ids = stored["utt_id"].cast(pl.Utf8).to_list()
    if stored.height != cache.n_rows:
        report.problems.append(f"manifest.parquet has {stored.height} rows, the arrays {cache.n_rows}")
        return report
    if stored["utt_id"].n_unique() != stored.height:
        report.problems.append("manifest.parquet has duplicate utt_id values")
    if attrs.get("manifest_hash") and manifest_hash(stored) != attrs["manifest_hash"]:
        report.problems.append("manifest.parquet does not match the manifest hash recorded in the attrs")
    try:
        done = cache.done
    except Exception as err:
        report.problems.append(f"the done flags cannot be read ({type(err).__name__}: {err})")
        return report
    pending = sorted(cache.path.glob("journal/*/*.npz"))
    try:
        checksums = read_checksums(cache.path)
    except Exception as err:
        report.problems.append(f"a checksum table cannot be read ({type(err).__name__}: {err})")
        checksums = {}
    if checksums is None and done.any():
        report.warnings.append(
            "no chunk checksums recorded (a cache written by an older cltm): flipped bytes or swapped chunk "
            "files cannot be detected; `cltm extract --force` rebuilds it with checksums"
        )
    report.checked_rows = int(done.sum())
    c = cache.chunk_rows

    def check_file(array: str, index: tuple[int, ...], done_rows: np.ndarray, what: str) -> bool:
        """Present, right size, matching checksum; records the problem and returns False otherwise."""
        path = cache.chunk_file(array, *index)
        key = str(path.relative_to(cache.path)).replace("\\", "/")
        if not path.is_file():
            report.problems.append(f"chunk {key} missing: {what} of done rows {_rows_text(done_rows, ids)}")
            report.bad_rows.update(done_rows.tolist())
            return False
        size = _expected_chunk_bytes(cache.array(array))
        if size is not None and path.stat().st_size != size:
            report.problems.append(
                f"chunk {key} is {path.stat().st_size} bytes, expected {size} (truncated or replaced): "
                f"{what} of done rows {_rows_text(done_rows, ids)}"
            )
            report.bad_rows.update(done_rows.tolist())
            return False
        if checksums:
            recorded = checksums.get(key)
            if recorded is not None and file_crc32(path) != recorded:
                message = (
                    f"chunk {key} does not match the checksum recorded when it was written (flipped "
                    f"bytes, or a swapped or replaced file): {what} of done rows {_rows_text(done_rows, ids)}"
                )
                if (
                    pending
                ):  # a killed run may have written the chunk but not its checksum; resume rewrites both
                    report.warnings.append(
                        message + " (an interrupted run is pending: re-run `cltm extract`)"
                    )
                    return True
                report.problems.append(message)
                report.bad_rows.update(done_rows.tolist())
                return False
        return True

    n_frames_arr = cache.array("n_frames")
    for chunk in range(cache.n_chunks):
        rows = np.arange(chunk * c, min((chunk + 1) * c, cache.n_rows))
        done_rows = rows[done[rows]]
        if done_rows.size == 0:
            continue
        if cache.chunk_file("seconds", chunk).is_file():  # optional: written only when seconds are given
            check_file("seconds", (chunk,), done_rows, "decoded seconds")
        if check_file("n_frames", (chunk,), done_rows, "frame counts"):
            try:
                nf = np.asarray(n_frames_arr[rows[0] : rows[-1] + 1])[done_rows - rows[0]]
            except Exception as err:
                report.problems.append(f"chunk n_frames/c/{chunk} unreadable ({type(err).__name__}: {err})")
                report.bad_rows.update(done_rows.tolist())
                nf = None
            if nf is not None and (nf <= 0).any():
                bad = done_rows[nf <= 0]
                report.problems.append(f"done rows with no frames: {_rows_text(bad, ids)}")
                report.bad_rows.update(bad.tolist())
        for stat in cache.pooling:
            arr = cache.array(f"pooled/{stat}")
            for layer in range(cache.n_layers):
                if not check_file(f"pooled/{stat}", (layer, chunk, 0), done_rows, f"layer {layer} ({stat})"):
                    continue
                try:
                    block = np.asarray(arr[layer, done_rows[0] : done_rows[-1] + 1])
                except Exception as err:
                    report.problems.append(
                        f"chunk pooled/{stat}/c/{layer}/{chunk}/0 unreadable ({type(err).__name__}: {err})"
                    )
                    report.bad_rows.update(done_rows.tolist())
                    continue
                block = block[done_rows - done_rows[0]]
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    report.problems.append(
                        f"{stat} layer {layer}: non-finite values in rows "
                        + _rows_text(done_rows[~finite], ids)
                    )
                    report.bad_rows.update(done_rows[~finite].tolist())
                negative = (block < 0).any(axis=1)
                if stat == "std" and negative.any():
                    report.problems.append(
                        f"std layer {layer}: negative values in rows " + _rows_text(done_rows[negative], ids)
                    )
                    report.bad_rows.update(done_rows[negative].tolist())
                zero = ~block.any(axis=1)
                if stat == "mean" and zero.any():
                    # extraction never stores an all-zero mean (it records a failure instead): this is damage
                    report.problems.append(
                        f"mean layer {layer}: all-zero vectors for done rows "
                        + _rows_text(done_rows[zero], ids)
                    )
                    report.bad_rows.update(done_rows[zero].tolist())
    for layer in attrs.get("frames_layers", []):
        have = np.zeros(cache.n_rows, dtype=bool)
        for name in cache.frame_parts(layer):
            try:
                have[np.asarray(cache.array(f"frames/layer_{layer}/{name}/rows")[:])] = True
            except Exception as err:
                report.problems.append(
                    f"frame-level part frames/layer_{layer}/{name} unreadable ({type(err).__name__}: {err})"
                )
        lacking = np.flatnonzero(done & ~have)
        if lacking.size:
            report.problems.append(
                f"frame-level layer {layer}: no frames for done rows " + _rows_text(lacking, ids)
            )
            report.bad_rows.update(lacking.tolist())
    try:
        failures = cache.failures
    except Exception as err:
        report.problems.append(f"a failure table cannot be read ({type(err).__name__}: {err})")
        failures = pl.DataFrame({"utt_id": []}, schema={"utt_id": pl.Utf8})
    unknown = set(failures["utt_id"].to_list()) - set(ids)
    if unknown:
        report.problems.append(f"failures name utt_ids not in the manifest: {sorted(unknown)[:8]}")
    stray = sorted(str(p.relative_to(cache.path)) for p in cache.path.rglob("*.partial"))
    if stray:
        report.warnings.append(
            f"{len(stray)} temporary file(s) left by an interrupted write (harmless, can be deleted): "
            + ", ".join(stray[:5])
        )
    if pending:
        shards = sorted({p.parent.name for p in pending})
        report.warnings.append(
            f"{len(pending)} journaled batch(es) of an interrupted run not yet in the cache "
            f"({', '.join(shards)}): re-running the same `cltm extract` writes them in before it goes on"
        )
    return report


def repair_cache(path: str | Path, report: VerifyReport) -> int:
    """Mark the report's bad rows not done, so that re-running the same `cltm extract` recomputes them."""
    if not report.bad_rows:
        return 0
    Cache.open(path, mode="r+").reset_rows(np.array(sorted(report.bad_rows)))
    return len(report.bad_rows)


# ---------------------------------------------------------------------------------------------------- export
Exporter = Callable[[Cache, Path], Path]
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Add an export format: ``@register_exporter("npz") def f(cache, out) -> Path``."""

    def add(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn

    return add


def export_cache(cache: Cache, out: str | Path, format: str = "h5", *, force: bool = False) -> Path:
    """Write the cache to ``out`` in a registered format (``h5``, ``npz``).

    Refuses to replace an existing file unless ``force``, and never writes inside a cache.
    """
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; available: {', '.join(sorted(EXPORTERS))}")
    out = Path(out)
    check_export_target(cache, out, force=force)
    if cache.n_rows == 0:
        raise CacheError(
            f"{cache.path}: the cache has no rows (built from an empty manifest): nothing to export"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # written to a temporary name and renamed: a failed export never leaves half a file at --out
    final = out if format != "npz" or out.suffix == ".npz" else out.with_name(out.name + ".npz")
    atomic_write(final, lambda tmp: EXPORTERS[format](cache, tmp))
    return final


def check_export_target(cache: Cache, out: Path, *, force: bool = False) -> None:
    """Refuse an export path inside any cltm cache, a directory, or an existing file without ``force``."""
    resolved = out.resolve()
    for parent in [resolved.parent, *resolved.parent.parents]:
        if (parent / "zarr.json").is_file() and (parent / "manifest.parquet").is_file():
            raise CacheError(f"{out} is inside the cache {parent}: export to a path outside any cache")
    if out.is_dir():
        raise CacheError(f"{out} is a directory; give a file name for the export")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; use --force to replace it, or choose another --out")


def _attrs_json(cache: Cache) -> str:
    return json.dumps(cache.attrs, sort_keys=True, default=str)


@register_exporter("h5")
def export_h5(cache: Cache, out: Path) -> Path:
    """HDF5: pooled/<stat> [n_layers, n_rows, dim] (stored dtype), done, n_frames, manifest/<column>,
    failures/<column>; attrs hold every cache attr (JSON for nested values) plus ``cltm_attrs_json``."""
    import h5py

    with h5py.File(out, "w") as f:
        for key, value in cache.attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        f.attrs["cltm_attrs_json"] = _attrs_json(cache)
        for stat in cache.pooling:
            arr = cache.array(f"pooled/{stat}")
            ds = f.create_dataset(
                f"pooled/{stat}",
                shape=arr.shape,
                dtype=np.dtype(str(arr.dtype)),
                chunks=(1, min(cache.chunk_rows, max(cache.n_rows, 1)), cache.dim),
            )
            for layer in range(cache.n_layers):  # one layer at a time: bounded memory for big caches
                ds[layer] = np.asarray(arr[layer])
        f.create_dataset("done", data=cache.done)
        f.create_dataset("n_frames", data=cache.n_frames)
        _write_table(f.create_group("manifest"), cache.manifest)
        _write_table(f.create_group("failures"), cache.failures)
    return out


def _write_table(group: Any, table: pl.DataFrame) -> None:
    import h5py

    for name in table.columns:
        col = table[name]
        if col.dtype.is_numeric() or col.dtype == pl.Boolean:
            group.create_dataset(name, data=col.fill_null(np.nan if col.dtype.is_float() else 0).to_numpy())
        else:
            values = ["" if v is None else str(v) for v in col.to_list()]
            group.create_dataset(name, data=values, dtype=h5py.string_dtype("utf-8"))


@register_exporter("npz")
def export_npz(cache: Cache, out: Path) -> Path:
    """NumPy .npz: <stat> [n_layers, n_rows, dim] float32, done, n_frames, utt_id, attrs_json."""
    arrays = {stat: cache.to_numpy(stat) for stat in cache.pooling}
    with open(out, "wb") as fh:  # a file handle: savez would append .npz to a temporary name
        np.savez(
            fh,
            **arrays,
            done=cache.done,
            n_frames=cache.n_frames,
            utt_id=np.array(cache.manifest["utt_id"].cast(pl.Utf8).to_list()),
            attrs_json=np.array(_attrs_json(cache)),
        )
    return out
