"""Cache tools: a summary (info), an integrity check (verify) and exports through a small format registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cltm.store.cache import Cache


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


def _chunk_file(cache: Cache, array: str, *chunk_index: int) -> Path:
    return cache.path.joinpath(*array.split("/"), "c", *map(str, chunk_index))


def _rows_text(rows: np.ndarray, ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"{int(r)} ({ids[int(r)]})" for r in rows[:limit])
    return shown + (f" … and {len(rows) - limit} more" if len(rows) > limit else "")


def verify_cache(cache: Cache) -> VerifyReport:
    """Check that every done row is present, finite and consistent with the manifest.

    Chunk files are checked on disk (Zarr silently reads a missing chunk as zeros, so a deleted file would
    otherwise look like valid all-zero embeddings).
    """
    from cltm.corpus import manifest_hash

    report = VerifyReport()
    attrs = cache.attrs
    stored = pl.read_parquet(cache.path / "manifest.parquet")
    ids = stored["utt_id"].cast(pl.Utf8).to_list()
    if stored.height != cache.n_rows:
        report.problems.append(f"manifest.parquet has {stored.height} rows, the arrays {cache.n_rows}")
        return report
    if stored["utt_id"].n_unique() != stored.height:
        report.problems.append("manifest.parquet has duplicate utt_id values")
    if attrs.get("manifest_hash") and manifest_hash(stored) != attrs["manifest_hash"]:
        report.problems.append("manifest.parquet does not match the manifest hash recorded in the attrs")
    done = cache.done
    n_frames = cache.n_frames
    report.checked_rows = int(done.sum())
    c = cache.chunk_rows
    for chunk in range(cache.n_chunks):
        rows = np.arange(chunk * c, min((chunk + 1) * c, cache.n_rows))
        done_rows = rows[done[rows]]
        if done_rows.size == 0:
            continue
        if not _chunk_file(cache, "n_frames", chunk).exists():
            report.problems.append(f"chunk n_frames/c/{chunk} missing (rows {rows[0]}-{rows[-1]})")
            report.bad_rows.update(done_rows.tolist())
        elif (n_frames[done_rows] <= 0).any():
            bad = done_rows[n_frames[done_rows] <= 0]
            report.problems.append(f"done rows with no frames: {_rows_text(bad, ids)}")
            report.bad_rows.update(bad.tolist())
        for stat in cache.pooling:
            for layer in range(cache.n_layers):
                name = f"pooled/{stat}/c/{layer}/{chunk}/0"
                if not _chunk_file(cache, f"pooled/{stat}", layer, chunk, 0).exists():
                    report.problems.append(
                        f"chunk {name} missing: layer {layer} of done rows {_rows_text(done_rows, ids)}"
                    )
                    report.bad_rows.update(done_rows.tolist())
                    continue
                block = np.asarray(cache.array(f"pooled/{stat}")[layer, done_rows[0] : done_rows[-1] + 1])
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
                    report.problems.append(
                        f"mean layer {layer}: all-zero vectors for done rows "
                        + _rows_text(done_rows[zero], ids)
                    )
                    report.bad_rows.update(done_rows[zero].tolist())
    for layer in attrs.get("frames_layers", []):
        have = np.zeros(cache.n_rows, dtype=bool)
        for name in cache.frame_parts(layer):
            have[np.asarray(cache.array(f"frames/layer_{layer}/{name}/rows")[:])] = True
        lacking = np.flatnonzero(done & ~have)
        if lacking.size:
            report.problems.append(
                f"frame-level layer {layer}: no frames for done rows " + _rows_text(lacking, ids)
            )
            report.bad_rows.update(lacking.tolist())
    failures = cache.failures
    unknown = set(failures["utt_id"].to_list()) - set(ids)
    if unknown:
        report.problems.append(f"failures name utt_ids not in the manifest: {sorted(unknown)[:8]}")
    stray = sorted(str(p.relative_to(cache.path)) for p in cache.path.rglob("*.partial"))
    if stray:
        report.warnings.append(
            f"{len(stray)} temporary file(s) left by an interrupted write (harmless, can be deleted): "
            + ", ".join(stray[:5])
        )
    pending = sorted(cache.path.glob("journal/*/*.npz"))
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


def export_cache(cache: Cache, out: str | Path, format: str = "h5") -> Path:
    """Write the cache to ``out`` in a registered format (``h5``, ``npz``)."""
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; available: {', '.join(sorted(EXPORTERS))}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return EXPORTERS[format](cache, out)


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
    np.savez(
        out,
        **arrays,
        done=cache.done,
        n_frames=cache.n_frames,
        utt_id=np.array(cache.manifest["utt_id"].cast(pl.Utf8).to_list()),
        attrs_json=np.array(_attrs_json(cache)),
    )
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
