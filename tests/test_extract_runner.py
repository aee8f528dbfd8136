"""The extraction runner against HF's own hidden states, one utterance at a time (the slow, obvious way)."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import soxr
import torch
from transformers import AutoModel, Wav2Vec2FeatureExtractor
from typer.testing import CliRunner

from cltm.cli import app
from cltm.extract import BatchSettings, ExtractSettings, OutputSettings, build_tiny_model, extract
from cltm.store import Cache, CacheMismatchError
from cltm.store.tools import verify_cache

SR = 16000
SERIAL = ExtractSettings(batching=BatchSettings(num_workers=0))  # decode in this process


def _write_corpus(root, n=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        n_samples = int(rng.uniform(0.3, 2.4) * SR)
        t = np.arange(n_samples) / SR
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(90, 300) * t) + 0.05 * rng.standard_normal(n_samples)
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), SR)
        rows.append({"utt_id": f"u{i}", "path": f"u{i}.wav", "language": "en", "speaker": f"s{i % 3}"})
    pl.DataFrame(rows).write_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "layer": build_tiny_model(root / "layer", norm="layer", seed=0),
        "group": build_tiny_model(root / "group", norm="group", seed=0),
        "other": build_tiny_model(root / "other", norm="layer", seed=0, hidden_size=48),
    }


def _reference_stats(model_dir, wave):
    """HF's own path for one file alone: feature extractor, model, all hidden states; mean/std over frames."""
    fe = Wav2Vec2FeatureExtractor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    inputs = fe(wave, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    frames = [h[0].numpy().astype(np.float64) for h in hidden]
    return np.stack([f.mean(0) for f in frames]), np.stack([f.std(0) for f in frames]), frames


def _load(path):
    wave, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return wave


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_pooled_stats_equal_hf_hidden_states_of_each_file_alone(tmp_path, corpus, models, norm):
    out = tmp_path / "c.zarr"
    summary = extract(
        corpus,
        models[norm],
        out,
        settings=ExtractSettings(
            batching=BatchSettings(batch_seconds=30, num_workers=0),
            output=OutputSettings(cache_dtype="float32", chunk_rows=4),
        ),
    )
    assert summary.n_done_now == 10 and summary.n_failed == 0
    cache = Cache.open(out)
    assert cache.done.all() and cache.n_layers == 4 and cache.dim == 32
    assert cache.manifest["utt_id"].to_list() == [f"u{i}" for i in range(10)]  # cache order = manifest order
    for row in range(10):
        ref_mean, ref_std, frames = _reference_stats(models[norm], _load(corpus.parent / f"u{row}.wav"))
        got_mean = np.stack([cache.read_layer(layer, [row])[0] for layer in range(4)])
        got_std = np.stack([cache.read_layer(layer, [row], stat="std")[0] for layer in range(4)])
        # batched (10 files of 0.3-2.4 s padded together) equals single-file within float32 tolerance,
        # for the group-norm model too (its CNN runs on each file unpadded)
        np.testing.assert_allclose(got_mean, ref_mean, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(got_std, ref_std, rtol=1e-4, atol=2e-5)
        assert cache.n_frames[row] == len(frames[0])
    # durations missing from the manifest are filled from the audio
    expected = [len(_load(corpus.parent / f"u{i}.wav")) / SR for i in range(10)]
    np.testing.assert_allclose(cache.manifest["duration"].to_numpy(), expected, rtol=1e-6)


def test_group_norm_without_per_utterance_cnn_is_measurably_worse(corpus, models):
    """The measurement behind the group-norm choice: padding inside the CNN's group norm costs agreement."""
    from cltm.extract import load_model
    from cltm.extract.runner import pool_batch

    m = load_model(models["group"])
    waves = sorted(
        (m.normalize(_load(corpus.parent / f"u{i}.wav")) for i in range(10)), key=len, reverse=True
    )
    singles = [pool_batch(m, [w], device=torch.device("cpu"), autocast_dtype=None)[1][:, 0] for w in waves]

    def worst_cosine(exact):
        means = pool_batch(m, waves, device=torch.device("cpu"), autocast_dtype=None, exact_group_norm=exact)[
            1
        ]
        cos = [
            (means[:, i] * s).sum(1) / np.linalg.norm(means[:, i], axis=1) / np.linalg.norm(s, axis=1)
            for i, s in enumerate(singles)
        ]
        return float(np.min(cos))

    assert worst_cosine(True) > 0.999999
    assert worst_cosine(False) < worst_cosine(True)


def test_long_files_are_pooled_over_all_windows(tmp_path, models):
    n = 36800  # 2.3 s -> windows of 0.5 s: 4 x 8000 + a 4800-sample tail
    wave = (0.2 * np.random.default_rng(5).standard_normal(n)).astype(np.float32)
    sf.write(tmp_path / "long.wav", wave, SR)
    pl.DataFrame({"utt_id": ["long"], "path": ["long.wav"], "language": ["en"]}).write_parquet(
        tmp_path / "m.parquet"
    )
    extract(
        tmp_path / "m.parquet",
        models["layer"],
        tmp_path / "c.zarr",
        settings=ExtractSettings(
            batching=BatchSettings(max_seconds=0.5, num_workers=0),
            output=OutputSettings(cache_dtype="float32"),
        ),
    )
    cache = Cache.open(tmp_path / "c.zarr")
    pieces = [(0, 8000), (8000, 16000), (16000, 24000), (24000, 32000), (32000, n)]
    per_layer = [[] for _ in range(4)]
    for a, b in pieces:  # each window encoded alone, as its own file
        frames = _reference_stats(models["layer"], wave[a:b])[2]
        for layer in range(4):
            per_layer[layer].append(frames[layer])
    all_frames = [np.concatenate(f) for f in per_layer]
    np.testing.assert_allclose(cache.read_layer(2, [0])[0], all_frames[2].mean(0), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(
        cache.read_layer(3, [0], stat="std")[0], all_frames[3].std(0), rtol=1e-4, atol=2e-5
    )
    assert cache.n_frames[0] == len(all_frames[0])


def test_frame_level_features_and_worker_processes(tmp_path, corpus, models):
    out = tmp_path / "c.zarr"
    extract(
        corpus,
        models["layer"],
        out,
        settings=ExtractSettings(
            batching=BatchSettings(num_workers=1, batch_seconds=4),
            output=OutputSettings(frames_layers=(1, 3), chunk_rows=3),
        ),
    )
    cache = Cache.open(out)
    for row in (0, 7):
        frames = _reference_stats(models["layer"], _load(corpus.parent / f"u{row}.wav"))[2]
        for layer in (1, 3):
            got = cache.read_frames(layer, row)
            assert got.shape == frames[layer].shape
            np.testing.assert_allclose(got, frames[layer], rtol=2e-3, atol=2e-3)  # float16 storage
    with pytest.raises(Exception, match="no frame-level"):
        cache.read_frames(2, 0)
    assert verify_cache(cache).ok
    part = cache.frame_parts(3)[0]
    shutil.rmtree(out / "frames" / "layer_3" / part)
    report = verify_cache(Cache.open(out))
    assert any("frame-level layer 3" in p for p in report.problems)


def test_resume_skips_done_rows_and_matches_an_uninterrupted_run(tmp_path, corpus, models):
    full, part = tmp_path / "full.zarr", tmp_path / "part.zarr"
    settings = ExtractSettings(
        batching=BatchSettings(batch_seconds=3, num_workers=0), output=OutputSettings(chunk_rows=4)
    )
    extract(corpus, models["layer"], full, settings=settings)
    first = extract(corpus, models["layer"], part, settings=settings, max_batches=2)
    assert 0 < first.n_done_now < 10
    second = extract(corpus, models["layer"], part, settings=settings)
    assert second.n_skipped == first.n_done_now and second.n_done_now == 10 - first.n_done_now
    a, b = Cache.open(full), Cache.open(part)
    assert b.done.all()
    for layer in range(a.n_layers):
        np.testing.assert_allclose(a.read_layer(layer), b.read_layer(layer), rtol=1e-3, atol=1e-3)
    third = extract(corpus, models["layer"], part, settings=SERIAL)
    assert third.n_done_now == 0 and third.n_skipped == 10
    # a lost chunk file: verify names it, --repair marks its rows not done, the same command recomputes them
    (part / "pooled" / "std" / "c" / "2" / "1" / "0").unlink()
    repaired = CliRunner().invoke(app, ["store", "verify", str(part), "--repair"])
    assert repaired.exit_code == 1 and "pooled/std/c/2/1/0" in repaired.output
    fourth = extract(corpus, models["layer"], part, settings=SERIAL)
    assert fourth.n_done_now == 4  # rows 4-7
    assert verify_cache(Cache.open(part)).ok
    np.testing.assert_allclose(
        a.read_layer(2, stat="std"), Cache.open(part).read_layer(2, stat="std"), rtol=1e-3, atol=1e-3
    )


def test_mismatched_model_or_manifest_is_refused_unless_forced(tmp_path, corpus, models):
    out = tmp_path / "c.zarr"
    extract(corpus, models["layer"], out, settings=SERIAL)
    with pytest.raises(CacheMismatchError, match="config_hash") as err:
        extract(corpus, models["other"], out, settings=SERIAL)
    assert "model_id" in str(err.value) and "--force" in str(err.value)
    fewer = pl.read_parquet(corpus).head(5)
    fewer_path = corpus.parent / "fewer.parquet"
    fewer.write_parquet(fewer_path)
    with pytest.raises(CacheMismatchError, match="manifest_hash"):
        extract(fewer_path, models["layer"], out, settings=SERIAL)
    # the CLI names the difference and exits non-zero without a traceback
    result = CliRunner().invoke(
        app,
        [
            "extract",
            "--manifest",
            str(fewer_path),
            "--model",
            str(models["layer"]),
            "--out",
            str(out),
            "-q",
            "--num-workers",
            "0",
        ],
    )
    assert result.exit_code == 2 and "manifest_hash" in result.output
    forced = ExtractSettings(batching=BatchSettings(num_workers=0), output=OutputSettings(force=True))
    summary = extract(corpus, models["other"], out, settings=forced)
    assert summary.n_done_now == 10 and Cache.open(out).dim == 48


def test_retrained_weights_saved_over_the_same_directory_are_refused(tmp_path, corpus):
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    extract(corpus, model_dir, tmp_path / "c.zarr", settings=SERIAL)
    build_tiny_model(model_dir, seed=1)  # same config, new weights, same path
    with pytest.raises(CacheMismatchError, match="weights_hash"):
        extract(corpus, model_dir, tmp_path / "c.zarr", settings=SERIAL)


def _bad_corpus(root):
    rng = np.random.default_rng(1)
    good = (0.3 * rng.standard_normal(12000)).astype(np.float32)
    sf.write(root / "good.wav", good, SR)
    stereo = (0.3 * rng.standard_normal((44100, 2))).astype(np.float32)
    sf.write(root / "stereo44k.wav", stereo, 44100)
    sf.write(root / "tiny.wav", good[:100], SR)  # shorter than the 400-sample receptive field: padded
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    (root / "garbage.wav").write_bytes(b"RIFF not really audio" * 10)
    nan = good.copy()
    nan[500] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    names = ["good", "stereo44k", "tiny", "empty", "garbage", "nan", "missing"]
    pl.DataFrame(
        {"utt_id": names, "path": [f"{n}.wav" for n in names], "language": ["en"] * len(names)}
    ).write_parquet(root / "manifest.parquet")
    return root / "manifest.parquet", stereo


def test_bad_inputs_go_to_failures_and_the_run_goes_on(tmp_path, models):
    manifest, stereo = _bad_corpus(tmp_path)
    args = [
        "extract",
        "--manifest",
        str(manifest),
        "--model",
        str(models["layer"]),
        "--out",
        str(tmp_path / "c.zarr"),
        "-q",
        "--num-workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 rows extracted" in result.output and "4 failed" in result.output
    cache = Cache.open(tmp_path / "c.zarr")
    failures = cache.failures
    assert sorted(failures["utt_id"].to_list()) == ["empty", "garbage", "missing", "nan"]
    assert set(failures["stage"].to_list()) == {"decode"}
    messages = dict(zip(failures["utt_id"], failures["error"], strict=True))
    assert "not found" in messages["missing"] and "empty" in messages["empty"]
    np.testing.assert_array_equal(cache.done, [True, True, True, False, False, False, False])
    # 44.1 kHz stereo: averaged to mono and resampled, then encoded like any file
    mono16k = soxr.resample(stereo.mean(axis=1), 44100, SR, quality="HQ").astype(np.float32)
    ref_mean = _reference_stats(models["layer"], mono16k)[0]
    np.testing.assert_allclose(cache.read_layer(3, [1])[0], ref_mean[3], rtol=2e-2, atol=2e-2)
    assert cache.n_frames[2] == 1  # the 100-sample file was padded to one receptive field
    # --strict: same run (nothing left but the failures, which are retried) exits non-zero
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output


def test_fbank_baseline_through_the_runner(tmp_path, corpus):
    extract(
        corpus,
        "fbank",
        tmp_path / "fb.zarr",
        settings=ExtractSettings(
            batching=BatchSettings(num_workers=0),
            output=OutputSettings(cache_dtype="float32", pool=("mean",)),
        ),
    )
    cache = Cache.open(tmp_path / "fb.zarr")
    assert (cache.n_layers, cache.dim) == (1, 80) and cache.done.all()
    assert cache.pooling == ["mean"] and not (tmp_path / "fb.zarr" / "pooled" / "std").exists()
    from cltm.extract.models import fbank_model

    m = fbank_model()
    wave = _load(corpus.parent / "u4.wav")
    ref = m.hidden_states(torch.from_numpy(wave)[None])[0][0].numpy()
    np.testing.assert_allclose(cache.read_layer(0, [4])[0], ref.mean(0), rtol=1e-4, atol=1e-4)
