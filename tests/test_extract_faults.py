"""Crash safety and sharding with real processes: SIGKILL mid-run then resume; two shards, one cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from cltm.extract import BatchSettings, ExtractSettings, OutputSettings, build_tiny_model, extract
from cltm.store import Cache
from cltm.store.tools import verify_cache

SR = 16000
N_UTTS = 24
CLI = str(Path(sys.executable).parent / "cltm")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SERIAL = ExtractSettings(batching=BatchSettings(num_workers=0))
CHUNKS_OF_3 = ExtractSettings(batching=BatchSettings(num_workers=0), output=OutputSettings(chunk_rows=3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(7)
    rows = []
    for i in range(N_UTTS):
        wave = 0.2 * rng.standard_normal(int(rng.uniform(0.4, 1.4) * SR))
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), SR)
        rows.append({"utt_id": f"u{i:02d}", "path": f"u{i}.wav", "language": "en"})
    pl.DataFrame(rows).write_parquet(root / "manifest.parquet")
    model = build_tiny_model(root / "model", norm="layer", seed=0)
    reference = root / "reference.zarr"  # the uninterrupted, single-process run
    extract(root / "manifest.parquet", model, reference, settings=CHUNKS_OF_3)
    return root, model, reference


def _assert_same_cache(a: Cache, b: Cache) -> None:
    np.testing.assert_array_equal(a.done, b.done)
    np.testing.assert_array_equal(a.n_frames, b.n_frames)
    for stat in ("mean", "std"):
        for layer in range(a.n_layers):
            # batches differ between runs; the layer-norm model is batch-invariant up to float16 rounding
            np.testing.assert_allclose(
                a.read_layer(layer, stat=stat), b.read_layer(layer, stat=stat), rtol=2e-3, atol=2e-3
            )


_SLOW_CHILD = """
import time
import cltm.extract.runner as runner
from cltm.extract.settings import BatchSettings, ExtractSettings, OutputSettings

_real = runner.pool_batch

def slow_pool_batch(*args, **kwargs):  # slow the forward down so the parent can kill us mid-run
    time.sleep(0.3)
    return _real(*args, **kwargs)

runner.pool_batch = slow_pool_batch
settings = ExtractSettings(
    batching=BatchSettings(num_workers=0, batch_seconds=1.5),
    output=OutputSettings(chunk_rows=3, window_chunks=1, flush_seconds=0.0),
)
runner.extract({manifest!r}, {model!r}, {out!r}, settings=settings)
"""


def _child_script(tmp_path: Path, template: str, root: Path, model, out: Path) -> Path:
    """A child process script extracting the test corpus into ``out`` (what it patches is in ``template``)."""
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(template).format(
            manifest=str(root / "manifest.parquet"), model=str(model), out=str(out)
        )
    )
    return script


def _done_count(path: Path) -> int:
    try:
        return int(Cache.open(path).done.sum())
    except Exception:  # not created yet
        return 0


def test_sigkill_never_corrupts_and_resume_equals_an_uninterrupted_run(tmp_path, setup):
    root, model, reference = setup
    out = tmp_path / "killed.zarr"
    script = _child_script(tmp_path, _SLOW_CHILD, root, model, out)
    ref = Cache.open(reference)
    proc = subprocess.Popen([sys.executable, str(script)], env=ENV)
    deadline = time.monotonic() + 120
    while _done_count(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # land the kill somewhere inside the next batch or write, not right after a flush
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = Cache.open(out)
    done = cache.done
    n_killed = int(done.sum())
    assert 0 < n_killed < N_UTTS, f"kill landed outside the run (done={n_killed})"
    report = verify_cache(cache)
    assert report.ok, report.problems
    # every row marked done holds exactly the data of the uninterrupted run
    for layer in (0, cache.n_layers - 1):
        np.testing.assert_allclose(
            cache.read_layer(layer, np.flatnonzero(done)),
            ref.read_layer(layer, np.flatnonzero(done)),
            rtol=2e-3,
            atol=2e-3,
        )
    summary = extract(root / "manifest.parquet", model, out, settings=SERIAL)
    # a batch journaled but not yet flushed when the kill landed is replayed, not recomputed: it counts as
    # skipped too (the kill's timing decides whether there is one)
    assert summary.n_skipped >= n_killed and summary.n_skipped + summary.n_done_now == N_UTTS
    _assert_same_cache(Cache.open(out), ref)


_DIE_AFTER_TWO_JOURNALED_BATCHES = """
import os
import signal
import cltm.extract.runner as runner
from cltm.extract.settings import BatchSettings, ExtractSettings, OutputSettings

