"""cltm.audio: decoding, downmix, resampling, segments, silence trim and the one error type."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from cltm.audio import AudioError, audio_duration, load_audio, trim_silence_energy

FORMATS = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("ext", list(FORMATS))
@pytest.mark.parametrize("freq", [440.0, 2500.0])
def test_resample_keeps_sine_frequency(tmp_path, ext, freq):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _sine(freq, 44100, 1.0), 44100, subtype=FORMATS[ext])
    wave = load_audio(path, target_sr=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(_peak_hz(wave, 16000) - freq) <= 2.0  # 1 Hz bins at 1 s: a wrong rate would be off by ~100s
    assert abs(len(wave) - 16000) <= 2 if ext in ("wav", "flac") else abs(len(wave) - 16000) < 1600


def test_stereo_44k_becomes_mono_16k_matching_reference(tmp_path):
    sr = 44100
    left, right = _sine(300.0, sr, 2.0, 0.6), _sine(1200.0, sr, 2.0, 0.3)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    wave = load_audio(path, target_sr=16000)
    assert wave.ndim == 1
    assert abs(len(wave) - 2 * 16000) <= 1
    # slow reference: average channels, polyphase resampling 441 -> 160
    reference = resample_poly((left.astype(np.float64) + right) / 2, 160, 441)
    interior = slice(800, min(len(wave), len(reference)) - 800)  # filter edges differ between resamplers
    assert np.max(np.abs(wave[interior] - reference[interior])) < 1e-3
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
    top_two = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert top_two == pytest.approx([300.0, 1200.0], abs=1.0)


def test_target_sr_none_keeps_native_samples(tmp_path):
    x = _sine(100.0, 8000, 0.5)
    path = tmp_path / "native.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, target_sr=None), x)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3"])
def test_segment_reads_exactly_the_slice(tmp_path, ext):
    sr = 16000
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(3 * sr)).clip(-1, 1).astype(np.float32)
    path = tmp_path / f"seg.{ext}"
    sf.write(path, x, sr, subtype=FORMATS[ext])
    full = load_audio(path, target_sr=None)
    seg = load_audio(path, target_sr=None, start=0.51, end=1.7)
    first, last = int(np.floor(0.51 * sr)), int(np.ceil(1.7 * sr))

    def same(a: np.ndarray, b: np.ndarray) -> None:
        if ext == "mp3":  # the mp3 decoder after a seek differs in the last float bits
            np.testing.assert_allclose(a, b, atol=1e-5)
        else:
            np.testing.assert_array_equal(a, b)

    same(seg, full[first:last])
    same(load_audio(path, target_sr=None, start=2.5), full[int(2.5 * sr) :])
    same(load_audio(path, target_sr=None, end=0.25), full[: int(0.25 * sr)])
    assert abs(len(load_audio(path, start=0.5, end=1.0, target_sr=8000)) - 4000) <= 1


def test_audio_duration_from_header(tmp_path):
    for sr, n in [(16000, 24000), (44100, 44100 * 3 + 7)]:
        path = tmp_path / f"d{sr}.flac"
        sf.write(path, np.zeros(n, dtype=np.float32), sr)
        assert audio_duration(path) == pytest.approx(n / sr)


def _expect_error(path, fragment: str, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    err = info.value
    assert err.path == str(path)
    assert fragment in err.reason, err.reason
    assert str(path) in str(err) and err.reason in str(err)
    return err


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.wav", "not found")
    with pytest.raises(AudioError, match="not found"):
        audio_duration(tmp_path / "nope.wav")


def test_unreadable_file_and_directory(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    _expect_error(garbage, "unreadable")
    _expect_error(tmp_path, "not a regular file")


def test_empty_file_and_empty_segment(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    _expect_error(empty, "empty")
    with pytest.raises(AudioError, match="empty"):
        audio_duration(empty)
    short = tmp_path / "short.wav"
    sf.write(short, _sine(200.0, 16000, 1.0), 16000)
    _expect_error(short, "past the end of the file", start=5.0, end=6.0)  # a segment after the end
    _expect_error(short, "not after start", start=0.5, end=0.5)
    _expect_error(short, "negative", start=-1.0)


def test_non_finite_samples(tmp_path):
    x = _sine(200.0, 16000, 0.5)
    x[100] = np.nan
    x[200] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    err = _expect_error(path, "non-finite")
    assert "2 " in err.reason


def test_error_survives_pickling(tmp_path):
    err = AudioError(tmp_path / "x.wav", "file not found")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def _trim_reference(x: np.ndarray, sr: int, threshold_db: float = -40.0) -> tuple[int, int]:
    """Slow loop: frame RMS, keep from the first to the last frame within threshold of the loudest."""
    frame, hop = int(round(sr * 0.025)), int(round(sr * 0.010))
    starts = range(0, len(x) - frame + 1, hop)
    energies = [float(np.mean(x[s : s + frame].astype(np.float64) ** 2)) for s in starts]
    peak = max(energies)
    loud = [i for i, e in enumerate(energies) if e >= peak * 10 ** (threshold_db / 10)]
    return loud[0] * hop, min(len(x), loud[-1] * hop + frame)


def test_trim_silence_matches_reference_and_never_empties(tmp_path):
    sr = 16000
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [1e-4 * rng.standard_normal(sr // 2), _sine(300.0, sr, 1.0), 1e-4 * rng.standard_normal(sr // 3)]
    ).astype(np.float32)
    begin, end = _trim_reference(x, sr)
    trimmed = trim_silence_energy(x, sr)
    np.testing.assert_array_equal(trimmed, x[begin:end])
    assert abs(len(trimmed) - sr) < 0.05 * sr  # about the tone's one second
    path = tmp_path / "padded.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, trim_silence=True), x[begin:end])
    silent = np.zeros(sr, dtype=np.float32)
    assert len(trim_silence_energy(silent, sr)) == sr
    tiny = np.full(10, 0.1, dtype=np.float32)
    assert len(trim_silence_energy(tiny, sr)) == 10
