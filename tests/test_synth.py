"""cltm.corpus.synth: the espeak-ng demo corpus is deterministic, playable, gendered and split correctly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from cltm.cli._synth import synth_command
from cltm.corpus.manifest import read_manifest
from cltm.corpus.synth import DEFAULT_LANGUAGES, available_languages, synthesize_corpus, synthesize_text

TINY = {"languages": ["en", "pl"], "speakers_per_gender": 3, "utts_per_speaker": 3, "progress": False}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return {
        "a": synthesize_corpus(root / "a", seed=0, **TINY),
        "b": synthesize_corpus(root / "b", seed=0, **TINY),
        "other_seed": synthesize_corpus(root / "other_seed", seed=1, **{**TINY, "languages": ["en"]}),
    }


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*.wav"))
    }


def _f0_autocorrelation(x: np.ndarray, sr: int) -> float:
    """Crude F0: median over loud 40 ms frames of the autocorrelation peak lag in 60-400 Hz."""
    frame, hop = int(0.04 * sr), int(0.02 * sr)
    loud = 0.5 * np.sqrt(np.mean(x**2))
    estimates = []
    for start in range(0, len(x) - frame, hop):
        w = x[start : start + frame].astype(np.float64)
        if np.sqrt(np.mean(w**2)) < loud:
            continue
        w = w - w.mean()
        ac = np.correlate(w, w, "full")[frame - 1 :]
        lo, hi = int(sr / 400), int(sr / 60)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            estimates.append(sr / lag)
    return float(np.median(estimates)) if estimates else float("nan")


def test_same_seed_same_bytes_other_seed_differs(corpora):
    a, b, other = (corpora[k].parent for k in ("a", "b", "other_seed"))
    digests_a = _digests(a)
    assert len(digests_a) == 2 * 2 * 3 * 3
    assert digests_a == _digests(b)
    assert pl.read_parquet(corpora["a"]).equals(pl.read_parquet(corpora["b"]))
    assert pl.read_parquet(a / "speakers.parquet").equals(pl.read_parquet(b / "speakers.parquet"))
    digests_other = _digests(other)
    assert digests_other.keys() == {k for k in digests_a if k.startswith("audio/en/")}
    assert all(digests_other[k] != digests_a[k] for k in digests_other)


def test_a_language_does_not_depend_on_the_others_asked_for(corpora, tmp_path):
    alone = synthesize_corpus(tmp_path / "pl_only", seed=0, **{**TINY, "languages": ["pl"]}).parent
    together = corpora["a"].parent
    digests = _digests(alone)
    assert digests and digests == {k: v for k, v in _digests(together).items() if k.startswith("audio/pl/")}


def test_manifest_contents_and_playable_audio(corpora):
    manifest = read_manifest(corpora["a"])  # validates and resolves relative paths
    raw = pl.read_parquet(corpora["a"])
    assert not any(Path(p).is_absolute() for p in raw["path"])
    assert {"utt_id", "path", "language", "speaker", "gender", "split", "duration"} <= set(manifest.columns)
    assert manifest.height == 2 * 2 * 3 * 3 and manifest["utt_id"].n_unique() == manifest.height
    assert sorted(manifest["language"].unique()) == ["en", "pl"]
    for (lang, gender), group in manifest.group_by("language", "gender"):
        assert gender in ("female", "male")
        assert group["speaker"].n_unique() == 3
        assert all(s.startswith(f"{lang}_") for s in group["speaker"])
    for row in manifest.iter_rows(named=True):
        wave, sr = sf.read(row["path"], dtype="float32")
        info = sf.info(row["path"])
        assert sr == 16000 and wave.ndim == 1 and info.subtype == "PCM_16"
        assert np.isfinite(wave).all()
        assert np.sqrt(np.mean(wave**2)) > 0.01  # not silent
        assert 0.5 < len(wave) / sr < 10
        assert row["duration"] == pytest.approx(len(wave) / sr)
        assert Path(row["path"]).parts[-3:-1] == (row["language"], row["speaker"])


def test_split_is_speaker_disjoint_with_two_test_speakers_per_gender(corpora):
    manifest = pl.read_parquet(corpora["a"])
    per_speaker = manifest.group_by("speaker").agg(pl.col("split").n_unique())
    assert per_speaker["split"].max() == 1
    counts = manifest.unique("speaker").group_by("language", "gender", "split").len()
    for (_, _), group in counts.group_by("language", "gender"):
        split = dict(zip(group["split"], group["len"], strict=True))
        assert split == {"train": 1, "test": 2}


def test_female_speakers_have_higher_pitch_than_male(corpora):
    manifest = read_manifest(corpora["a"])
    f0 = {}
    for (speaker, gender), group in manifest.group_by("speaker", "gender"):
        estimates = [_f0_autocorrelation(*sf.read(p, dtype="float32")) for p in group["path"]]
        f0[(speaker, gender)] = float(np.nanmedian(estimates))
    female = [v for (_, g), v in f0.items() if g == "female"]
    male = [v for (_, g), v in f0.items() if g == "male"]
    assert min(female) > max(male), f0
    assert 60 < min(male) and max(female) < 400


def test_speakers_differ(corpora):
    speakers = pl.read_parquet(corpora["a"].parent / "speakers.parquet")
    voice = speakers.select("variant", "pitch", "pitch_range", "rate", "word_gap")
    assert voice.unique().height == speakers.height
    # within a language and gender, speakers differ in base pitch by a few steps at least
    for _, group in speakers.group_by("language", "gender"):
        pitches = np.sort(group["pitch"].to_numpy())
        assert np.all(np.diff(pitches) >= 2)


def test_synthesize_text_sample_rate_and_language_error():
    wave = synthesize_text("Hello world.", "en", variant="f2", sample_rate=8000)
    assert wave.dtype == np.float32 and 0.3 < len(wave) / 8000 < 3
    assert set(DEFAULT_LANGUAGES) <= set(available_languages()) and 6 <= len(DEFAULT_LANGUAGES) <= 8


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no sentences for language"):
        synthesize_corpus(tmp_path, languages=["xx"], progress=False)
    with pytest.raises(ValueError, match="speakers_per_gender must be >= 3"):
        synthesize_corpus(tmp_path, languages=["en"], speakers_per_gender=2, progress=False)
    with pytest.raises(ValueError, match="utts_per_speaker"):
        synthesize_corpus(tmp_path, languages=["en"], utts_per_speaker=1, progress=False)


def test_custom_sentences_for_another_language(tmp_path):
    path = synthesize_corpus(
        tmp_path,
        languages=["fi"],
        speakers_per_gender=3,
        utts_per_speaker=2,
        progress=True,  # also runs the worker -> progress-bar queue
        sentences={"fi": ["Hyvää huomenta.", "Kiitos paljon."]},
    )
    manifest = pl.read_parquet(path)
    assert manifest["language"].unique().to_list() == ["fi"]
    assert set(manifest["text"]) == {"Hyvää huomenta.", "Kiitos paljon."}


def test_cli_command(tmp_path):
    app = typer.Typer()
    app.command("synth")(synth_command)
    app.command("noop")(lambda: None)  # two commands so typer keeps the sub-command name
    runner = CliRunner()
    out = tmp_path / "demo"
    result = runner.invoke(
        app,
        ["synth", "--out", str(out), "--languages", "en,es", "--speakers-per-gender", "3",
         "--utts-per-speaker", "2", "--seed", "3", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "24 utterances" in result.output and "12 speakers" in result.output
    assert (out / "manifest.parquet").exists()
    bad = runner.invoke(app, ["synth", "--out", str(out), "--languages", "en,zz"])
    assert bad.exit_code != 0 and "zz" in bad.output
    assert "Synthesise" in runner.invoke(app, ["synth", "--help"]).output
