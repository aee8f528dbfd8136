"""The cache without a model: writes/reads against plain numpy arrays, verify, export, race-safe create."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cltm.cli import app
from cltm.store import Cache, CacheError, CacheMismatchError, open_or_create
from cltm.store.tools import EXPORTERS, cache_info, export_cache, verify_cache

N_LAYERS, N_ROWS, DIM = 3, 23, 8


def _manifest(n=N_ROWS):
    return pl.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(n)],
            "path": [f"/data/u{i}.wav" for i in range(n)],
            "language": ["en"] * n,
            "duration": [1.5] * n,
        }
    )


def _filled_cache(path, rng, *, dtype="float16", done_rows=None):
    cache = Cache.create(
        path,
        manifest=_manifest(),
        n_layers=N_LAYERS,
        dim=DIM,
        chunk_rows=5,
        dtype=dtype,
        attrs={"model_id": "m", "manifest_hash": None},
    )
    mean = rng.standard_normal((N_LAYERS, N_ROWS, DIM)).astype(np.float32)
    std = np.abs(rng.standard_normal((N_LAYERS, N_ROWS, DIM))).astype(np.float32)
    rows = np.arange(N_ROWS) if done_rows is None else np.asarray(done_rows)
    # written in two scattered batches, like length-sorted extraction does
    order = rng.permutation(rows)
    for part in np.array_split(order, 2):
        cache.write_rows(part, {"mean": mean[:, part], "std": std[:, part]}, np.full(len(part), 7))
    return cache, mean, std


def test_read_layer_equals_the_written_array(tmp_path):
    rng = np.random.default_rng(0)
    cache, mean, std = _filled_cache(tmp_path / "c.zarr", rng)
    cache = Cache.open(tmp_path / "c.zarr")
    assert (cache.n_layers, cache.n_rows, cache.dim, cache.n_chunks) == (N_LAYERS, N_ROWS, DIM, 5)
    expected16 = mean.astype(np.float16).astype(np.float32)  # float16 storage by default
    for layer in range(N_LAYERS):
        got = cache.read_layer(layer)
        assert got.dtype == np.float32 and got.shape == (N_ROWS, DIM)
        np.testing.assert_array_equal(got, expected16[layer])
    # any rows, any order, repeats, negative indices: the same as numpy fancy indexing
    for rows in ([3], [22, 0, 5, 5, 11], list(range(0, 23, 2)), [-1, 4]):
        np.testing.assert_array_equal(cache.read_layer(1, rows), expected16[1][rows])
    np.testing.assert_array_equal(
        cache.read_layer(-1, stat="std"), std.astype(np.float16).astype(np.float32)[-1]
    )
    np.testing.assert_array_equal(cache.to_numpy(), expected16)
    assert cache.done.all() and (cache.n_frames == 7).all()
    with pytest.raises(IndexError):
        cache.read_layer(N_LAYERS)
    with pytest.raises(IndexError):
        cache.read_layer(0, [N_ROWS])


def test_float32_cache_and_rows_not_done(tmp_path):
    rng = np.random.default_rng(1)
    cache, mean, _ = _filled_cache(tmp_path / "c.zarr", rng, dtype="float32", done_rows=[1, 2, 9, 20])
    np.testing.assert_array_equal(np.flatnonzero(cache.done), [1, 2, 9, 20])
    np.testing.assert_array_equal(cache.read_layer(2, [9, 1]), mean[2][[9, 1]])
    np.testing.assert_array_equal(cache.read_layer(2, [0]), np.zeros((1, DIM), np.float32))


def test_manifest_failures_and_missing_durations(tmp_path):
    manifest = _manifest().with_columns(pl.lit(None, dtype=pl.Float64).alias("duration"))
    cache = Cache.create(
        tmp_path / "c.zarr", manifest=manifest, n_layers=1, dim=2, pooling=("mean",), chunk_rows=4
    )
    cache.write_rows(np.array([2]), {"mean": np.ones((1, 1, 2))}, np.array([3]), seconds=np.array([2.25]))
    cache.write_failures(
        pl.DataFrame({"utt_id": ["u5"], "stage": ["decode"], "error": ["file not found"]}), "w0"
    )
    cache.write_failures(pl.DataFrame({"utt_id": ["u2"], "stage": ["decode"], "error": ["old"]}), "w1")
    reopened = Cache.open(tmp_path / "c.zarr")
    durations = reopened.manifest["duration"].to_list()
    assert durations[2] == 2.25 and durations[0] is None
    # u2 failed once but is done now: only u5 is a failure
    assert reopened.failures.to_dicts() == [{"utt_id": "u5", "stage": "decode", "error": "file not found"}]
    with pytest.raises(CacheError, match="stat"):
        reopened.read_layer(0, stat="std")


def test_open_refuses_what_is_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="not an embedding cache"):
        Cache.open(tmp_path)
    with pytest.raises(CacheError, match="pooling"):
        Cache.create(tmp_path / "x.zarr", manifest=_manifest(), n_layers=1, dim=2, pooling=("max",))


def test_concurrent_creators_get_one_cache_and_mismatch_is_named(tmp_path):
    path = tmp_path / "c.zarr"
    attrs = {"model_id": "m", "revision": "r1", "config_hash": "abc", "manifest_hash": "h"}
    results, errors = [], []

    def create():
        try:
            results.append(
                open_or_create(path, manifest=_manifest(), n_layers=2, dim=4, attrs=attrs, chunk_rows=5)
            )
        except Exception as err:  # pragma: no cover - the assertion below shows it
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]  # no temp dirs left behind
    with pytest.raises(CacheMismatchError) as err:
        open_or_create(path, manifest=_manifest(), n_layers=2, dim=4, attrs={**attrs, "revision": "r2"})
    assert err.value.differences == {"revision": ("r1", "r2")}
    rebuilt = open_or_create(
        path, manifest=_manifest(), n_layers=2, dim=4, attrs={**attrs, "revision": "r2"}, force=True
    )
    assert rebuilt.attrs["revision"] == "r2"


def test_verify_catches_a_deleted_chunk_and_bad_values(tmp_path):
    rng = np.random.default_rng(2)
    cache, _, _ = _filled_cache(tmp_path / "c.zarr", rng)
    assert verify_cache(cache).ok
    (tmp_path / "c.zarr" / "pooled" / "mean" / "c" / "1" / "2" / "0").unlink()  # layer 1, rows 10-14
    report = verify_cache(Cache.open(tmp_path / "c.zarr"))
    assert not report.ok
    assert any("pooled/mean/c/1/2/0 missing" in p and "10 (u10)" in p for p in report.problems)
    result = CliRunner().invoke(app, ["store", "verify", str(tmp_path / "c.zarr")])
    assert result.exit_code == 1 and "pooled/mean/c/1/2/0" in result.output
    assert report.bad_rows == set(range(10, 15))
    repaired = CliRunner().invoke(app, ["store", "verify", str(tmp_path / "c.zarr"), "--repair"])
    assert repaired.exit_code == 1 and "5 row(s) marked not done" in repaired.output
    np.testing.assert_array_equal(np.flatnonzero(~Cache.open(tmp_path / "c.zarr").done), np.arange(10, 15))
    assert verify_cache(Cache.open(tmp_path / "c.zarr")).ok  # what is left marked done is sound

    other, _, _ = _filled_cache(tmp_path / "d.zarr", rng)
    other.write_rows(
        np.array([4]),
        {"mean": np.full((N_LAYERS, 1, DIM), np.nan), "std": np.ones((N_LAYERS, 1, DIM))},
        np.array([7]),
    )
    (tmp_path / "d.zarr" / "pooled" / "std" / "c" / "0" / "0" / "0.1234.partial").write_bytes(b"torn")
    report = verify_cache(Cache.open(tmp_path / "d.zarr"))
    assert any("non-finite" in p and "4 (u4)" in p for p in report.problems)
    assert any(".partial" in w for w in report.warnings)


def test_h5_and_npz_export_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    cache, _, _ = _filled_cache(tmp_path / "c.zarr", rng, done_rows=list(range(20)))
    cache.write_failures(pl.DataFrame({"utt_id": ["u21"], "stage": ["decode"], "error": ["empty"]}), "w0")
    result = CliRunner().invoke(
        app, ["store", "export", str(tmp_path / "c.zarr"), "--format", "h5", "--out", str(tmp_path / "c.h5")]
    )
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "c.h5") as f:
        for stat in ("mean", "std"):
            for layer in range(N_LAYERS):
                np.testing.assert_array_equal(
                    f[f"pooled/{stat}"][layer].astype(np.float32), cache.read_layer(layer, stat=stat)
                )
        np.testing.assert_array_equal(f["done"][:], cache.done)
        np.testing.assert_array_equal(f["n_frames"][:], cache.n_frames)
        assert [x.decode() for x in f["manifest/utt_id"][:]] == cache.manifest["utt_id"].to_list()
        assert [x.decode() for x in f["failures/utt_id"][:]] == ["u21"]
        assert f.attrs["model_id"] == "m" and f.attrs["n_layers"] == N_LAYERS
    path = export_cache(cache, tmp_path / "c.npz", "npz")
    with np.load(path) as z:
        np.testing.assert_array_equal(z["mean"], cache.to_numpy())
        assert z["utt_id"].tolist() == cache.manifest["utt_id"].to_list()
    assert {"h5", "npz"} <= set(EXPORTERS)
    bad = CliRunner().invoke(
        app, ["store", "export", str(tmp_path / "c.zarr"), "--format", "xyz", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code != 0 and "h5" in bad.output


def test_info_counts_rows_and_bytes(tmp_path):
    rng = np.random.default_rng(4)
    cache, _, _ = _filled_cache(tmp_path / "c.zarr", rng, done_rows=list(range(10)))
    info = cache_info(cache)
    assert (info["rows"], info["done"], info["failed"], info["pending"]) == (N_ROWS, 10, 0, N_ROWS - 10)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c.zarr").rglob("*") if p.is_file())
    assert info["bytes_on_disk"] == on_disk
    assert info["audio_hours_done"] == pytest.approx(10 * 1.5 / 3600)
    assert info["bytes_per_audio_hour"] == pytest.approx(on_disk / (10 * 1.5 / 3600))
    result = CliRunner().invoke(app, ["store", "info", str(tmp_path / "c.zarr")])
    assert result.exit_code == 0 and "bytes per audio hour" in result.output
    missing = CliRunner().invoke(app, ["store", "info", str(tmp_path / "nope")], env={"COLUMNS": "400"})
    assert missing.exit_code != 0 and "no such cache" in missing.output
