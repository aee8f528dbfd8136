"""Presets for public emotional-speech corpora whose file names or layout carry the labels.

``cltm corpus import emodb|ravdess|cremad|esd|iemocap ROOT --out FILE`` reads a corpus as it is distributed
and fills ``language``, ``speaker``, ``gender`` and ``emotion`` (in the one shared vocabulary
:data:`EMOTIONS`), and keeps the corpus's own extra labels (intensity, text/sentence id, repetition,
session, ...) as columns. Every row also gets ``corpus`` (the preset name) and ``emotion_code`` (the
corpus's own code, so nothing is lost by the mapping). ``utt_id`` is ``<corpus>/<file stem>`` and
``speaker`` is ``<corpus>/<speaker id>``, so manifests of several corpora can be concatenated without
clashes (RAVDESS actor 03 is not EmoDB speaker 03).

The conventions read (sources: each corpus's own documentation; see docs/corpus.md):

EmoDB (Berlin Database of Emotional Speech; German, ``de``), ``wav/03a01Fa.wav``:
    positions 1-2 speaker (03, 08, 09, 10, 11, 12, 13, 14, 15, 16; male 03, 10, 11, 12, 15, female 08, 09,
    13, 14, 16, from the database's speaker list), 3-5 text code (a01 ... b10), 6 emotion letter of the
    German word (W Wut/Ärger anger, L Langeweile boredom, E Ekel disgust, A Angst fear, F Freude
    happiness, T Trauer sadness, N neutral), 7 version letter (a, b, ...). Extra columns: ``text_id``,
    ``version``, ``age`` (from the speaker list).
RAVDESS (English, ``en``), ``Actor_01/03-01-05-01-02-01-01.wav``:
    seven two-digit fields modality-vocal channel-emotion-intensity-statement-repetition-actor. Modality
    01 full audio-video, 02 video-only (no audio: skipped and reported), 03 audio-only; channel 01 speech,
    02 song; emotion 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08
    surprised; intensity 01 normal, 02 strong; statement 01 "Kids are talking by the door", 02 "Dogs are
    sitting by the door"; repetition 01/02; actor 01-24, odd = male, even = female. Extra columns:
    ``modality``, ``vocal_channel`` (speech/song), ``intensity``, ``statement``, ``repetition``.
CREMA-D (English, ``en``), ``AudioWAV/1001_DFA_ANG_XX.wav``:
    actor id (1001-1091), sentence code (IEO, TIE, IOM, IWW, TAI, MTI, IWL, ITH, DFA, ITS, TSI, WSI),
    emotion ANG anger, DIS disgust, FEA fear, HAP happy, NEU neutral, SAD sad, level LO low, MD medium,
    HI high, XX unspecified. Gender (and age, race, ethnicity) from ``VideoDemographics.csv`` (columns
    ActorID, Age, Sex, Race, Ethnicity) found in ROOT or its parent, or given explicitly; without it the
    gender is missing, with a warning. Extra columns: ``sentence``, ``text``, ``intensity``.
ESD (Emotional Speech Dataset; Mandarin ``zh`` and English ``en``), ``0011/Angry/0011_000351.wav`` or with
    split sub-folders ``0011/Angry/train/0011_000351.wav`` (``train``, ``evaluation`` -> ``dev``,
    ``test``): speakers 0001-0010 Mandarin, 0011-0020 English; emotion folders Angry, Happy, Neutral, Sad,
    Surprise. Gender per speaker from the release's ReadMe speaker list (0001 F, 0002 F, 0003 F, 0004 M,
    0005 M, 0006 M, 0007 F, 0008 M, 0009 F, 0010 M, 0011 M, 0012 M, 0013 M, 0014 M, 0015 F, 0016 F,
    0017 F, 0018 F, 0019 F, 0020 M: five of each per language, as the ESD paper states). Extra columns:
    ``utterance`` (the 6-digit number), ``text`` from the speaker's transcript ``<spk>/<spk>.txt`` when
    present.
IEMOCAP (English, ``en``), ``Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav`` with labels
    from ``Session1/dialog/EmoEvaluation/Ses01F_impro01.txt`` lines ``[START - END]<TAB>UTT_ID<TAB>CODE
    <TAB>[V, A, D]``; codes neu, hap, exc, sad, ang, fru, fea, sur, dis, oth, xxx (xxx = no majority,
    oth = other: kept with a missing emotion). The speaker is the session and the letter that starts the
    utterance id's last segment (``F000`` -> the session's female actor): ``iemocap/Ses01F``; gender from
    that letter. ``exc`` stays ``excited`` unless ``merge_excited`` maps it to ``happy`` (the common
    four-class setup). Extra columns: ``session``, ``dialog``, ``mode`` (improvised/scripted),
    ``valence``, ``activation``, ``dominance``, ``dialog_start``, ``dialog_end`` (the turn's place in the
    whole dialog; the audio file is already the turn, so these are not segment bounds).

Audio files that do not follow the convention are left out and reported (count and first examples), never
dropped silently; a name that follows the convention with an unknown code is refused with the file named.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from cltm.corpus.importers import AUDIO_EXTENSIONS, CorpusImportError, _finish, register_importer

__all__ = [
    "EMOTIONS",
    "EMOTION_ALIASES",
    "PRESETS",
    "Preset",
    "PresetReport",
    "PresetResult",
    "PresetSettings",
    "PresetWarning",
    "combine_manifests",
    "import_cremad",
    "import_emodb",
    "import_esd",
    "import_iemocap",
    "import_ravdess",
    "load_preset",
    "normalize_emotion",
    "parse_emotions",
]

# ----------------------------------------------------------------------------------------------------------
# The shared emotion vocabulary
# ----------------------------------------------------------------------------------------------------------

#: The one emotion vocabulary every preset maps into.
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
    "boredom",
    "contempt",
    "frustration",
    "excited",
)

#: Other words for the same classes (accepted by ``--emotions`` and :func:`normalize_emotion`).
EMOTION_ALIASES: dict[str, str] = {
    "anger": "angry",
    "happiness": "happy",
    "joy": "happy",
    "sadness": "sad",
    "fear": "fearful",
    "anxiety": "fearful",
    "disgusted": "disgust",
    "surprise": "surprised",
    "bored": "boredom",
    "frustrated": "frustration",
    "excitement": "excited",
}


def normalize_emotion(word: str) -> str:
    """One emotion word -> its :data:`EMOTIONS` name (case and spaces ignored); ValueError if unknown."""
    text = str(word).strip().lower()
    name = EMOTION_ALIASES.get(text, text)
    if name not in EMOTIONS:
        raise ValueError(f"unknown emotion {word!r}; use one of {', '.join(EMOTIONS)}")
    return name


def parse_emotions(spec: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"angry,happy,neutral,sad"`` (or a list) -> normalised names in the given order; None -> None."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [normalize_emotion(item) for item in items if str(item).strip()]
    if not names:
        raise ValueError("--emotions is empty; give a comma-separated list such as angry,happy,neutral,sad")
    return tuple(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------------------
# Settings, report, result
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetSettings:
    """What to import. ``emotions``: keep only these (shared vocabulary); ``strict``: fail when any audio
    file does not follow the convention; ``merge_excited``: IEMOCAP ``exc`` -> ``happy``;
    ``vocal_channel``: RAVDESS ``speech`` or ``song`` only (None: both); ``demographics``: CREMA-D's
    ``VideoDemographics.csv`` when it is not in ROOT or its parent."""

    emotions: tuple[str, ...] | None = None
    strict: bool = False
    merge_excited: bool = False
    vocal_channel: str | None = None
    demographics: Path | None = None
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS


@dataclass
class PresetReport:
    """What an import left out and why. ``unmatched``: audio files whose name or place does not follow the
    convention; ``skipped``: reason -> files deliberately left out (video-only, no label, duplicates, ...);
    ``removed_by_emotion``: emotion (or None) -> rows removed by ``emotions``."""

    corpus: str
    rows: int = 0
    unmatched: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    removed_by_emotion: dict[str | None, int] = field(default_factory=dict)
    other_files: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, item: str) -> None:
        self.skipped.setdefault(reason, []).append(item)

    def lines(self, examples: int = 3) -> list[str]:
        """Human-readable lines, one per kind of problem, each with the count and the first examples."""

        def first(items: Sequence[str]) -> str:
            shown = ", ".join(items[:examples])
            return shown + (", ..." if len(items) > examples else "")

        out = []
        if self.unmatched:
            out.append(
                f"{len(self.unmatched)} audio file(s) do not follow the {self.corpus} naming convention and "
                f"were left out (see `cltm corpus import {self.corpus} --help`): {first(self.unmatched)}"
            )
        for reason, items in self.skipped.items():
            out.append(f"{len(items)} file(s) left out, {reason}: {first(items)}")
        if self.removed_by_emotion:
            parts = ", ".join(
                f"{'no emotion' if e is None else e} {n}"
                for e, n in sorted(self.removed_by_emotion.items(), key=lambda kv: str(kv[0]))
            )
            out.append(f"{sum(self.removed_by_emotion.values())} row(s) outside --emotions removed ({parts})")
        if self.other_files:
            kinds = ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in sorted(self.other_files.items()))
            out.append(f"ignored non-audio files: {kinds}")
        out.extend(self.warnings)
        return out


@dataclass
class PresetResult:
    """A validated manifest and the report of what was left out."""

    manifest: pl.DataFrame
    report: PresetReport


class PresetWarning(UserWarning):
    """Issued by the registered importers when files were left out and no ``report`` callback was given."""


@dataclass(frozen=True)
class Preset:
    """One corpus convention: ``read(root, settings, report)`` returns one dict per utterance."""

    name: str
    title: str
    read: Callable[[Path, PresetSettings, PresetReport], list[dict[str, Any]]]


#: name -> preset
PRESETS: dict[str, Preset] = {}


def _preset(name: str, title: str):
    def add(read):
        PRESETS[name] = Preset(name, title, read)
        return read

    return add


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------


def _walk(root: Path, settings: PresetSettings, report: PresetReport) -> list[Path]:
    """Audio files under ``root`` (hidden files and folders skipped), sorted; counts other files by suffix."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in settings.extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in suffixes:
                found.append(Path(dirpath) / name)
            else:
                report.other_files[suffix] = report.other_files.get(suffix, 0) + 1
    return found


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _unknown_code(path: Path, root: Path, what: str, code: str, known: Iterable[str]) -> CorpusImportError:
    return CorpusImportError(
        f"{path}: unknown {what} code {code!r} in {_rel(path, root)!r}; the convention knows "
        f"{', '.join(known)}. Rename or remove the file (or import it with `cltm corpus import table`)"
    )


