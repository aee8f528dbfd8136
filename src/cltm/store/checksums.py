"""Per-chunk checksums: recorded when rows are written, checked by ``cltm store verify``.

Zarr stores raw chunk files with no checksum, so a flipped byte or two swapped chunk files read back as
plausible embeddings. After every write the cache reads back the chunk files it touched and records a CRC32
of each in ``CACHE/checksums/<writer>-<time_ns>.parquet`` (key, crc32, time_ns). Each table is written once,
atomically (``cltm.fileio.atomic_write``), by one writer, so shards never share a file; the newest entry of a
key wins when tables are merged. Tables are written after the chunk files and before the rows' ``done``
flags, so a crash between a chunk write and its table can leave a chunk whose bytes are newer than its
checksum, but only while that writer's journal still holds the batch (the next run rewrites both).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from cltm.fileio import write_parquet_atomic

CHECKSUM_DIR = "checksums"
_SCHEMA = {"key": pl.Utf8, "crc32": pl.Int64, "time_ns": pl.Int64}


def file_crc32(path: str | Path) -> int:
    """CRC32 of a file's bytes (fast; catches flipped bytes and, keyed by chunk, swapped files)."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def record_checksums(cache_path: str | Path, keys: Iterable[str], writer: str) -> Path | None:
    """Checksum the chunk files ``keys`` (paths relative to the cache) and write them as one new table."""
    root = Path(cache_path)
    now = time.time_ns()
    rows = [(key, file_crc32(root / key), now) for key in keys if (root / key).is_file()]
    if not rows:
        return None
    table = pl.DataFrame(rows, schema=_SCHEMA, orient="row")
    return write_parquet_atomic(table, root / CHECKSUM_DIR / f"{writer}-{now:020d}.parquet")


def read_checksums(cache_path: str | Path) -> dict[str, int] | None:
    """Key -> newest recorded CRC32; ``None`` when the cache has no checksum tables (an older cltm)."""
    root = Path(cache_path) / CHECKSUM_DIR
    files = sorted(root.glob("*.parquet")) if root.is_dir() else []
    if not files:
        return None
    tables = [pl.read_parquet(f) for f in files]
    merged = pl.concat(tables, how="vertical_relaxed").sort("time_ns").unique("key", keep="last")
    return dict(zip(merged["key"].to_list(), merged["crc32"].to_list(), strict=True))
