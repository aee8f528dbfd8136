"""The built-in demo corpus: multilingual, multi-speaker, gendered speech synthesised offline with espeak-ng.

espeak-ng comes from the ``espeakng-loader`` wheel (the shared library plus its voice data), driven here
through ctypes in synchronous mode: a callback collects the int16 samples, nothing touches a sound card or the
network.

A *speaker* is an espeak voice variant of the speaker's gender (``f1``..``f5`` / ``m1``..``m7``, which set the
formants and the pitch register) combined with a base pitch, a pitch range, a speaking rate, a word gap and a
recording SNR, all drawn per speaker from a seeded generator; the base pitches are spread over a grid so that
speakers sharing a variant still differ audibly. Each utterance adds a little pitch/rate jitter and reads one
of the language's short sentences (``sentences.json``). Each language also gets its own "recording channel"
(a spectral tilt and a noise colour), as real corpora differ per language; that makes transfer between
languages imperfect, which is what a CLTM is there to measure.

Output: ``DIR/audio/<lang>/<speaker>/<utt>.wav`` (16 kHz, PCM_16), ``DIR/manifest.parquet`` (utt_id, path
relative to DIR, language, speaker, gender, split, duration, text) and ``DIR/speakers.parquet`` (the voice
parameters of every speaker). The split is speaker-disjoint: per language and gender the first speakers are
``train`` and the last ``max(2, round(K/4))`` are ``test``, so same-gender non-target trials exist.
Deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import queue
import threading
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf
import soxr

__all__ = [
    "DEFAULT_LANGUAGES",
    "SAMPLE_RATE",
    "SpeakerVoice",
    "SynthError",
    "available_languages",
    "load_sentences",
    "synthesize_corpus",
    "synthesize_text",
]

#: Two Germanic, two Romance, two Slavic languages: enough for within- vs across-family contrasts.
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "it", "pl", "cs")
SAMPLE_RATE = 16000
FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m6", "m7")

# espeak_PARAMETER values from speak_lib.h
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_EE_OK = 0


class SynthError(RuntimeError):
    """espeak-ng could not be loaded or could not speak a language/voice."""


@dataclass(frozen=True)
class SpeakerVoice:
    """The espeak settings that make one synthetic speaker."""

    speaker: str
    language: str
    gender: str
    variant: str
    pitch: int  # espeak pitch parameter, 0-100 (50 = the variant's own base pitch)
    pitch_range: int  # espeak range parameter, 0-100 (intonation width)
    rate: int  # words per minute
    word_gap: int  # extra pause between words, units of 10 ms
    snr_db: float  # additive noise level of this speaker's "recordings"


def load_sentences() -> dict[str, list[str]]:
    """The built-in short sentences per language (written in that language)."""
    text = resources.files("cltm.corpus").joinpath("sentences.json").read_text(encoding="utf-8")
    return json.loads(text)


def available_languages() -> list[str]:
    """Languages the built-in corpus can synthesise (those with built-in sentences)."""
    return sorted(load_sentences())


# ---------------------------------------------------------------------------------------------------------
# espeak-ng through ctypes
# ---------------------------------------------------------------------------------------------------------

# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """The process-wide espeak-ng engine. The library keeps global state: calls are serialised by a lock."""

    _instance: _Espeak | None = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise SynthError("the demo corpus needs 'espeakng-loader': pip install espeakng-loader") from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_dir = Path(espeakng_loader.get_data_path())
        except (OSError, RuntimeError) as exc:
            raise SynthError(f"could not load espeak-ng from espeakng-loader: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        if not hasattr(lib, "espeak_ng_SetRandSeed"):  # added in espeak-ng 1.52
            raise SynthError("this espeak-ng build has no espeak_ng_SetRandSeed: upgrade espeakng-loader")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        # espeak wants the directory that *contains* espeak-ng-data
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_dir.parent).encode(), 0)
        if rate <= 0:
            raise SynthError(f"espeak-ng failed to initialise with data in {data_dir} (code {rate})")
        self.lib = lib
        self.sample_rate = int(rate)
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: the C side holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Espeak:
        with cls._create_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav, n_samples, events) -> int:  # noqa: ANN001 - ctypes callback
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue

    def speak(
        self, text: str, voice: str, *, pitch: int, pitch_range: int, rate: int, word_gap: int, rand_seed: int
    ) -> np.ndarray:
        """int16 samples at ``self.sample_rate`` for ``text`` in ``voice`` (e.g. ``"de+f3"``)."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise SynthError(f"espeak-ng has no voice {voice!r}: check the language code")
            for param, value in (
                (_RATE, rate), (_VOLUME, 100), (_PITCH, pitch), (_RANGE, pitch_range), (_WORDGAP, word_gap),
            ):  # fmt: skip
                self.lib.espeak_SetParameter(param, int(value), 0)
            # breath noise of some variants (f2, f5, ...) is random; espeak seeds it from the clock otherwise
            self.lib.espeak_ng_SetRandSeed(int(rand_seed) & 0x7FFFFFFF)
            encoded = text.encode("utf-8") + b"\0"
            self._chunks = []
            code = self.lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, _CHARS_UTF8, None, None)
            if code != _EE_OK:
                raise SynthError(f"espeak-ng failed on {text!r} with voice {voice!r} (code {code})")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise SynthError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
        return np.concatenate(chunks)


