"""extract()'s typed settings and progress callback (issue 13 item 7), and `cltm extract` kept as it was."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from cltm.cli import app
from cltm.extract import (
    MIN_MAX_SECONDS,
    BatchSettings,
    ExtractSettings,
    ModelSettings,
    OutputSettings,
    SettingsError,
    extract,
)
from cltm.store import Cache
from cltm.store.tools import verify_cache

SR = 16000


def _corpus(root, n=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wave = (0.2 * rng.standard_normal(int(rng.uniform(0.3, 0.9) * SR))).astype(np.float32)
        sf.write(root / f"u{i}.wav", wave, SR)
        rows.append({"utt_id": f"u{i}", "path": f"u{i}.wav", "language": "en"})
    pl.DataFrame(rows).write_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


def _small(**batching) -> ExtractSettings:
    """fbank, decoding in this process, chunks of 2 rows, batches of about 1 s: several batches."""
    return ExtractSettings(
        batching=BatchSettings(num_workers=0, **{"batch_seconds": 1.0, **batching}),
        output=OutputSettings(chunk_rows=2, pool=("mean",)),
    )


# -------------------------------------------------------------------------------------------- the CLI
# `cltm extract`'s options and defaults before the settings objects (main at 9d7e989): kept as they were
OLD_CLI_DEFAULTS = {
    "--revision": None,
    "--device": "auto",
    "--dtype": "float32",
    "--batch-seconds": 120.0,
    "--num-workers": None,
    "--pool": "mean,std",
    "--frames-layers": None,
    "--trim-silence": False,
    "--max-seconds": 60.0,
    "--strict": False,
    "--force": False,
    "--shard": None,
    "--trust-remote-code": False,
    "--flush-seconds": 60.0,
    "--chunk-rows": 512,
    "--quiet": False,
}


def test_cli_options_and_defaults_are_unchanged_and_are_the_settings_defaults():
    command = typer.main.get_command(app).commands["extract"]
    params = {p.opts[0]: p for p in command.params}
    assert set(params) == {"--manifest", "--model", "--out", *OLD_CLI_DEFAULTS}
    assert all(params[o].required for o in ("--manifest", "--model", "--out"))
    assert {o: params[o].default for o in OLD_CLI_DEFAULTS} == OLD_CLI_DEFAULTS
    assert "-q" in params["--quiet"].opts
    # the library's defaults are the CLI's: a Python run and a CLI run of the same inputs agree
    s = ExtractSettings()
    as_cli = {
        "--revision": s.model.revision,
        "--device": s.model.device,
        "--dtype": s.model.dtype,
        "--batch-seconds": s.batching.batch_seconds,
        "--num-workers": s.batching.num_workers,
        "--pool": ",".join(s.output.pool),
        "--trim-silence": s.batching.trim_silence,
        "--max-seconds": s.batching.max_seconds,
        "--force": s.output.force,
        "--trust-remote-code": s.model.trust_remote_code,
        "--flush-seconds": s.output.flush_seconds,
        "--chunk-rows": s.output.chunk_rows,
    }
    assert as_cli == {o: OLD_CLI_DEFAULTS[o] for o in as_cli}
    assert s.shard is None and s.output.frames_layers == ()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-seconds", "0.001", "--max-seconds: must be a finite number of at least 0.5"),
        ("--max-seconds", "inf", "--max-seconds: must be a finite number"),
        ("--pool", "max", "--pool: use mean, std or both (each once); got 'max'"),
        ("--pool", "mean,mean", "--pool: use mean, std or both (each once); got 'mean,mean'"),
        ("--chunk-rows", "0", "--chunk-rows: must be an integer of at least 1; got 0"),
        ("--device", "tpu", "--device: use one of auto, cpu, cuda or cuda:N; got 'tpu'"),
        ("--dtype", "fp8", "--dtype: use one of float32, float16, bfloat16; got 'fp8'"),
        ("--batch-seconds", "0", "--batch-seconds: must be a finite number greater than 0; got 0.0"),
        ("--num-workers", "-1", "--num-workers: must be an integer of at least 0 or None; got -1"),
        ("--flush-seconds", "-1", "--flush-seconds: must be a number of at least 0; got -1.0"),
        ("--shard", "2/2", "--shard: shard '2/2': need 0 <= k < n"),
        ("--frames-layers", "-1", "--frames-layers: must be a sequence of hidden-state indices >= 0"),
    ],
)
def test_cli_bad_values_name_the_option_and_write_nothing(tmp_path, option, value, message):
    manifest = _corpus(tmp_path, n=2)
    out = tmp_path / "c.zarr"
    args = ["extract", "--manifest", str(manifest), "--model", "fbank", "--out", str(out), option, value]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_draws_the_bar_from_the_callback(tmp_path):
    manifest = _corpus(tmp_path, n=4)
    total = sum(sf.info(tmp_path / f"u{i}.wav").duration for i in range(4))
    args = ["extract", "--manifest", str(manifest), "--model", "fbank", "--out", str(tmp_path / "c.zarr")]
    result = CliRunner().invoke(app, [*args, "--num-workers", "0", "--batch-seconds", "1"])
    assert result.exit_code == 0, result.output
    # the finished bar: all of this run's audio seconds done
    assert re.search(rf"extract.*\b{int(total)}/{int(total)} audio s", result.output), result.output
    quiet = CliRunner().invoke(app, [*args, "-q", "--force", "--num-workers", "0"])
    assert quiet.exit_code == 0 and "audio s" not in quiet.output and "4 rows extracted" in quiet.output


# ------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "build, field, rule",
    [
        (lambda: BatchSettings(max_seconds=0.001), "BatchSettings.max_seconds", "at least 0.5"),
        (lambda: BatchSettings(max_seconds=float("nan")), "BatchSettings.max_seconds", "at least 0.5"),
        (lambda: BatchSettings(batch_seconds=-1), "BatchSettings.batch_seconds", "greater than 0"),
        (lambda: BatchSettings(num_workers=1.5), "BatchSettings.num_workers", "integer of at least 0"),
        (lambda: BatchSettings(num_workers=True), "BatchSettings.num_workers", "integer of at least 0"),
        (lambda: BatchSettings(trim_silence="yes"), "BatchSettings.trim_silence", "True or False"),
        (lambda: ModelSettings(device="gpu"), "ModelSettings.device", "auto, cpu, cuda or cuda:N"),
        (lambda: ModelSettings(dtype="half"), "ModelSettings.dtype", "float32, float16, bfloat16"),
        (lambda: ModelSettings(revision=""), "ModelSettings.revision", "branch, tag or commit"),
        (lambda: ModelSettings(use_attention_mask=1), "ModelSettings.use_attention_mask", "True or False"),
        (lambda: OutputSettings(pool=()), "OutputSettings.pool", "mean, std or both"),
        (lambda: OutputSettings(pool="mean,std"), "OutputSettings.pool", "sequence of statistic names"),
        (lambda: OutputSettings(frames_layers=(1, -2)), "OutputSettings.frames_layers", "indices >= 0"),
        (lambda: OutputSettings(cache_dtype="bfloat16"), "OutputSettings.cache_dtype", "float16, float32"),
        (lambda: OutputSettings(chunk_rows=0), "OutputSettings.chunk_rows", "integer of at least 1"),
        (lambda: OutputSettings(window_chunks=0), "OutputSettings.window_chunks", "integer of at least 1"),
        (lambda: OutputSettings(flush_seconds=-0.5), "OutputSettings.flush_seconds", "at least 0"),
        (lambda: OutputSettings(force=None), "OutputSettings.force", "True or False"),
        (lambda: ExtractSettings(shard="4/4"), "ExtractSettings.shard", "0 <= k < n"),
        (lambda: ExtractSettings(shard=(0, 0)), "ExtractSettings.shard", "0 <= k < n"),
        (
            lambda: ExtractSettings(model="facebook/hubert-base-ls960"),
            "ExtractSettings.model",
            "ModelSettings",
        ),
    ],
)
def test_bad_settings_raise_naming_the_field_and_the_allowed_range(build, field, rule):
    with pytest.raises(SettingsError) as info:
        build()
    assert isinstance(info.value, ValueError)  # what callers already catch
    text = str(info.value)
    assert text.startswith(f"{field}: ") and rule in text and "; got " in text
    assert info.value.field == field.split(".")[1]


def test_settings_are_normalised_and_frozen():
    s = ExtractSettings(
        batching=BatchSettings(batch_seconds=np.float32(2), num_workers=np.int64(1)),
        output=OutputSettings(pool=["std", "mean"], frames_layers=[np.int64(3), 1], chunk_rows=np.int64(4)),
        shard="1/4",
    )
    assert s.shard == (1, 4) and s.output.pool == ("std", "mean") and s.output.frames_layers == (3, 1)
    assert type(s.batching.batch_seconds) is float and type(s.batching.num_workers) is int
    assert type(s.output.chunk_rows) is int and s.batching.max_seconds >= MIN_MAX_SECONDS
    with pytest.raises(AttributeError):
        s.batching.num_workers = 3  # type: ignore[misc]
    assert hash(s) == hash(
        ExtractSettings(**{f: getattr(s, f) for f in ("model", "batching", "output", "shard")})
    )


def test_old_keywords_and_a_bool_progress_are_refused_saying_where_they_went(tmp_path):
    manifest = _corpus(tmp_path, n=2)
    out = tmp_path / "c.zarr"
    with pytest.raises(TypeError, match=r"num_workers= -> settings=ExtractSettings\(batching=BatchSettings"):
        extract(manifest, "fbank", out, num_workers=0)
    with pytest.raises(
        TypeError, match=r"chunk_rows= .*output=OutputSettings.*shard= .*ExtractSettings\(shard"
    ):
        extract(manifest, "fbank", out, chunk_rows=2, shard="0/1")
    with pytest.raises(TypeError, match="progress is a callback"):
        extract(manifest, "fbank", out, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        extract(manifest, "fbank", out, nonsense=1)
    with pytest.raises(ValueError, match="max_batches"):
        extract(manifest, "fbank", out, max_batches=-1)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- progress
def test_progress_callback_counts_audio_seconds_and_nothing_is_drawn(tmp_path, capfd):
    manifest = _corpus(tmp_path)
    seconds = [sf.info(tmp_path / f"u{i}.wav").duration for i in range(8)]
    calls: list[tuple[float, float]] = []
    capfd.readouterr()
    summary = extract(
        manifest, "fbank", tmp_path / "c.zarr", settings=_small(), progress=lambda *a: calls.append(a)
    )
    drawn = capfd.readouterr()
    assert drawn.out == "" and drawn.err == ""  # a library function draws no bar
    assert summary.n_done_now == 8
    totals = {total for _, total in calls}
    assert len(totals) == 1 and totals.pop() == pytest.approx(sum(seconds))
    done = [d for d, _ in calls]
    assert done[0] == 0.0 and done[-1] == calls[-1][1]  # exactly: a bar drawn from it ends full
    assert all(b > a for a, b in zip(done, done[1:], strict=False))  # every batch adds its audio
    assert len(calls) > 3  # one call before the first batch, then one per batch (several batches)
    assert summary.audio_seconds == pytest.approx(sum(seconds), rel=1e-6)
    # resumed with nothing to do: one call, (0, 0)
    again: list[tuple[float, float]] = []
    extract(manifest, "fbank", tmp_path / "c.zarr", settings=_small(), progress=lambda *a: again.append(a))
    assert again == [(0.0, 0.0)]


def test_a_callback_that_raises_stops_the_run_keeping_finished_rows(tmp_path):
    manifest = _corpus(tmp_path)
    out = tmp_path / "c.zarr"
    calls = []

    def stop_after_two_batches(done: float, total: float) -> None:
        calls.append(done)
        if len(calls) == 3:  # (0, total), then two batches
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(manifest, "fbank", out, settings=_small(), progress=stop_after_two_batches)
    kept = int(Cache.open(out).done.sum())
    assert 0 < kept < 8 and verify_cache(Cache.open(out)).ok
    resumed = extract(manifest, "fbank", out, settings=_small())
    assert resumed.n_skipped == kept and resumed.n_done_now == 8 - kept
    reference = extract(manifest, "fbank", tmp_path / "ref.zarr", settings=_small())
    assert reference.n_done_now == 8
    np.testing.assert_array_equal(
        Cache.open(out).read_layer(0), Cache.open(tmp_path / "ref.zarr").read_layer(0)
    )
