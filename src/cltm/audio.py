"""Audio decoding: any file soundfile reads (wav, flac, ogg, mp3, ...) -> float32 mono at the model's rate.

One entry point, :func:`load_audio`, used by extraction and by anyone who wants exactly the samples a model
saw. Every way an input can be unusable (missing, unreadable, empty, NaN/inf) raises :class:`AudioError`, so
callers catch one type and record ``err.reason`` in the cache's failure table instead of crashing a long run.

A truncated file (its header promises more samples than the file holds; a copy cut short) is an error, not
a shorter utterance: embeddings of 0.03 s of a 3.4 s clip would be silently wrong. So is a segment whose
``end`` lies past the end of the file. Both allow a small slack (:data:`SLACK_SECONDS`, or 1 %) for
decoders that count a few frames differently from the header.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioError", "load_audio", "audio_duration", "trim_silence_energy"]

SLACK_SECONDS = 0.05  # decoders may give a frame or so less than the header says (mp3 encoder padding)


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


def wav_promised_frames(path: str | os.PathLike) -> int | None:
    """Frames the RIFF/WAVE header's data chunk promises (libsndfile reports what the file holds instead).

    None when the file is not a plain RIFF WAVE or the size is a streaming placeholder.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            for _ in range(64):  # a handful of chunks precede 'data' in real files
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = fh.read(size + (size & 1))
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                elif cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    fh.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


def _slack(frames: int, sr: int) -> int:
    return max(int(SLACK_SECONDS * sr), int(0.01 * max(frames, 0)))


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
            promised = max(f.frames, wav_promised_frames(path) or 0)
            if last > 0 and f.frames > 0 and last > f.frames + _slack(f.frames, sr):
                raise AudioError(
                    path, f"segment end {end} s is past the end of the file ({f.frames / sr:.3f} s)"
                )
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
    expected = (min(last, promised) - first) if last >= 0 else promised - first
    if wave.shape[0] and expected - wave.shape[0] > _slack(expected, sr):
        raise AudioError(
            path,
            f"truncated file: the header promises {promised / sr:.3f} s, only "
            f"{(first + wave.shape[0]) / sr:.3f} s decode (an incomplete copy?)",
        )
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