def synthesize_text(
    text: str,
    language: str,
    *,
    variant: str = "m1",
    pitch: int = 50,
    pitch_range: int = 50,
    rate: int = 160,
    word_gap: int = 0,
    sample_rate: int = SAMPLE_RATE,
    rand_seed: int = 0,
) -> np.ndarray:
    """One sentence as float32 mono at ``sample_rate`` (espeak's 22.05 kHz resampled with soxr HQ).

    espeak-ng carries state from call to call within a process, so repeating a call can differ in the last
    bits and by a few samples; :func:`synthesize_corpus` runs each language in a fresh process for that
    reason.
    """
    engine = _Espeak.get()
    pcm = engine.speak(
        text,
        f"{language}+{variant}",
        pitch=pitch,
        pitch_range=pitch_range,
        rate=rate,
        word_gap=word_gap,
        rand_seed=rand_seed,
    )
    wave = pcm.astype(np.float32) / 32768.0
    if sample_rate != engine.sample_rate:
        wave = soxr.resample(wave, engine.sample_rate, sample_rate, quality="HQ")
    return wave.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that is a pure function of the seed and the keys (crc32: stable across processes)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys])


def _speaker_voices(language: str, gender: str, count: int, seed: int) -> list[SpeakerVoice]:
    rng = _rng(seed, "speakers", language, gender)
    variants = FEMALE_VARIANTS if gender == "female" else MALE_VARIANTS
    order = rng.permutation(len(variants))
    # base pitches on a jittered grid over [28, 72]: speakers reusing a variant still sound different
    pitch_slots = rng.permutation(count)
    voices = []
    for k in range(count):
        pitch = 28 + 44 * (pitch_slots[k] + rng.uniform(0.15, 0.85)) / count
        voices.append(
            SpeakerVoice(
                speaker=f"{language}_{gender[0]}{k + 1:02d}",
                language=language,
                gender=gender,
                variant=variants[order[k % len(variants)]],
                pitch=int(round(pitch)),
                pitch_range=int(rng.integers(25, 85)),
                rate=int(rng.integers(135, 205)),
                word_gap=int(rng.integers(0, 4)),
                snr_db=round(float(rng.uniform(15.0, 35.0)), 2),
            )
        )
    return voices


def _language_channel(language: str, seed: int) -> tuple[float, float]:
    """(spectral tilt, noise colour) of a language's 'recordings': a first-order filter coefficient each."""
    rng = _rng(seed, "channel", language)
    return float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.8, 0.8))


def _first_order(x: np.ndarray, a: float) -> np.ndarray:
    """y[n] = x[n] + a * x[n-1]: a>0 darkens (low-pass), a<0 brightens (pre-emphasis)."""
    y = x.copy()
    y[1:] += a * x[:-1]
    return y


