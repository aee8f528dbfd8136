"""Issue 15, storage side: nothing lost, nothing silently wrong.

One regression test per defect, built from its reproduction: --force deleting foreign directories, exports
over existing files, missing chunks reading as zeros, dtype/frames not in the identity, verify crashing or
passing flipped bytes, no lock on --out, truncated audio, all-zero rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from cltm.extract import (
    BatchSettings,
    ExtractSettings,
    ModelSettings,
    OutputSettings,
    build_tiny_model,
    extract,
)
from cltm.store import Cache, CacheError, CacheMismatchError, open_or_create
from cltm.store.checksums import read_checksums
from cltm.store.lock import CacheLockedError, shard_lock
from cltm.store.tools import export_cache, verify_cache, verify_path

SR = 16000
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _corpus(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wave = (0.2 * rng.standard_normal(int(rng.uniform(0.3, 0.6) * SR))).astype(np.float32)
        sf.write(root / f"u{i}.wav", wave, SR)
        rows.append({"utt_id": f"u{i}", "path": f"u{i}.wav", "language": "en"})
    pl.DataFrame(rows).write_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


def _fbank(manifest, out, *, dtype="float32", shard=None, max_batches=None, **output):
    """An fbank extraction with test-sized settings; ``output``: OutputSettings fields to override."""
    settings = ExtractSettings(
        model=ModelSettings(dtype=dtype),
        batching=BatchSettings(num_workers=0),
        output=OutputSettings(**{"chunk_rows": 2, "pool": ("mean",), **output}),
        shard=shard,
    )
    return extract(manifest, "fbank", out, settings=settings, max_batches=max_batches)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small_cache(
    path: Path, n_rows: int = 10, n_layers: int = 2, dim: int = 4, chunk_rows: int = 3, seed: int = 0
):
    manifest = pl.DataFrame(
        {"utt_id": [f"u{i}" for i in range(n_rows)], "path": ["x.wav"] * n_rows, "language": ["en"] * n_rows}
    )
    cache = Cache.create(path, manifest=manifest, n_layers=n_layers, dim=dim, chunk_rows=chunk_rows)
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((n_layers, n_rows, dim)).astype(np.float32)
    std = np.abs(rng.standard_normal((n_layers, n_rows, dim))).astype(np.float32)
    return cache, mean, std


# ----------------------------------------------------------------------------------------------- item 1
def test_force_deletes_only_a_provable_cache(tmp_path):
    manifest = _corpus(tmp_path)
    before = _snapshot(tmp_path)
    # the reproduction: --force --out . (the corpus directory) must not delete the corpus
    with pytest.raises(CacheError, match="not a cltm cache"):
        _fbank(manifest, tmp_path, force=True)
    assert _snapshot(tmp_path) == before
    # a real cache of another setting is rebuilt with --force ...
    _fbank(manifest, tmp_path / "c.zarr", cache_dtype="float16")
    with pytest.raises(CacheMismatchError, match="dtype"):
        _fbank(manifest, tmp_path / "c.zarr", cache_dtype="float32")
    _fbank(manifest, tmp_path / "c.zarr", cache_dtype="float32", force=True)
    assert Cache.open(tmp_path / "c.zarr").attrs["dtype"] == "float32"
    # ... but not when the user put a file of their own into it
    (tmp_path / "c.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="notes.txt"):
        _fbank(manifest, tmp_path / "c.zarr", cache_dtype="float16", force=True)
    assert (tmp_path / "c.zarr" / "notes.txt").read_text() == "mine"


def test_an_empty_directory_is_a_new_cache_and_leftovers_are_named(tmp_path):
    manifest = _corpus(tmp_path)
    (tmp_path / "feats.zarr").mkdir()  # `mkdir feats.zarr` first, as many users do
    summary = _fbank(manifest, tmp_path / "feats.zarr")
    assert summary.n_done_now == 6 and Cache.open(tmp_path / "feats.zarr").done.all()
    # a directory left holding only a journal (a deleted cache) is named as such, not "not a cache"
    left = tmp_path / "left.zarr"
    (left / "journal" / "shard-0-of-1").mkdir(parents=True)
    (left / "journal" / "shard-0-of-1" / "000000000.npz").write_bytes(b"x")
    with pytest.raises(CacheError, match="leftovers of a deleted cltm cache.*--force"):
        _fbank(manifest, left)
    assert _fbank(manifest, left, force=True).n_done_now == 6


def test_export_refuses_existing_files_and_paths_inside_a_cache(tmp_path):
    manifest = _corpus(tmp_path)
    _fbank(manifest, tmp_path / "c.zarr")
    cache = Cache.open(tmp_path / "c.zarr")
    zarr_json = (tmp_path / "c.zarr" / "zarr.json").read_bytes()
    with pytest.raises(CacheError, match="inside the cache"):
        export_cache(cache, tmp_path / "c.zarr" / "zarr.json", "h5", force=True)
    assert (tmp_path / "c.zarr" / "zarr.json").read_bytes() == zarr_json
    target = tmp_path / "out.h5"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        export_cache(cache, target, "h5")
    assert target.read_bytes() == b"precious"
    export_cache(cache, target, "h5", force=True)
    import h5py

    with h5py.File(target) as f:
        np.testing.assert_array_equal(f["pooled/mean"][0], cache.read_layer(0).astype(np.float16))


def test_export_of_an_empty_cache_is_a_message(tmp_path):
    empty = pl.DataFrame(schema={"utt_id": pl.Utf8, "path": pl.Utf8, "language": pl.Utf8})
    cache = Cache.create(tmp_path / "e.zarr", manifest=empty, n_layers=1, dim=3)
    with pytest.raises(CacheError, match="no rows"):
        export_cache(cache, tmp_path / "e.h5", "h5")
    assert not (tmp_path / "e.h5").exists()


# ----------------------------------------------------------------------------------------------- item 3
def test_read_layer_refuses_a_missing_chunk_of_done_rows(tmp_path):
    cache, mean, std = _small_cache(tmp_path / "c.zarr")
    done = np.array([0, 1, 2, 4, 7])  # chunk 3 (row 9) stays empty: its file may be absent
    cache.write_rows(done, {"mean": mean[:, done], "std": std[:, done]}, np.full(done.size, 5))
    cache = Cache.open(tmp_path / "c.zarr")
    expected = np.zeros_like(mean)
    expected[:, done] = mean[:, done].astype(np.float16)
    for layer in range(2):  # the slow, obvious reference: what was written, zeros elsewhere
        np.testing.assert_array_equal(cache.read_layer(layer), expected[layer])
    (tmp_path / "c.zarr" / "pooled" / "mean" / "c" / "1" / "1" / "0").unlink()  # layer 1, rows 3-5
    with pytest.raises(CacheError, match=r"layer 1 \(mean\).*rows 3-5.*store verify --repair"):
        cache.read_layer(1)
    with pytest.raises(CacheError, match="rows 3-5"):
        cache.read_layer(1, rows=[0, 4])
    np.testing.assert_array_equal(cache.read_layer(1, rows=[0, 7]), expected[1, [0, 7]])  # other chunks read
    np.testing.assert_array_equal(cache.read_layer(0), expected[0])
    verify = verify_cache(cache)
    assert not verify.ok and {3, 4, 5} & verify.bad_rows == {4}


def test_a_chunk_of_zeros_is_still_written(tmp_path):
    # std of one-frame rows is exactly 0: zarr skips writing fill-value chunks unless told otherwise, and a
    # missing file would then look like lost data
    cache, mean, _ = _small_cache(tmp_path / "c.zarr")
    rows = np.arange(3)
    cache.write_rows(rows, {"mean": mean[:, rows], "std": np.zeros((2, 3, 4))}, np.ones(3))
    assert (tmp_path / "c.zarr" / "pooled" / "std" / "c" / "0" / "0" / "0").is_file()
    assert verify_cache(Cache.open(tmp_path / "c.zarr")).ok


# ----------------------------------------------------------------------------------------------- item 6
def test_compute_dtype_and_frames_layers_are_part_of_the_identity(tmp_path):
    manifest = _corpus(tmp_path)
    _fbank(manifest, tmp_path / "c.zarr", dtype="float32", max_batches=1)
    with pytest.raises(
        CacheMismatchError, match="compute_dtype: cache has 'float32', this run has 'bfloat16'"
    ):
        _fbank(manifest, tmp_path / "c.zarr", dtype="bfloat16")
    _fbank(manifest, tmp_path / "f.zarr", frames_layers=[0], max_batches=1)
    with pytest.raises(CacheMismatchError, match=r"frames_layers: cache has \[0\], this run has \[\]"):
        _fbank(manifest, tmp_path / "f.zarr")
    resumed = _fbank(manifest, tmp_path / "f.zarr", frames_layers=[0])
    assert resumed.n_skipped > 0 and verify_cache(Cache.open(tmp_path / "f.zarr")).ok


# ----------------------------------------------------------------------------------------------- item 7
@pytest.fixture
def written(tmp_path):
    cache, mean, std = _small_cache(tmp_path / "c.zarr", n_rows=9)
    rows = np.arange(9)
    cache.write_rows(rows, {"mean": mean, "std": std}, np.full(9, 5), writer="w0")
    assert verify_cache(Cache.open(tmp_path / "c.zarr")).ok
    return tmp_path / "c.zarr"


def _chunk(path: Path, layer: int, chunk: int) -> Path:
    return path / "pooled" / "mean" / "c" / str(layer) / str(chunk) / "0"


def test_checksums_are_recorded_for_every_chunk_written(written):
    sums = read_checksums(written)
    import zlib

    for layer in range(2):
        for chunk in range(3):
            key = f"pooled/mean/c/{layer}/{chunk}/0"
            assert sums[key] == zlib.crc32(_chunk(written, layer, chunk).read_bytes())


def test_verify_catches_a_flipped_byte(written):
    f = _chunk(written, 1, 2)
    data = bytearray(f.read_bytes())
    data[5] ^= 0x01  # one bit: still a finite float16, so only the checksum can tell
    f.write_bytes(bytes(data))
    report = verify_path(written)
    assert not report.ok and any(
        "pooled/mean/c/1/2/0 does not match the checksum" in p for p in report.problems
    )
    assert report.bad_rows == {6, 7, 8}


def test_verify_catches_swapped_chunks(written):
    a, b = _chunk(written, 0, 0), _chunk(written, 0, 1)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    report = verify_path(written)
    assert sum("does not match the checksum" in p for p in report.problems) == 2


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: _chunk(p, 0, 1).write_bytes(_chunk(p, 0, 1).read_bytes()[:7]), "bytes, expected 24"),
        (lambda p: (p / "zarr.json").write_text("{not json"), "zarr.json cannot be read"),
        (lambda p: (p / "pooled" / "mean" / "zarr.json").unlink(), "missing pooled/mean/zarr.json"),
        (lambda p: (p / "manifest.parquet").unlink(), "missing manifest.parquet"),
        (lambda p: (p / "manifest.parquet").write_bytes(b"PAR1 broken"), "manifest.parquet cannot be read"),
        (lambda p: (p / "done" / "c" / "0").write_bytes(b"x"), "bytes, expected 3|done flags cannot be read"),
    ],
    ids=[
        "truncated-chunk",
        "corrupt-zarr-json",
        "missing-array-metadata",
        "missing-manifest",
        "corrupt-manifest",
        "truncated-done",
    ],
)
def test_verify_reports_damage_instead_of_crashing(written, damage, expected):
    damage(written)
    report = verify_path(written)  # never raises
    assert not report.ok
    assert any(__import__("re").search(expected, p) for p in report.problems), report.problems


# ----------------------------------------------------------------------------------------------- item 8
_HOLD_LOCK = """
import sys, time
from cltm.store.lock import shard_lock
shard_lock(sys.argv[1], "shard-0-of-1").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_writer_does_not_block(tmp_path):
    manifest = _corpus(tmp_path)
    out = tmp_path / "c.zarr"
    _fbank(manifest, out, max_batches=1)
    before = _snapshot(out / "pooled")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD_LOCK), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=f"pid {child.pid} on host .*shard-0-of-1"):
            _fbank(manifest, out)
        # --force beside a running writer: refused, whether the cache matches or would be rebuilt
        with pytest.raises(CacheLockedError, match=f"pid {child.pid}"):
            _fbank(manifest, out, force=True)
        with pytest.raises(CacheLockedError, match=f"refusing --force: .*pid {child.pid}"):
            _fbank(manifest, out, force=True, cache_dtype="float32")
        assert _snapshot(out / "pooled") == before and Cache.open(out).attrs["dtype"] == "float16"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert json.loads((out / "locks" / "shard-0-of-1.lock").read_text())["pid"] == child.pid  # the file stays
    summary = _fbank(manifest, out)  # ... but the lock died with its process
    assert summary.n_skipped > 0 and Cache.open(out).done.all()