_real = runner.write_journal
written = []

def write_then_die(*args, **kwargs):  # SIGKILL right after the 2nd batch is journaled, before any flush
    written.append(_real(*args, **kwargs))
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return written[-1]

runner.write_journal = write_then_die
settings = ExtractSettings(
    batching=BatchSettings(num_workers=0, batch_seconds=1.5),
    output=OutputSettings(chunk_rows=3, window_chunks=100, flush_seconds=1e9),
)
runner.extract({manifest!r}, {model!r}, {out!r}, settings=settings)
"""


def test_a_kill_loses_only_the_batch_in_flight(tmp_path, setup):
    """One window and no timed flush: nothing has reached the chunk files when the process dies, yet every
    finished batch is kept (journal) and the resumed run does not recompute it."""
    root, model, reference = setup
    out = tmp_path / "journaled.zarr"
    script = _child_script(tmp_path, _DIE_AFTER_TWO_JOURNALED_BATCHES, root, model, out)
    proc = subprocess.run([sys.executable, str(script)], env=ENV, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    journal = sorted((out / "journal").rglob("*.npz"))
    assert len(journal) == 2
    assert int(Cache.open(out).done.sum()) == 0  # no flush happened: only the journal holds the work
    journaled_rows = np.concatenate([np.load(p)["rows"] for p in journal])
    pending = verify_cache(Cache.open(out))
    assert pending.ok and any("2 journaled batch(es)" in w for w in pending.warnings)
    summary = extract(root / "manifest.parquet", model, out, settings=SERIAL)
    assert summary.n_skipped == len(journaled_rows) > 0  # replayed, not recomputed
    assert summary.n_done_now == N_UTTS - len(journaled_rows)
    assert not list((out / "journal").rglob("*.npz"))
    cache = Cache.open(out)
    assert verify_cache(cache).ok
    _assert_same_cache(cache, Cache.open(reference))


def test_two_shards_in_two_processes_build_one_complete_cache(tmp_path, setup):
    root, model, reference = setup
    out = tmp_path / "sharded.zarr"
    base = [
        CLI,
        "extract",
        "--manifest",
        str(root / "manifest.parquet"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--chunk-rows",
        "3",
        "-q",
    ]
    # shard 1 in a child process, told the way torchrun does it (RANK / WORLD_SIZE); shard 0 here, at the
    # same time (two processes racing to create the cache and writing their own chunks)
    p1 = subprocess.Popen(
        base, env={**ENV, "RANK": "1", "WORLD_SIZE": "2"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    s0 = extract(root / "manifest.parquet", model, out, settings=replace(CHUNKS_OF_3, shard="0/2"))
    out1 = p1.communicate(timeout=300)[0].decode()
    assert p1.returncode == 0, out1
    assert "shard 1/2" in out1
    # chunks of 3 rows dealt round-robin: shard 0 owns chunks 0,2,4,6 (12 rows), shard 1 chunks 1,3,5,7
    assert s0.n_done_now == 12 and s0.shard == (0, 2)
    assert int(out1.split(" rows extracted")[0].split()[-1]) == 12
    cache = Cache.open(out)
    assert verify_cache(cache).ok
    _assert_same_cache(cache, Cache.open(reference))


def test_bad_shard_specs_are_rejected():
    from cltm.extract.runner import owned_chunks, parse_shard

    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    chunks = [set(owned_chunks(10, (k, 3)).tolist()) for k in range(3)]
    assert set().union(*chunks) == set(range(10)) and sum(len(c) for c in chunks) == 10