def _render(
    voice: SpeakerVoice, text: str, channel: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """One utterance of ``voice``: espeak, utterance jitter, language channel, noise, level."""
    wave = synthesize_text(
        text,
        voice.language,
        variant=voice.variant,
        pitch=int(np.clip(voice.pitch + rng.integers(-3, 4), 0, 100)),
        pitch_range=voice.pitch_range,
        rate=int(voice.rate + rng.integers(-8, 9)),
        word_gap=voice.word_gap,
        rand_seed=int(rng.integers(0, 2**31)),
    ).astype(np.float64)
    tilt, noise_colour = channel
    wave = _first_order(wave, tilt)
    signal_power = float(np.mean(wave**2)) or 1e-12
    snr_db = voice.snr_db + rng.uniform(-2.0, 2.0)
    noise = _first_order(rng.standard_normal(len(wave)), noise_colour)
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise**2)), 1e-12))
    wave = wave + noise
    peak = float(np.max(np.abs(wave))) or 1.0
    return (wave * (rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def synthesize_corpus(
    out_dir: str | Path,
    *,
    languages: Sequence[str] | None = None,
    speakers_per_gender: int = 6,
    utts_per_speaker: int = 10,
    seed: int = 0,
    progress: bool = True,
    sentences: dict[str, list[str]] | None = None,
    workers: int | None = None,
) -> Path:
    """Synthesise the demo corpus into ``out_dir``; returns ``out_dir/manifest.parquet``.

    ``languages``: espeak-ng language codes (default :data:`DEFAULT_LANGUAGES`); each needs sentences, built
    in (:func:`available_languages`) or passed in ``sentences`` ({language: [sentence, ...]}). Per language:
    ``speakers_per_gender`` female and as many male speakers (>= 3: one train and two test speakers at least),
    each reading ``utts_per_speaker`` sentences (cycling through the language's sentences in a seeded order).
    ``workers``: processes (default: one per language, at most the CPU count); each language is synthesised
    in a fresh process, so a language's files do not depend on the other languages asked for. Those are
    ``spawn`` processes: a script that calls this at import time needs the usual ``if __name__ ==
    "__main__":`` guard (the ``cltm`` command, notebooks and ``python -c`` need nothing).
    """
    languages = list(DEFAULT_LANGUAGES if languages is None else languages)
    if not languages:
        raise ValueError("languages is empty: name at least one language, e.g. en,de,es")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages has duplicates: {languages}")
    if speakers_per_gender < 3:
        raise ValueError(
            "speakers_per_gender must be >= 3 (1 train + 2 test speakers per gender), "
            f"got {speakers_per_gender}"
        )
    if utts_per_speaker < 2:
        raise ValueError(f"utts_per_speaker must be >= 2 (a target trial needs two), got {utts_per_speaker}")
    texts = {**load_sentences(), **(sentences or {})}
    unknown = [lang for lang in languages if not texts.get(lang)]
    if unknown:
        raise ValueError(
            f"no sentences for language(s) {unknown}; built in: {', '.join(available_languages())} "
            "(pass sentences={lang: [...]} for others espeak-ng supports)"
        )

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is a file, not a directory: choose another --out")
    if (out_dir / "zarr.json").is_file():
        raise ValueError(f"{out_dir} is an embedding cache: choose another --out for the corpus")
    n_test = max(2, int(round(speakers_per_gender / 4)))
    voices = {
        lang: [
            voice
            for gender in ("female", "male")
            for voice in _speaker_voices(lang, gender, speakers_per_gender, seed)
        ]
        for lang in languages
    }
    jobs = [
        _LanguageJob(out_dir, voices[lang], texts[lang], utts_per_speaker, seed, speakers_per_gender - n_test)
        for lang in languages
    ]
    # espeak-ng keeps synthesis state (echo buffer, pitch phase) from one call to the next inside a process,
    # and no API resets it. So each language is synthesised in a fresh process: the same arguments give the
    # same bytes, whatever else was synthesised before, and languages run in parallel.
    n_workers = max(1, min(len(jobs), workers if workers else os.cpu_count() or 1))
    rows_by_language: dict[str, list[dict]] = {}
    total = len(languages) * 2 * speakers_per_gender * utts_per_speaker
    context = multiprocessing.get_context("spawn")
    ticks = context.Queue() if progress else None  # workers report each utterance for the progress bar
    with (
        _progress_bar(progress, total) as advance,
        context.Pool(n_workers, _init_worker, (ticks,), maxtasksperchild=1) as pool,
    ):
        pending = pool.map_async(_synthesize_language, jobs)
        while ticks is not None and not pending.ready():
            try:
                advance(ticks.get(timeout=0.1))
            except queue.Empty:
                pass
        for lang, rows in pending.get():
            rows_by_language[lang] = rows

    manifest = pl.DataFrame([row for lang in languages for row in rows_by_language[lang]])
    speakers = pl.DataFrame([asdict(v) for lang in languages for v in voices[lang]])
    speakers.write_parquet(out_dir / "speakers.parquet")
    from cltm.corpus.manifest import write_manifest

    return write_manifest(manifest, out_dir / "manifest.parquet")


@dataclass(frozen=True)
class _LanguageJob:
    out_dir: Path
    voices: list[SpeakerVoice]
    sentences: list[str]
    utts_per_speaker: int
    seed: int
    first_test_index: int  # speakers with this 0-based index within their gender and above are test


_PROGRESS_TICKS = None  # a worker's queue to the parent's progress bar (set by _init_worker)


def _init_worker(ticks) -> None:  # noqa: ANN001 - a multiprocessing queue or None
    global _PROGRESS_TICKS
    _PROGRESS_TICKS = ticks


def _synthesize_language(job: _LanguageJob) -> tuple[str, list[dict]]:
    """All utterances of one language (run in a fresh worker process); returns (language, manifest rows)."""
    language = job.voices[0].language
    channel = _language_channel(language, job.seed)
    rows = []
    for voice in job.voices:
        order = _rng(job.seed, "sentences", voice.speaker).permutation(len(job.sentences))
        split = "test" if int(voice.speaker[-2:]) - 1 >= job.first_test_index else "train"
        (job.out_dir / "audio" / language / voice.speaker).mkdir(parents=True, exist_ok=True)
        for u in range(job.utts_per_speaker):
            text = job.sentences[order[u % len(job.sentences)]]
            utt_id = f"{voice.speaker}_{u:03d}"
            wave = _render(voice, text, channel, _rng(job.seed, "utterance", utt_id))
            rel = f"audio/{language}/{voice.speaker}/{utt_id}.wav"
            sf.write(job.out_dir / rel, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            rows.append(
                {
                    "utt_id": utt_id,
                    "path": rel,
                    "language": language,
                    "speaker": voice.speaker,
                    "gender": voice.gender,
                    "split": split,
                    "duration": len(wave) / SAMPLE_RATE,
                    "text": text,
                }
            )
            if _PROGRESS_TICKS is not None:
                _PROGRESS_TICKS.put(1)
    return language, rows


class _progress_bar:
    """A rich progress bar when asked (and a no-op otherwise); yields ``advance(n=1)``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n=1: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("synthesising"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._progress.__enter__()
        task = self._progress.add_task("synth", total=self.total)
        return lambda n=1: self._progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