def test_two_shards_hold_their_own_locks(tmp_path):
    manifest = _corpus(tmp_path)
    out = tmp_path / "c.zarr"
    _fbank(manifest, out, shard=(0, 2))
    with shard_lock(out, "shard-0-of-2"):  # shard 0 "running": shard 1 may still write its own chunks
        assert _fbank(manifest, out, shard=(1, 2)).n_done_now > 0
        with pytest.raises(CacheLockedError):
            _fbank(manifest, out, shard=(0, 2))


# ---------------------------------------------------------------------------------------------- item 10
def test_truncated_audio_and_segments_past_the_end_are_recorded_failures(tmp_path):
    rng = np.random.default_rng(3)
    wave = (0.2 * rng.standard_normal(54000)).astype(np.float32)  # 3.375 s
    sf.write(tmp_path / "full.wav", wave, SR)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:1000])  # header says 3.375 s
    sf.write(tmp_path / "full.mp3", wave, SR, format="MP3")
    (tmp_path / "cut.mp3").write_bytes((tmp_path / "full.mp3").read_bytes()[:1500])
    rows = [
        ("full", "full.wav", None),
        ("cut", "cut.wav", None),
        ("fullmp3", "full.mp3", None),
        ("cutmp3", "cut.mp3", None),
        ("seg_ok", "full.wav", 3.0),
        ("seg_past", "full.wav", 5.0),
    ]
    pl.DataFrame(
        {
            "utt_id": [r[0] for r in rows],
            "path": [r[1] for r in rows],
            "language": ["en"] * len(rows),
            "start": [None if r[2] is None else 1.0 for r in rows],
            "end": [r[2] for r in rows],
        },
        schema_overrides={"start": pl.Float64, "end": pl.Float64},
    ).write_parquet(tmp_path / "m.parquet")
    summary = _fbank(tmp_path / "m.parquet", tmp_path / "c.zarr")
    errors = dict(zip(summary.failures["utt_id"], summary.failures["error"], strict=True))
    assert set(errors) == {"cut", "cutmp3", "seg_past"}
    assert "truncated file: the header promises 3.375 s, only 0.030 s decode" in errors["cut"]
    assert "truncated" in errors["cutmp3"]
    assert "segment end 5.0 s is past the end of the file (3.375 s)" in errors["seg_past"]
    cache = Cache.open(tmp_path / "c.zarr")
    assert cache.done.tolist() == [True, False, True, False, True, False]
    np.testing.assert_allclose(
        cache.manifest["duration"].to_list()[::4], [3.375, 2.0]
    )  # true decoded seconds