def _row(corpus: str, stem: str, path: Path, **fields: Any) -> dict[str, Any]:
    return {"utt_id": f"{corpus}/{stem}", "path": os.path.abspath(path), "corpus": corpus, **fields}


def _dedupe(
    rows: list[dict[str, Any]], report: PresetReport, extensions: Sequence[str], root: Path
) -> list[dict]:
    """One row per utt_id: the same recording in two formats (CREMA-D ships AudioWAV and AudioMP3) keeps the
    format listed first in ``extensions``; the others are reported."""
    rank = {e.lower() if e.startswith(".") else f".{e.lower()}": i for i, e in enumerate(extensions)}
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["utt_id"]
        if key not in best:
            best[key] = row
            continue
        old, new = best[key], row
        keep, drop = (
            (new, old)
            if rank.get(Path(new["path"]).suffix.lower(), 99) < rank.get(Path(old["path"]).suffix.lower(), 99)
            else (old, new)
        )
        best[key] = keep
        report.skip(
            "same recording found twice (the other copy is kept)",
            Path(os.path.relpath(drop["path"], os.path.abspath(root))).as_posix(),
        )
    return list(best.values())


# ----------------------------------------------------------------------------------------------------------
# EmoDB
# ----------------------------------------------------------------------------------------------------------

