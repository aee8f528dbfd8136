"""Audio decoding: any file soundfile reads (wav, flac, ogg, mp3, ...) -> float32 mono at the model's rate.

One entry point, :func:`load_audio`, used by extraction and by anyone who wants exactly the samples a model
saw. Every way an input can be unusable (missing, unreadable, empty, NaN/inf) raises :class:`AudioError`, so
callers catch one type and record ``err.reason`` in the cache's failure table instead of crashing a long run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioError", "load_audio", "audio_duration", "trim_silence_energy"]


class AudioError(Exception):
    """An audio input that cannot be used. ``.path`` is the file, ``.reason`` a human-readable cause."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep path/reason when the error crosses a process boundary (DataLoader workers)
        return (type(self), (self.path, self.reason))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")


def _open_info(path: Path) -> sf._SoundFileInfo:
    _check_file(path)
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header (no decoding). Raises AudioError like :func:`load_audio`."""
    path = Path(path)
    info = _open_info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        # mp3/ogg headers may not carry a frame count: decode to count rather than guess
        if info.samplerate > 0 and info.frames < 0:
            return len(load_audio(path, target_sr=None)) / info.samplerate
        raise AudioError(path, "empty audio (0 samples)")
    return info.frames / info.samplerate


def trim_silence_energy(
    wave: np.ndarray,
    sample_rate: int,
    *,
    threshold_db: float = -40.0,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> np.ndarray:
    """Cut leading and trailing frames whose RMS is ``threshold_db`` below the loudest frame.

    Relative to the peak frame (not an absolute level), so quiet recordings keep their speech. Never returns
    an empty array: if no frame passes (all-silent input), the input comes back unchanged.
    """
    n = len(wave)
    frame = max(1, int(round(sample_rate * frame_ms / 1000)))
    hop = max(1, int(round(sample_rate * hop_ms / 1000)))
    if n <= frame:
        return wave
    n_frames = 1 + (n - frame) // hop
    # frame energies through a cumulative sum: O(n), no [n_frames, frame] copy
    csum = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    starts = np.arange(n_frames) * hop
    energy = (csum[starts + frame] - csum[starts]) / frame
    peak = energy.max()
    if peak <= 0:
        return wave
    loud = np.flatnonzero(energy >= peak * 10.0 ** (threshold_db / 10.0))
    if len(loud) == 0:
        return wave
    begin = int(starts[loud[0]])
    end = min(n, int(starts[loud[-1]]) + frame)
    return wave[begin:end]


def load_audio(
    path: str | os.PathLike,
    *,
    target_sr: int | None = 16000,
    start: float | None = None,
    end: float | None = None,
    trim_silence: bool = False,
) -> np.ndarray:
    """Decode ``path`` to a float32 mono waveform at ``target_sr`` Hz (``None`` keeps the file's rate).

    ``start``/``end`` (seconds) read only that segment from disk. Channels are averaged. Resampling uses
    soxr's high-quality filter. ``trim_silence`` removes leading/trailing low-energy frames (never to empty).
    Raises :class:`AudioError` for a missing, unreadable, empty or non-finite input.
    """
    path = Path(path)
    if start is not None and start < 0:
        raise AudioError(path, f"segment start {start} s is negative")
    if start is not None and end is not None and end <= start:
        raise AudioError(path, f"segment end {end} s is not after start {start} s")
    _check_file(path)
    try:
        # one open per file: the header and the samples come from the same handle (cheap on network disks)
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            first = int(math.floor(start * sr)) if start is not None else 0
            last = int(math.ceil(end * sr)) if end is not None else -1
            n_wanted = (last - first) if last >= 0 else -1
            if first > 0 and 0 < f.frames <= first:
                wave = np.zeros((0, f.channels), dtype=np.float32)  # segment starts after the end
            elif first > 0 and f.seekable():
                f.seek(first)  # read only the segment: long files stay cheap
                wave = f.read(frames=n_wanted, dtype="float32", always_2d=True)
            elif first > 0:  # formats without seeking: decode and slice
                wave = f.read(dtype="float32", always_2d=True)[first : (last if last >= 0 else None)]
            else:
                wave = f.read(frames=n_wanted, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if wave.shape[0] == 0:
        where = "" if start is None and end is None else f" in segment [{start}, {end}] s"
        raise AudioError(path, f"empty audio (0 samples{where})")
    mono = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(path, f"non-finite audio ({bad} NaN/inf samples)")
    if target_sr is not None and target_sr != sr:
        mono = soxr.resample(mono, sr, target_sr, quality="HQ")
        sr = target_sr
    if trim_silence:
        mono = trim_silence_energy(mono, sr)
    return np.ascontiguousarray(mono, dtype=np.float32)