def test_max_seconds_floor_and_empty_manifest(tmp_path):
    manifest = _corpus(tmp_path, n=2)
    with pytest.raises(
        ValueError, match=r"max_seconds: must be a finite number of at least 0\.5.*got 0\.001"
    ):
        extract(
            manifest,
            "fbank",
            tmp_path / "c.zarr",
            settings=ExtractSettings(batching=BatchSettings(max_seconds=0.001)),
        )
    pl.read_parquet(manifest).head(0).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="empty.parquet has no rows"):
        _fbank(tmp_path / "empty.parquet", tmp_path / "e.zarr")
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "e.zarr").exists()


def test_all_zero_rows_are_failures_so_extract_and_verify_agree(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(8000, dtype=np.float32), SR)
    sf.write(
        tmp_path / "noise.wav", (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), SR
    )
    pl.DataFrame(
        {"utt_id": ["silence", "noise"], "path": ["silence.wav", "noise.wav"], "language": ["en", "en"]}
    ).write_parquet(tmp_path / "m.parquet")
    model = build_tiny_model(tmp_path / "model", seed=0)  # zero biases: silence gives all-zero hidden states
    serial = ExtractSettings(batching=BatchSettings(num_workers=0))
    summary = extract(tmp_path / "m.parquet", model, tmp_path / "c.zarr", settings=serial)
    assert summary.n_done_now == 1 and summary.failures["utt_id"].to_list() == ["silence"]
    assert "all-zero pooled mean at layer(s) 0" in summary.failures["error"][0]
    cache = Cache.open(tmp_path / "c.zarr")
    assert cache.done.tolist() == [False, True] and cache.failures["utt_id"].to_list() == ["silence"]
    assert verify_cache(cache).ok  # the same story: one failed row, nothing wrong stored