EMODB_EMOTIONS: dict[str, str] = {
    "W": "angry",  # Wut / Ärger
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fearful",  # Angst
    "F": "happy",  # Freude
    "T": "sad",  # Trauer
    "N": "neutral",
}
#: speaker -> (gender, age), from the database's documentation
EMODB_SPEAKERS: dict[str, tuple[str, int]] = {
    "03": ("male", 31),
    "08": ("female", 34),
    "09": ("female", 21),
    "10": ("male", 32),
    "11": ("male", 26),
    "12": ("male", 30),
    "13": ("female", 32),
    "14": ("female", 35),
    "15": ("male", 25),
    "16": ("female", 31),
}
_EMODB_NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<code>[A-Za-z])(?P<version>[a-z])$")


@_preset("emodb", "Berlin Database of Emotional Speech (German)")
def _read_emodb(root: Path, settings: PresetSettings, report: PresetReport) -> list[dict[str, Any]]:
    rows = []
    unknown_speakers: set[str] = set()
    for path in _walk(root, settings, report):
        match = _EMODB_NAME.match(path.stem)
        if match is None:
            report.unmatched.append(_rel(path, root))
            continue
        code = match["code"]
        if code not in EMODB_EMOTIONS:
            raise _unknown_code(path, root, "emotion", code, EMODB_EMOTIONS)
        speaker = match["speaker"]
        gender, age = EMODB_SPEAKERS.get(speaker, (None, None))
        if speaker not in EMODB_SPEAKERS:
            unknown_speakers.add(speaker)
        rows.append(
            _row(
                "emodb", path.stem, path, language="de", speaker=f"emodb/{speaker}", gender=gender,
                emotion=EMODB_EMOTIONS[code], emotion_code=code, text_id=match["text"],
                version=match["version"], age=age,
            )
        )  # fmt: skip
    if unknown_speakers:
        report.warnings.append(
            f"EmoDB speaker(s) {', '.join(sorted(unknown_speakers))} are not in the database's speaker list "
            f"({', '.join(EMODB_SPEAKERS)}): their gender is left missing"
        )
    return rows


