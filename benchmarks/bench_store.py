"""Cache read speed vs a .npy memmap, and bytes on disk per hour of audio.

    python benchmarks/bench_store.py [--rows 100000] [--dim 768] [--repeats 5] [--dir /tmp]

1. ``Cache.read_layer(layer)`` for rows x dim (float16 on disk -> float32 in memory) against the naive way:
   the same float16 array saved with ``np.save`` and read through ``np.load(mmap_mode="r")`` then converted to
   float32. Both warm (page cache), best of ``--repeats``; prints both times and the ratio (target <= 2x).
2. Bytes on disk per hour of audio, measured on real caches with the base (13 x 768) and large (25 x 1024)
   shapes, pooled mean+std, float16, for 5-second utterances (720 per hour), plus what frame-level storage
   of one layer at 50 frames/s would cost.
3. The share of ``read_layer`` spent checking that no chunk file of done rows is missing (printed in 1).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from cltm.store import Cache


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _manifest(n: int) -> pl.DataFrame:
    return pl.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "path": ["x.wav"] * n, "duration": [5.0] * n})


def bench_read(root: Path, rows: int, dim: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    cache = Cache.create(
        root / "read.zarr", manifest=_manifest(rows), n_layers=1, dim=dim, pooling=("mean",), attrs={}
    )
    cache.write_rows(np.arange(rows), {"mean": data[None]}, np.ones(rows, dtype=np.int32))
    np.save(root / "layer.npy", data)

    def zarr_read():
        return cache.read_layer(0)

    def memmap_read():
        return np.asarray(np.load(root / "layer.npy", mmap_mode="r"), dtype=np.float32)

    assert np.array_equal(zarr_read(), memmap_read())
    zarr_read(), memmap_read()  # warm the page cache
    t_zarr, t_mm = _best(zarr_read, repeats), _best(memmap_read, repeats)
    mb = rows * dim * 4 / 2**20
    print(f"read one layer, {rows:,} x {dim} float16 -> float32 ({mb:.0f} MiB out), warm, best of {repeats}")
    print(f"  Cache.read_layer : {t_zarr * 1e3:8.1f} ms  ({mb / t_zarr:,.0f} MiB/s)")
    print(f"  .npy memmap      : {t_mm * 1e3:8.1f} ms  ({mb / t_mm:,.0f} MiB/s)")
    print(f"  ratio cache/memmap: {t_zarr / t_mm:.2f}x  (target <= 2x)")
    # read_layer checks that every chunk holding done rows has its file (a missing one would read as zeros)
    chunks = np.arange(cache.n_chunks)
    t_check = _best(lambda: cache.missing_chunks(0, chunks), repeats)
    print(
        f"  of which the missing-chunk check ({cache.n_chunks} stat calls): {t_check * 1e3:.2f} ms "
        f"({100 * t_check / t_zarr:.2f}% of read_layer)"
    )
    # a probe-sized random subset (10% of rows)
    subset = np.sort(rng.choice(rows, rows // 10, replace=False))
    t_sub = _best(lambda: cache.read_layer(0, subset), repeats)
    t_sub_mm = _best(
        lambda: np.asarray(np.load(root / "layer.npy", mmap_mode="r")[subset], np.float32), repeats
    )
    print(
        f"  10% random rows  : cache {t_sub * 1e3:.1f} ms vs memmap {t_sub_mm * 1e3:.1f} ms "
        f"({t_sub / t_sub_mm:.2f}x)"
    )


def bench_bytes(root: Path) -> None:
    utts_per_hour = 3600 / 5.0
    n = 2000
    print("bytes on disk per hour of audio (pooled mean+std, float16, 5 s utterances = 720/h):")
    for name, layers, dim in (("base", 13, 768), ("large", 25, 1024)):
        path = root / f"{name}.zarr"
        cache = Cache.create(path, manifest=_manifest(n), n_layers=layers, dim=dim, attrs={})
        stats = np.random.default_rng(1).standard_normal((layers, n, dim)).astype(np.float32)
        cache.write_rows(np.arange(n), {"mean": stats, "std": np.abs(stats)}, np.full(n, 250))
        per_utt = cache.disk_bytes() / n
        frames_layer_hour = 50 * 3600 * dim * 2
        print(
            f"  {name:5s} ({layers} x {dim}): {per_utt / 1024:.1f} KiB/utt -> "
            f"{per_utt * utts_per_hour / 2**20:.1f} "
            f"MiB per audio hour, measured on {n} rows; frame-level, one layer at 50 frames/s: "
            f"{frames_layer_hour / 2**20:.0f} MiB per audio hour"
        )
        shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    try:
        bench_read(root, args.rows, args.dim, args.repeats)
        bench_bytes(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