# ---------------------------------------------------------------------------------------------- item 14
def test_journal_files_are_written_through_the_one_atomic_write(tmp_path, monkeypatch):
    import cltm.extract.runner as runner

    calls = []
    real = runner.atomic_write

    def spy(path, write):
        calls.append(Path(path))
        return real(path, write)

    monkeypatch.setattr(runner, "atomic_write", spy)
    manifest = _corpus(tmp_path)
    _fbank(manifest, tmp_path / "c.zarr")
    assert calls and all(p.parent.name == "shard-0-of-1" and p.suffix == ".npz" for p in calls)
    assert not list((tmp_path / "c.zarr" / "journal").rglob("*.npz"))  # all flushed into the cache


def test_open_or_create_lists_every_difference(tmp_path):
    manifest = pl.DataFrame({"utt_id": ["a"], "path": ["a.wav"], "language": ["en"]})
    open_or_create(
        tmp_path / "c.zarr", manifest=manifest, n_layers=2, dim=3, attrs={"compute_dtype": "float32"}
    )
    with pytest.raises(CacheMismatchError) as info:
        open_or_create(
            tmp_path / "c.zarr",
            manifest=manifest,
            n_layers=3,
            dim=3,
            attrs={"compute_dtype": "float16"},
            frames_layers=[1],
        )
    assert set(info.value.differences) == {"n_layers", "compute_dtype", "frames_layers"}