# ----------------------------------------------------------------------------------------------------------
# RAVDESS
# ----------------------------------------------------------------------------------------------------------

RAVDESS_MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
RAVDESS_CHANNELS = {"01": "speech", "02": "song"}
RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


@_preset("ravdess", "Ryerson Audio-Visual Database of Emotional Speech and Song (English)")
def _read_ravdess(root: Path, settings: PresetSettings, report: PresetReport) -> list[dict[str, Any]]:
    if settings.vocal_channel not in (None, "speech", "song"):
        raise CorpusImportError(f"vocal channel {settings.vocal_channel!r}: use speech or song (or both)")
    rows = []
    for path in _walk(root, settings, report):
        match = _RAVDESS_NAME.match(path.stem)
        if match is None:
            report.unmatched.append(_rel(path, root))
            continue
        modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
        fields = (
            ("modality", modality, RAVDESS_MODALITIES),
            ("vocal channel", channel, RAVDESS_CHANNELS),
            ("emotion", emotion, RAVDESS_EMOTIONS),
            ("intensity", intensity, RAVDESS_INTENSITIES),
            ("statement", statement, RAVDESS_STATEMENTS),
            ("repetition", repetition, ("01", "02")),
        )
        for what, code, known in fields:
            if code not in known:
                raise _unknown_code(path, root, what, code, known)
        if not 1 <= int(actor) <= 24:
            raise _unknown_code(path, root, "actor", actor, ("01", "...", "24"))
        if modality == "02":
            report.skip("video-only recordings (modality 02, no audio)", _rel(path, root))
            continue
        if settings.vocal_channel is not None and RAVDESS_CHANNELS[channel] != settings.vocal_channel:
            report.skip(f"not the {settings.vocal_channel} channel", _rel(path, root))
            continue
        rows.append(
            _row(
                "ravdess", path.stem, path, language="en", speaker=f"ravdess/{actor}",
                gender="male" if int(actor) % 2 else "female",
                emotion=RAVDESS_EMOTIONS[emotion], emotion_code=emotion,
                modality=RAVDESS_MODALITIES[modality], vocal_channel=RAVDESS_CHANNELS[channel],
                intensity=RAVDESS_INTENSITIES[intensity], statement=statement,
                text=RAVDESS_STATEMENTS[statement], repetition=int(repetition),
            )
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------------
# CREMA-D
# ----------------------------------------------------------------------------------------------------------

CREMAD_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
CREMAD_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMAD_DEMOGRAPHICS = "VideoDemographics.csv"
_CREMAD_NAME = re.compile(
    r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$"
)


def _cremad_demographics(root: Path, settings: PresetSettings) -> Path | None:
    if settings.demographics is not None:
        if not Path(settings.demographics).is_file():
            raise CorpusImportError(f"{settings.demographics}: demographics file not found")
        return Path(settings.demographics)
    for folder in (root, root.parent):
        if (folder / CREMAD_DEMOGRAPHICS).is_file():
            return folder / CREMAD_DEMOGRAPHICS
    return None


def _read_cremad_table(path: Path) -> dict[str, dict[str, Any]]:
    try:
        table = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise CorpusImportError(f"{path}: cannot read as CSV ({exc})") from exc
    missing = [c for c in ("ActorID", "Sex") if c not in table.columns]
    if missing:
        raise CorpusImportError(
            f"{path}: expected CREMA-D's columns ActorID, Age, Sex, Race, Ethnicity; missing "
            f"{', '.join(missing)}; it has {', '.join(table.columns)}"
        )
    out = {}
    for row in table.iter_rows(named=True):
        age = (row.get("Age") or "").strip()
        out[str(row["ActorID"]).strip()] = {
            "gender": row["Sex"],
            "age": int(age) if age.isdigit() else None,
            "race": row.get("Race"),
            "ethnicity": row.get("Ethnicity"),
        }
    return out


@_preset("cremad", "Crowd-sourced Emotional Multimodal Actors Dataset (English)")
def _read_cremad(root: Path, settings: PresetSettings, report: PresetReport) -> list[dict[str, Any]]:
    table_path = _cremad_demographics(root, settings)
    demographics = _read_cremad_table(table_path) if table_path is not None else {}
    if table_path is None:
        report.warnings.append(
            f"no {CREMAD_DEMOGRAPHICS} in {root} or its parent (pass --demographics FILE): gender is missing"
        )
    rows, unlisted = [], set()
    for path in _walk(root, settings, report):
        match = _CREMAD_NAME.match(path.stem)
        if match is None:
            report.unmatched.append(_rel(path, root))
            continue
        for what, code, known in (
            ("sentence", match["sentence"], CREMAD_SENTENCES),
            ("emotion", match["emotion"], CREMAD_EMOTIONS),
            ("level", match["level"], CREMAD_LEVELS),
        ):
            if code not in known:
                raise _unknown_code(path, root, what, code, known)
        actor = match["actor"]
        info = demographics.get(actor, {})
        if table_path is not None and actor not in demographics:
            unlisted.add(actor)
        rows.append(
            _row(
                "cremad", path.stem, path, language="en", speaker=f"cremad/{actor}",
                gender=info.get("gender"), emotion=CREMAD_EMOTIONS[match["emotion"]],
                emotion_code=match["emotion"], sentence=match["sentence"],
                text=CREMAD_SENTENCES[match["sentence"]], intensity=CREMAD_LEVELS[match["level"]],
                age=info.get("age"), race=info.get("race"), ethnicity=info.get("ethnicity"),
            )
        )  # fmt: skip
    if unlisted:
        report.warnings.append(
            f"actor(s) {', '.join(sorted(unlisted))} are not in {table_path}: their gender is missing"
        )
    return rows


# ----------------------------------------------------------------------------------------------------------
# ESD
# ----------------------------------------------------------------------------------------------------------

#: emotion folder (any case) -> shared vocabulary
ESD_EMOTIONS = {
    "angry": "angry",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprised",
}
ESD_SPLITS = {"train": "train", "evaluation": "dev", "test": "test"}
#: speaker -> (language, gender), from the ESD release's ReadMe speaker list
ESD_SPEAKERS: dict[str, tuple[str, str]] = {
    "0001": ("zh", "female"),
    "0002": ("zh", "female"),
    "0003": ("zh", "female"),
    "0004": ("zh", "male"),
    "0005": ("zh", "male"),
    "0006": ("zh", "male"),
    "0007": ("zh", "female"),
    "0008": ("zh", "male"),
    "0009": ("zh", "female"),
    "0010": ("zh", "male"),
    "0011": ("en", "male"),
    "0012": ("en", "male"),
    "0013": ("en", "male"),
    "0014": ("en", "male"),
    "0015": ("en", "female"),
    "0016": ("en", "female"),
    "0017": ("en", "female"),
    "0018": ("en", "female"),
    "0019": ("en", "female"),
    "0020": ("en", "male"),
}
_ESD_NAME = re.compile(r"^(?P<speaker>\d{4})_(?P<utterance>\d{6})$")


def _esd_transcript(speaker_dir: Path) -> dict[str, str]:
    """``<spk>/<spk>.txt`` (utt id, text, emotion; tab-separated) -> {utt id: text}; {} when absent."""
    path = speaker_dir / f"{speaker_dir.name}.txt"
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    # the Mandarin transcripts are not all UTF-8
    for encoding in ("utf-8-sig", "utf-16", "gb18030"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if text.strip() and "_" in text:
            break
    else:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 2 and _ESD_NAME.match(parts[0]):
            out[parts[0]] = parts[1].strip()
    return out


@_preset("esd", "Emotional Speech Dataset (Mandarin and English)")
def _read_esd(root: Path, settings: PresetSettings, report: PresetReport) -> list[dict[str, Any]]:
    rows = []
    transcripts: dict[Path, dict[str, str]] = {}
    for path in _walk(root, settings, report):
        match = _ESD_NAME.match(path.stem)
        folder = path.parent
        split = ESD_SPLITS.get(folder.name.lower())
        emotion_dir = folder.parent if split is not None else folder
        speaker_dir = emotion_dir.parent
        # the speaker's folder must agree with the file name: a file in the wrong folder is not trusted
        if match is None or speaker_dir.name != match["speaker"] or emotion_dir == root:
            report.unmatched.append(_rel(path, root))
            continue
        code = emotion_dir.name
        if code.lower() not in ESD_EMOTIONS:
            raise _unknown_code(path, root, "emotion folder", code, [e.capitalize() for e in ESD_EMOTIONS])
        speaker = match["speaker"]
        if speaker not in ESD_SPEAKERS:
            raise _unknown_code(path, root, "speaker", speaker, ("0001", "...", "0020"))
        language, gender = ESD_SPEAKERS[speaker]
        if speaker_dir not in transcripts:
            transcripts[speaker_dir] = _esd_transcript(speaker_dir)
        rows.append(
            _row(
                "esd", path.stem, path, language=language, speaker=f"esd/{speaker}", gender=gender,
                split=split, emotion=ESD_EMOTIONS[code.lower()], emotion_code=code,
                utterance=match["utterance"], text=transcripts[speaker_dir].get(path.stem),
            )
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------------------------------

IEMOCAP_EMOTIONS: dict[str, str | None] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustration",
    "fea": "fearful",
    "sur": "surprised",
    "dis": "disgust",
    "oth": None,  # "other": no class of the vocabulary
    "xxx": None,  # no majority among the evaluators
}
_IEMOCAP_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
# Ses01F_impro01_F000, Ses01F_script01_1_M012, Ses05M_script01_1b_F003: the dialog, then the speaker letter
_IEMOCAP_UTT = re.compile(
    r"^(?P<dialog>Ses(?P<session>\d{2})[FM]_(?P<mode>impro|script)\w*?)_(?P<letter>[FM])\w+$"
)
_SESSION_DIR = re.compile(r"^Session(\d+)$")


def _iemocap_labels(session_dir: Path) -> dict[str, dict[str, Any]]:
    """utt id -> label fields from ``dialog/EmoEvaluation/*.txt`` (category and dimension lines only)."""
    labels: dict[str, dict[str, Any]] = {}
    folder = session_dir / "dialog" / "EmoEvaluation"
    if not folder.is_dir():
        return labels
    for txt in sorted(p for p in folder.iterdir() if p.suffix == ".txt" and not p.name.startswith(".")):
        for number, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = _IEMOCAP_LINE.match(line.strip())
            if match is None:
                continue  # headers, blank lines and the per-evaluator lines (C-E1:, A-E1:, ...)
            code = match["code"]
            if code not in IEMOCAP_EMOTIONS:
                raise CorpusImportError(
                    f"{txt}:{number}: unknown emotion code {code!r} for {match['utt']}; IEMOCAP's codes are "
                    f"{', '.join(IEMOCAP_EMOTIONS)}"
                )
            try:
                vad = [float(v) for v in match["vad"].split(",")]
            except ValueError:
                vad = []
            if len(vad) != 3:
                raise CorpusImportError(
                    f"{txt}:{number}: expected [valence, activation, dominance] after {match['utt']}, "
                    f"found [{match['vad']}]"
                )
            labels[match["utt"]] = {
                "code": code,
                "valence": vad[0],
                "activation": vad[1],
                "dominance": vad[2],
                "dialog_start": float(match["start"]),
                "dialog_end": float(match["end"]),
                "source": f"{txt}:{number}",
            }
    return labels


@_preset("iemocap", "Interactive Emotional Dyadic Motion Capture database (English)")
def _read_iemocap(root: Path, settings: PresetSettings, report: PresetReport) -> list[dict[str, Any]]:
    sessions = sorted(p for p in root.iterdir() if p.is_dir() and _SESSION_DIR.match(p.name))
    if not sessions:
        raise CorpusImportError(
            f"{root}: no Session1 ... Session5 folder; expected ROOT/SessionN/sentences/wav/<dialog>/*.wav "
            "and ROOT/SessionN/dialog/EmoEvaluation/*.txt"
        )
    rows = []
    for session_dir in sessions:
        labels = _iemocap_labels(session_dir)
        wav_dir = session_dir / "sentences" / "wav"
        seen = set()
        audio = _walk(wav_dir, settings, report) if wav_dir.is_dir() else []
        if not audio:
            report.warnings.append(f"{session_dir.name}: no audio under {wav_dir}")
        if not labels:
            report.warnings.append(f"{session_dir.name}: no label lines in dialog/EmoEvaluation/*.txt")
        for path in audio:
            match = _IEMOCAP_UTT.match(path.stem)
            if match is None or path.parent.name != match["dialog"]:
                report.unmatched.append(_rel(path, root))
                continue
            label = labels.get(path.stem)
            if label is None:
                report.skip("no label line in dialog/EmoEvaluation", _rel(path, root))
                continue
            seen.add(path.stem)
            emotion = IEMOCAP_EMOTIONS[label["code"]]
            if emotion == "excited" and settings.merge_excited:
                emotion = "happy"
            session = int(match["session"])
            letter = match["letter"]
            rows.append(
                _row(
                    "iemocap", path.stem, path, language="en", speaker=f"iemocap/Ses{session:02d}{letter}",
                    gender="female" if letter == "F" else "male", emotion=emotion, emotion_code=label["code"],
                    session=session, dialog=match["dialog"],
                    mode="improvised" if match["mode"] == "impro" else "scripted",
                    valence=label["valence"], activation=label["activation"], dominance=label["dominance"],
                    dialog_start=label["dialog_start"], dialog_end=label["dialog_end"],
                )
            )  # fmt: skip
        for utt in sorted(set(labels) - seen):
            report.skip("labelled in EmoEvaluation but no audio file", f"{session_dir.name}/{utt}")
    return rows


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------


def load_preset(
    name: str, root: str | os.PathLike[str], settings: PresetSettings | None = None
) -> PresetResult:
    """Import corpus ``name`` (a key of :data:`PRESETS`) from ``root``: a validated manifest and a report."""
    if name not in PRESETS:
        raise CorpusImportError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    settings = settings or PresetSettings()
    root = Path(root)
    if not root.is_dir():
        raise CorpusImportError(
            f"{root}: not a directory (expected the {PRESETS[name].title} as distributed)"
        )
    report = PresetReport(corpus=name)
    rows = PRESETS[name].read(root, settings, report)
    if settings.strict and report.unmatched:
        raise CorpusImportError(
            f"{root}: " + report.lines()[0] + " (--strict: nothing written; drop --strict to skip them)"
        )
    rows = _dedupe(rows, report, settings.extensions, root)
    if not rows:
        examples = ", ".join(report.unmatched[:3])
        examples = f"; files found that do not match: {examples}" if examples else ""
        raise CorpusImportError(
            f"{root}: no audio file follows the {PRESETS[name].title} convention "
            f"(see `cltm corpus import {name} --help`){examples}"
        )
    df = pl.DataFrame(rows, infer_schema_length=None)
    # a label no file supplied (e.g. ESD text without transcripts) is all-null: give it a writable type
    df = df.with_columns(pl.col(c).cast(pl.String) for c, t in df.schema.items() if t == pl.Null)
    if "split" not in df.columns:
        df = df.with_columns(split=pl.lit(None, dtype=pl.String))
    if settings.emotions is not None:
        wanted = list(settings.emotions)
        keep = pl.col("emotion").is_in(wanted).fill_null(False)
        removed = df.filter(~keep).group_by("emotion").len()
        report.removed_by_emotion = dict(removed.iter_rows())
        absent = [e for e in wanted if e not in set(df["emotion"].drop_nulls().to_list())]
        if absent:
            report.warnings.append(f"the {name} corpus has no {', '.join(absent)} utterances")
        df = df.filter(keep)
        if df.height == 0:
            raise CorpusImportError(
                f"{root}: no utterance of {', '.join(wanted)} in this corpus; its emotions: "
                f"{', '.join(sorted(set(r['emotion'] for r in rows if r['emotion'])))}"
            )
    df = _finish(df.sort("utt_id"), root)
    report.rows = df.height
    return PresetResult(df, report)


def _import(
    name: str, root: Any, report: Callable[[PresetReport], None] | None, **options: Any
) -> pl.DataFrame:
    emotions = options.pop("emotions", None)
    if emotions is not None:
        try:
            options["emotions"] = parse_emotions(emotions)
        except ValueError as exc:
            raise CorpusImportError(str(exc)) from exc
    if options.get("demographics") is not None:
        options["demographics"] = Path(options["demographics"])
    result = load_preset(name, root, replace(PresetSettings(), **options))
    if report is not None:
        report(result.report)
    else:
        for line in result.report.lines():
            warnings.warn(line, PresetWarning, stacklevel=3)
    return result.manifest


@register_importer("emodb")
def import_emodb(
    root: str | os.PathLike[str],
    *,
    emotions: str | Sequence[str] | None = None,
    strict: bool = False,
    report: Callable[[PresetReport], None] | None = None,
) -> pl.DataFrame:
    """Import EmoDB (``wav/03a01Fa.wav``: speaker, text, emotion letter, version); see the module doc."""
    return _import("emodb", root, report, emotions=emotions, strict=strict)


@register_importer("ravdess")
def import_ravdess(
    root: str | os.PathLike[str],
    *,
    emotions: str | Sequence[str] | None = None,
    vocal_channel: str | None = None,
    strict: bool = False,
    report: Callable[[PresetReport], None] | None = None,
) -> pl.DataFrame:
    """Import RAVDESS (``Actor_01/03-01-05-01-02-01-01.wav``, seven coded fields); see the module doc."""
    return _import("ravdess", root, report, emotions=emotions, vocal_channel=vocal_channel, strict=strict)


@register_importer("cremad")
def import_cremad(
    root: str | os.PathLike[str],
    *,
    emotions: str | Sequence[str] | None = None,
    demographics: str | os.PathLike[str] | None = None,
    strict: bool = False,
    report: Callable[[PresetReport], None] | None = None,
) -> pl.DataFrame:
    """Import CREMA-D (``AudioWAV/1001_DFA_ANG_XX.wav`` + ``VideoDemographics.csv``); see the module doc."""
    return _import("cremad", root, report, emotions=emotions, demographics=demographics, strict=strict)


@register_importer("esd")
def import_esd(
    root: str | os.PathLike[str],
    *,
    emotions: str | Sequence[str] | None = None,
    strict: bool = False,
    report: Callable[[PresetReport], None] | None = None,
) -> pl.DataFrame:
    """Import ESD (``0011/Angry/[train/]0011_000351.wav``, Mandarin and English); see the module doc."""
    return _import("esd", root, report, emotions=emotions, strict=strict)


@register_importer("iemocap")
def import_iemocap(
    root: str | os.PathLike[str],
    *,
    emotions: str | Sequence[str] | None = None,
    merge_excited: bool = False,
    strict: bool = False,
    report: Callable[[PresetReport], None] | None = None,
) -> pl.DataFrame:
    """Import IEMOCAP (``SessionN/sentences/wav`` + ``dialog/EmoEvaluation``); see the module doc."""
    return _import("iemocap", root, report, emotions=emotions, merge_excited=merge_excited, strict=strict)


def combine_manifests(paths: Sequence[str | os.PathLike[str]]) -> pl.DataFrame:
    """Several manifests (e.g. one per corpus preset) -> one, rows in the given order, columns united.

    Each file is read and validated (relative paths resolved against its own directory); a label column
    missing from one file is null for its rows. A ``utt_id`` in more than one file is refused, naming both.
    """
    from cltm.corpus.manifest import read_manifest

    if not paths:
        raise CorpusImportError("no manifest to combine")
    frames, owner = [], {}
    for path in paths:
        frame = read_manifest(path)
        for utt in frame["utt_id"].to_list():
            if utt in owner:
                raise CorpusImportError(
                    f"utt_id {utt!r} is in both {owner[utt]} and {path}; each utterance may appear once"
                )
            owner[utt] = path
        frames.append(frame)
    try:
        df = pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:  # the same label column with incompatible types
        raise CorpusImportError(f"cannot combine {', '.join(map(str, paths))}: {exc}") from exc
    return _finish(df, ", ".join(map(str, paths)))