def test_stale_journal_temp_files_from_a_kill_are_cleaned(tmp_path):
    from cltm.extract.runner import replay_journal

    cache, _, _ = _small_cache(tmp_path / "c.zarr")
    journal = tmp_path / "c.zarr" / "journal" / "shard-0-of-1"
    journal.mkdir(parents=True)
    (journal / ".000000003.npz.123-abcd.partial").write_bytes(b"half")
    assert replay_journal(cache, journal, "shard-0-of-1") == 0
    assert not list(journal.iterdir())


def test_a_second_run_is_refused_and_kill_9_leaves_a_cache_that_verifies_after_resume(tmp_path):
    manifest = _corpus(tmp_path, n=8)
    out = tmp_path / "c.zarr"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            import cltm.extract.runner as runner
            from cltm.extract.settings import BatchSettings, ExtractSettings, OutputSettings
            real = runner.pool_batch
            def slow(*a, **k):
                time.sleep(0.8)
                return real(*a, **k)
            runner.pool_batch = slow
            settings = ExtractSettings(
                batching=BatchSettings(num_workers=0, batch_seconds=0.5),
                output=OutputSettings(chunk_rows=2, window_chunks=1, flush_seconds=0.0, pool=("mean",)),
            )
            runner.extract({str(manifest)!r}, "fbank", {str(out)!r}, settings=settings)
            """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)], env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and read_checksums(out)):
        time.sleep(0.05)
    try:  # the reproduction of two runs on one --out: the second one is refused, naming the first
        with pytest.raises(CacheLockedError, match=f"pid {child.pid}"):
            _fbank(manifest, out, chunk_rows=2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert 0 < Cache.open(out).done.sum() < 8
    report = verify_path(out)
    assert report.ok, report.problems  # a killed run leaves no false problem, at most warnings
    _fbank(manifest, out, chunk_rows=2)
    assert Cache.open(out).done.all() and verify_path(out).ok


def test_a_deleted_chunk_stops_a_probe_and_repair_then_resume_recovers(tmp_path):
    """The reproduction of item 3: `cltm probe` on a cache with a deleted chunk reported F1 0.333, exit 0."""
    from typer.testing import CliRunner

    from cltm.cli import app

    t = np.arange(8000) / SR
    rng = np.random.default_rng(0)
    rows = []
    for gender, f0 in (("female", 220.0), ("male", 110.0)):
        for s in range(4):
            for u in range(3):
                wave = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.05 * s) * t) + 0.05 * rng.standard_normal(t.size)
                name = f"{gender}{s}_{u}"
                sf.write(tmp_path / f"{name}.wav", wave.astype(np.float32), SR)
                split = "test" if s == 3 else "train"
                rows.append(
                    {
                        "utt_id": name,
                        "path": f"{name}.wav",
                        "language": "en",
                        "speaker": f"{gender}{s}",
                        "gender": gender,
                        "split": split,
                    }
                )
    pl.DataFrame(rows).write_parquet(tmp_path / "m.parquet")
    cache = tmp_path / "c.zarr"
    _fbank(tmp_path / "m.parquet", cache, chunk_rows=8)
    probe = ["probe", "--cache", str(cache), "--task", "gender", "--out"]
    ok = CliRunner().invoke(app, [*probe, str(tmp_path / "o1")])
    assert ok.exit_code == 0, ok.output
    before = Cache.open(cache).read_layer(0)
    (cache / "pooled" / "mean" / "c" / "0" / "1" / "0").unlink()
    lost = CliRunner().invoke(app, [*probe, str(tmp_path / "o2")], env={"COLUMNS": "2000"})
    assert lost.exit_code != 0 and "Traceback" not in lost.output
    assert "layer 0 (mean): chunk file(s) missing for done rows 8-15" in lost.output
    assert not (tmp_path / "o2" / "probe.parquet").exists()
    repair = CliRunner().invoke(app, ["store", "verify", str(cache), "--repair"])
    assert repair.exit_code == 1 and "8 row(s) marked not done" in repair.output
    assert _fbank(tmp_path / "m.parquet", cache, chunk_rows=8).n_done_now == 8
    assert verify_path(cache).ok
    again = CliRunner().invoke(app, [*probe, str(tmp_path / "o3")])
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(Cache.open(cache).read_layer(0), before)  # the lost rows, recomputed
    first, last = (pl.read_parquet(tmp_path / d / "probe.parquet")["f1"] for d in ("o1", "o3"))
    assert first.to_list() == last.to_list()
