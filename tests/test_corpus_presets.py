"""Emotional-speech corpus presets (cltm.corpus.presets) and `cltm corpus info --task` (cltm.corpus.info).

Each test builds a fake corpus tree whose files are named exactly as the corpus names them (tiny valid WAVs),
including the corpus's edge cases, and checks the labels parsed row by row.
"""

from __future__ import annotations

import random
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cltm.cli import app
from cltm.corpus import read_manifest, write_manifest
from cltm.corpus.importers import IMPORTERS, CorpusImportError, import_corpus
from cltm.corpus.info import class_balance, class_shortfalls, task_classes
from cltm.corpus.presets import (
    CREMAD_EMOTIONS,
    EMODB_EMOTIONS,
    EMOTIONS,
    ESD_EMOTIONS,
    IEMOCAP_EMOTIONS,
    PRESETS,
    RAVDESS_EMOTIONS,
    PresetSettings,
    PresetWarning,
    load_preset,
    normalize_emotion,
    parse_emotions,
)

SR = 16000
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def wav(path: Path, seconds: float = 0.05) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    return path


def rows_by_id(df: pl.DataFrame) -> dict[str, dict]:
    return {row["utt_id"]: row for row in df.iter_rows(named=True)}


def collect(name: str, root: Path, **options):
    """Run a registered preset importer, returning (manifest, the report it handed back)."""
    reports = []
    df = import_corpus(name, root, report=reports.append, **options)
    assert len(reports) == 1
    return df, reports[0]


# ---------------------------------------------------------------------------------------------- vocabulary


def test_every_preset_maps_into_the_one_vocabulary():
    for table in (EMODB_EMOTIONS, RAVDESS_EMOTIONS, CREMAD_EMOTIONS, ESD_EMOTIONS, IEMOCAP_EMOTIONS):
        assert {v for v in table.values() if v is not None} <= set(EMOTIONS)
    assert set(PRESETS) == {"emodb", "ravdess", "cremad", "esd", "iemocap"}
    assert set(PRESETS) <= set(IMPORTERS)


def test_emotion_words_normalise_and_unknown_ones_are_refused():
    assert [normalize_emotion(w) for w in ("Anger", " happiness", "SADNESS", "fear", "surprise")] == [
        "angry",
        "happy",
        "sad",
        "fearful",
        "surprised",
    ]
    assert parse_emotions("anger, happy,neutral,sad,angry") == ("angry", "happy", "neutral", "sad")
    assert parse_emotions(None) is None
    with pytest.raises(ValueError, match="unknown emotion 'joyful'"):
        parse_emotions("angry,joyful")
    with pytest.raises(ValueError, match="empty"):
        parse_emotions(" , ")


# ---------------------------------------------------------------------------------------------- EmoDB


def build_emodb(root: Path) -> None:
    for name in ("03a01Fa", "08b02Wb", "16a04Lc", "12b10Ta", "09a05Ea", "13b01Aa", "15a07Nd"):
        wav(root / "wav" / f"{name}.wav")
    wav(root / "wav" / "03a01Fa_copy.wav")  # not the convention
    wav(root / "wav" / "notes.wav")
    (root / "lablaut").mkdir()
    (root / "lablaut" / "03a01Fa.lab").write_text("label file, not audio")


def test_emodb_labels_gender_by_speaker_and_bad_names_reported(tmp_path):
    build_emodb(tmp_path)
    df, report = collect("emodb", tmp_path)
    rows = rows_by_id(df)
    assert set(rows) == {
        f"emodb/{n}" for n in ("03a01Fa", "08b02Wb", "16a04Lc", "12b10Ta", "09a05Ea", "13b01Aa", "15a07Nd")
    }
    first = rows["emodb/03a01Fa"]
    assert first["path"] == str((tmp_path / "wav" / "03a01Fa.wav").absolute())
    assert (first["language"], first["speaker"], first["gender"], first["age"]) == (
        "de",
        "emodb/03",
        "male",
        31,
    )
    assert (first["emotion"], first["emotion_code"], first["text_id"], first["version"]) == (
        "happy",
        "F",
        "a01",
        "a",
    )
    expected = {
        "08b02Wb": ("female", "angry", "W", "b02", "b"),
        "16a04Lc": ("female", "boredom", "L", "a04", "c"),
        "12b10Ta": ("male", "sad", "T", "b10", "a"),
        "09a05Ea": ("female", "disgust", "E", "a05", "a"),
        "13b01Aa": ("female", "fearful", "A", "b01", "a"),
        "15a07Nd": ("male", "neutral", "N", "a07", "d"),
    }
    for stem, values in expected.items():
        row = rows[f"emodb/{stem}"]
        assert (row["gender"], row["emotion"], row["emotion_code"], row["text_id"], row["version"]) == values
    assert sorted(report.unmatched) == ["wav/03a01Fa_copy.wav", "wav/notes.wav"]
    assert report.other_files == {".lab": 1}
    assert "2 audio file(s) do not follow the emodb naming convention" in report.lines()[0]
    assert report.rows == 7


def test_emodb_unknown_emotion_letter_is_refused_with_the_file_named(tmp_path):
    wav(tmp_path / "wav" / "03a01Fa.wav")
    wav(tmp_path / "wav" / "03a01Xa.wav")
    with pytest.raises(CorpusImportError, match=r"03a01Xa\.wav.*unknown emotion code 'X'"):
        import_corpus("emodb", tmp_path)


def test_emodb_speaker_outside_the_list_keeps_a_missing_gender_with_a_warning(tmp_path):
    wav(tmp_path / "wav" / "05a01Na.wav")
    df, report = collect("emodb", tmp_path)
    assert df["gender"].to_list() == [None] and df["speaker"].to_list() == ["emodb/05"]
    assert any("05" in w and "gender is left missing" in w for w in report.warnings)


def test_strict_refuses_files_outside_the_convention_and_writes_nothing(tmp_path):
    build_emodb(tmp_path)
    with pytest.raises(CorpusImportError, match="--strict"):
        import_corpus("emodb", tmp_path, strict=True)


def test_without_a_report_callback_the_left_out_files_are_warned_about(tmp_path):
    build_emodb(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import_corpus("emodb", tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, PresetWarning)]
    assert any("2 audio file(s) do not follow the emodb naming convention" in m for m in messages)
    assert "ignored non-audio files: 1 .lab" in messages


def test_a_tree_with_no_matching_file_is_refused_with_examples(tmp_path):
    wav(tmp_path / "a.wav")
    with pytest.raises(CorpusImportError, match="no audio file follows.*a.wav"):
        import_corpus("emodb", tmp_path)


# ---------------------------------------------------------------------------------------------- RAVDESS


def build_ravdess(root: Path) -> None:
    wav(root / "Actor_01" / "03-01-05-01-02-01-01.wav")  # speech, angry, normal, "dogs", rep 1, actor 1
    wav(root / "Actor_02" / "03-02-03-02-01-02-02.wav")  # song, happy, strong, "kids", rep 2, actor 2
    wav(root / "Actor_24" / "03-01-01-01-01-01-24.wav")  # speech, neutral
    wav(root / "Actor_13" / "03-01-02-02-02-02-13.wav")  # speech, calm, strong
    wav(root / "Actor_02" / "02-01-08-01-01-01-02.wav")  # video-only: skipped and reported
    wav(root / "Actor_01" / "03-01-05-01-02-01.wav")  # six fields: not the convention
    (root / "Actor_01" / "01-01-05-01-02-01-01.mp4").write_bytes(b"\0")  # the video release: ignored


def test_ravdess_fields_song_channel_and_video_only(tmp_path):
    build_ravdess(tmp_path)
    df, report = collect("ravdess", tmp_path)
    rows = rows_by_id(df)
    assert set(rows) == {
        "ravdess/03-01-05-01-02-01-01",
        "ravdess/03-02-03-02-01-02-02",
        "ravdess/03-01-01-01-01-01-24",
        "ravdess/03-01-02-02-02-02-13",
    }
    speech = rows["ravdess/03-01-05-01-02-01-01"]
    assert {k: speech[k] for k in ("language", "speaker", "gender", "emotion", "emotion_code")} == {
        "language": "en",
        "speaker": "ravdess/01",
        "gender": "male",
        "emotion": "angry",
        "emotion_code": "05",
    }
    assert (speech["modality"], speech["vocal_channel"], speech["intensity"]) == (
        "audio-only",
        "speech",
        "normal",
    )
    assert (speech["statement"], speech["text"], speech["repetition"]) == (
        "02",
        "Dogs are sitting by the door",
        1,
    )
    song = rows["ravdess/03-02-03-02-01-02-02"]
    assert (song["vocal_channel"], song["emotion"], song["intensity"], song["gender"]) == (
        "song",
        "happy",
        "strong",
        "female",
    )
    assert (song["text"], song["repetition"], song["speaker"]) == (
        "Kids are talking by the door",
        2,
        "ravdess/02",
    )
    assert rows["ravdess/03-01-01-01-01-01-24"]["gender"] == "female"
    assert rows["ravdess/03-01-02-02-02-02-13"]["gender"] == "male"
    assert rows["ravdess/03-01-02-02-02-02-13"]["emotion"] == "calm"
    assert report.unmatched == ["Actor_01/03-01-05-01-02-01.wav"]
    video = [items for reason, items in report.skipped.items() if "video-only" in reason]
    assert video == [["Actor_02/02-01-08-01-01-01-02.wav"]]
    assert report.other_files == {".mp4": 1}

    speech_only, _ = collect("ravdess", tmp_path, vocal_channel="speech")
    assert set(speech_only["vocal_channel"]) == {"speech"} and speech_only.height == 3


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("03-01-09-01-01-01-01", "emotion"),
        ("03-03-01-01-01-01-01", "vocal channel"),
        ("03-01-01-03-01-01-01", "intensity"),
        ("03-01-01-01-01-01-25", "actor"),
    ],
)
def test_ravdess_unknown_codes_are_refused(tmp_path, name, what):
    wav(tmp_path / "Actor_01" / f"{name}.wav")
    with pytest.raises(CorpusImportError, match=rf"{name}\.wav.*unknown {what} code"):
        import_corpus("ravdess", tmp_path)


# ---------------------------------------------------------------------------------------------- CREMA-D

DEMOGRAPHICS = (
    '"ActorID","Age","Sex","Race","Ethnicity"\n'
    '1001,51,"Male","Caucasian","Not Hispanic"\n'
    '1002,21,"Female","Caucasian","Not Hispanic"\n'
)


def build_cremad(root: Path, demographics: bool = True) -> None:
    for stem in (
        "1001_DFA_ANG_XX",
        "1002_IEO_HAP_HI",
        "1002_IEO_SAD_LO",
        "1091_WSI_NEU_MD",
        "1001_TSI_FEA_XX",
        "1002_ITS_DIS_XX",
    ):
        wav(root / "AudioWAV" / f"{stem}.wav")
    # the repository also ships AudioMP3: the same recording twice (written as WAV bytes, never decoded here)
    wav(root / "AudioMP3" / "1001_DFA_ANG_XX.mp3")
    wav(root / "AudioWAV" / "1001_DFA_ANG.wav")
    if demographics:
        (root / "VideoDemographics.csv").write_text(DEMOGRAPHICS)


def test_cremad_labels_levels_and_demographics(tmp_path):
    build_cremad(tmp_path)
    df, report = collect("cremad", tmp_path)
    rows = rows_by_id(df)
    assert len(rows) == 6
    first = rows["cremad/1001_DFA_ANG_XX"]
    assert first["path"].endswith("AudioWAV/1001_DFA_ANG_XX.wav")  # .wav kept over the .mp3 copy
    assert (first["speaker"], first["gender"], first["age"], first["language"]) == (
        "cremad/1001",
        "male",
        51,
        "en",
    )
    assert (
        first["emotion"],
        first["emotion_code"],
        first["intensity"],
        first["sentence"],
        first["text"],
    ) == (
        "angry",
        "ANG",
        "unspecified",
        "DFA",
        "Don't forget a jacket",
    )
    assert [
        rows[f"cremad/{s}"]["intensity"] for s in ("1002_IEO_HAP_HI", "1002_IEO_SAD_LO", "1091_WSI_NEU_MD")
    ] == [
        "high",
        "low",
        "medium",
    ]
    assert [
        rows[f"cremad/{s}"]["emotion"] for s in ("1002_IEO_HAP_HI", "1001_TSI_FEA_XX", "1002_ITS_DIS_XX")
    ] == [
        "happy",
        "fearful",
        "disgust",
    ]
    assert rows["cremad/1002_IEO_SAD_LO"]["gender"] == "female"
    assert rows["cremad/1091_WSI_NEU_MD"]["gender"] is None  # not in the demographics table
    assert any("1091" in w and "gender is missing" in w for w in report.warnings)
    assert report.unmatched == ["AudioWAV/1001_DFA_ANG.wav"]
    dupes = [items for reason, items in report.skipped.items() if "twice" in reason]
    assert dupes == [["AudioMP3/1001_DFA_ANG_XX.mp3"]]


def test_cremad_without_demographics_warns_and_leaves_gender_missing(tmp_path):
    build_cremad(tmp_path, demographics=False)
    df, report = collect("cremad", tmp_path)
    assert df["gender"].null_count() == df.height == 6
    assert any("VideoDemographics.csv" in w for w in report.warnings)
    # given explicitly, from elsewhere
    elsewhere = tmp_path / "meta.csv"
    elsewhere.write_text(DEMOGRAPHICS)
    df, _ = collect("cremad", tmp_path / "AudioWAV", demographics=elsewhere)
    assert rows_by_id(df)["cremad/1002_IEO_HAP_HI"]["gender"] == "female"


def test_cremad_demographics_next_to_the_audio_folder_are_found(tmp_path):
    build_cremad(tmp_path)
    df, report = collect("cremad", tmp_path / "AudioWAV")  # the table sits in the parent
    assert rows_by_id(df)["cremad/1001_DFA_ANG_XX"]["gender"] == "male"


def test_cremad_unknown_emotion_is_refused(tmp_path):
    wav(tmp_path / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
    with pytest.raises(CorpusImportError, match=r"1001_DFA_XYZ_XX\.wav.*unknown emotion code 'XYZ'"):
        import_corpus("cremad", tmp_path)


# ---------------------------------------------------------------------------------------------- ESD


def build_esd(root: Path) -> None:
    wav(root / "0001" / "Angry" / "0001_000351.wav")  # release without split folders
    wav(root / "0001" / "Neutral" / "0001_000001.wav")
    wav(root / "0011" / "Happy" / "train" / "0011_000701.wav")
    wav(root / "0015" / "Surprise" / "evaluation" / "0015_001401.wav")
    wav(root / "0020" / "Sad" / "test" / "0020_001051.wav")
    wav(root / "0011" / "Angry" / "0012_000351.wav")  # another speaker's file in 0011's folder
    (root / "0011" / "0011.txt").write_text(
        "0011_000701\tThe nine the eggs, I keep.\tHappy\n", encoding="utf-8"
    )
    (root / "0001" / "0001.txt").write_bytes(
        "0001_000001\t打远一看，它们的确很美。\t中立\n".encode("gb18030")
    )


def test_esd_languages_genders_splits_and_transcripts(tmp_path):
    build_esd(tmp_path)
    df, report = collect("esd", tmp_path)
    rows = rows_by_id(df)
    got = {
        u: (
            r["language"],
            r["speaker"],
            r["gender"],
            r["split"],
            r["emotion"],
            r["emotion_code"],
            r["utterance"],
        )
        for u, r in rows.items()
    }
    assert got == {
        "esd/0001_000351": ("zh", "esd/0001", "female", None, "angry", "Angry", "000351"),
        "esd/0001_000001": ("zh", "esd/0001", "female", None, "neutral", "Neutral", "000001"),
        "esd/0011_000701": ("en", "esd/0011", "male", "train", "happy", "Happy", "000701"),
        "esd/0015_001401": ("en", "esd/0015", "female", "dev", "surprised", "Surprise", "001401"),
        "esd/0020_001051": ("en", "esd/0020", "male", "test", "sad", "Sad", "001051"),
    }
    assert rows["esd/0011_000701"]["text"] == "The nine the eggs, I keep."
    assert rows["esd/0001_000001"]["text"] == "打远一看，它们的确很美。"
    assert rows["esd/0015_001401"]["text"] is None
    assert report.unmatched == ["0011/Angry/0012_000351.wav"]


def test_esd_unknown_emotion_folder_or_speaker_is_refused(tmp_path):
    wav(tmp_path / "0011" / "Bored" / "0011_000001.wav")
    with pytest.raises(CorpusImportError, match=r"0011_000001\.wav.*unknown emotion folder code 'Bored'"):
        import_corpus("esd", tmp_path)
    other = tmp_path / "other"
    wav(other / "0021" / "Angry" / "0021_000351.wav")
    with pytest.raises(CorpusImportError, match="unknown speaker code '0021'"):
        import_corpus("esd", other)


# ---------------------------------------------------------------------------------------------- IEMOCAP

EVAL_1 = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tNeutral;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M001\texc\t[4.0000, 3.5000, 3.0000]
C-E2:\tExcited;\t()

[14.8872 - 18.0175]\tSes01F_impro01_F002\txxx\t[2.0000, 3.0000, 3.5000]

[20.0000 - 21.5000]\tSes01F_impro01_M003\toth\t[3.0000, 3.0000, 3.0000]

[30.0000 - 31.0000]\tSes01F_impro01_F004\tang\t[1.5000, 4.0000, 4.5000]
"""
EVAL_SCRIPT = "[1.0000 - 2.5000]\tSes01F_script01_1_M000\tfru\t[2.0000, 3.5000, 3.0000]\n"
EVAL_2 = "[0.5000 - 1.5000]\tSes02M_impro03_F000\tsad\t[1.5000, 2.0000, 2.0000]\n"


def build_iemocap(root: Path) -> None:
    s1 = root / "Session1"
    for utt in (
        "Ses01F_impro01_F000",
        "Ses01F_impro01_M001",
        "Ses01F_impro01_F002",
        "Ses01F_impro01_M003",
        "Ses01F_impro01_F009",
    ):
        wav(s1 / "sentences" / "wav" / "Ses01F_impro01" / f"{utt}.wav")
    wav(s1 / "sentences" / "wav" / "Ses01F_script01_1" / "Ses01F_script01_1_M000.wav")
    wav(s1 / "sentences" / "wav" / "Ses01F_impro01" / "notes.wav")
    wav(s1 / "dialog" / "wav" / "Ses01F_impro01.wav")  # the whole dialog: not an utterance
    (s1 / "dialog" / "EmoEvaluation" / "Categorical").mkdir(parents=True)
    (s1 / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(EVAL_1)
    (s1 / "dialog" / "EmoEvaluation" / "Ses01F_script01_1.txt").write_text(EVAL_SCRIPT)
    (s1 / "dialog" / "EmoEvaluation" / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text("not read\n")
    s2 = root / "Session2"
    wav(s2 / "sentences" / "wav" / "Ses02M_impro03" / "Ses02M_impro03_F000.wav")
    (s2 / "dialog" / "EmoEvaluation").mkdir(parents=True)
    (s2 / "dialog" / "EmoEvaluation" / "Ses02M_impro03.txt").write_text(EVAL_2)


def test_iemocap_labels_speakers_and_edge_cases(tmp_path):
    build_iemocap(tmp_path)
    df, report = collect("iemocap", tmp_path)
    rows = rows_by_id(df)
    got = {
        u: (r["speaker"], r["gender"], r["emotion"], r["emotion_code"], r["session"], r["mode"])
        for u, r in rows.items()
    }
    assert got == {
        "iemocap/Ses01F_impro01_F000": ("iemocap/Ses01F", "female", "neutral", "neu", 1, "improvised"),
        "iemocap/Ses01F_impro01_M001": ("iemocap/Ses01M", "male", "excited", "exc", 1, "improvised"),
        "iemocap/Ses01F_impro01_F002": ("iemocap/Ses01F", "female", None, "xxx", 1, "improvised"),
        "iemocap/Ses01F_impro01_M003": ("iemocap/Ses01M", "male", None, "oth", 1, "improvised"),
        "iemocap/Ses01F_script01_1_M000": ("iemocap/Ses01M", "male", "frustration", "fru", 1, "scripted"),
        "iemocap/Ses02M_impro03_F000": ("iemocap/Ses02F", "female", "sad", "sad", 2, "improvised"),
    }
    first = rows["iemocap/Ses01F_impro01_F000"]
    assert (first["valence"], first["activation"], first["dominance"]) == (2.5, 2.5, 2.5)
    assert (first["dialog_start"], first["dialog_end"], first["dialog"]) == (6.2901, 8.2357, "Ses01F_impro01")
    assert rows["iemocap/Ses01F_script01_1_M000"]["dialog"] == "Ses01F_script01_1"
    assert rows["iemocap/Ses02M_impro03_F000"]["valence"] == 1.5
    assert "start" not in df.columns  # the turn times are not segment bounds inside the sentence wav
    assert report.unmatched == ["Session1/sentences/wav/Ses01F_impro01/notes.wav"]
    assert report.skipped["no label line in dialog/EmoEvaluation"] == [
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F009.wav"
    ]
    assert report.skipped["labelled in EmoEvaluation but no audio file"] == ["Session1/Ses01F_impro01_F004"]

    merged, _ = collect("iemocap", tmp_path, merge_excited=True)
    merged_rows = rows_by_id(merged)
    assert merged_rows["iemocap/Ses01F_impro01_M001"]["emotion"] == "happy"
    assert merged_rows["iemocap/Ses01F_impro01_M001"]["emotion_code"] == "exc"

    four, report4 = collect("iemocap", tmp_path, merge_excited=True, emotions="angry,happy,neutral,sad")
    assert sorted(four["utt_id"]) == [
        "iemocap/Ses01F_impro01_F000",
        "iemocap/Ses01F_impro01_M001",
        "iemocap/Ses02M_impro03_F000",
    ]
    assert report4.removed_by_emotion == {None: 2, "frustration": 1}
    assert any("no angry" in w for w in report4.warnings)


def test_iemocap_unknown_code_is_refused_with_file_and_line(tmp_path):
    build_iemocap(tmp_path)
    (tmp_path / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_impro03.txt").write_text(
        "\n[0.5000 - 1.5000]\tSes02M_impro03_F000\tjoy\t[1.5000, 2.0000, 2.0000]\n"
    )
    with pytest.raises(CorpusImportError, match=r"Ses02M_impro03\.txt:2: unknown emotion code 'joy'"):
        import_corpus("iemocap", tmp_path)


def test_iemocap_without_sessions_is_refused(tmp_path):
    with pytest.raises(CorpusImportError, match="no Session1"):
        import_corpus("iemocap", tmp_path)


# ---------------------------------------------------------------------------------------------- common subset


def test_emotions_subset_gives_the_same_classes_across_corpora(tmp_path):
    build_emodb(tmp_path / "emodb")
    build_ravdess(tmp_path / "ravdess")
    build_esd(tmp_path / "esd")
    subset = ("angry", "happy", "neutral", "sad")
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        for name in ("emodb", "ravdess", "esd"):
            full = import_corpus(name, tmp_path / name)
            kept = import_corpus(name, tmp_path / name, emotions="anger,happiness,neutral,sadness")
            # exactly the rows of the subset, nothing else changed
            assert kept.equals(full.filter(pl.col("emotion").is_in(subset)))
            frames.append(kept)
    together = pl.concat(frames, how="diagonal_relaxed")
    assert set(together["emotion"]) == set(subset)
    assert together["utt_id"].is_unique().all()
    assert set(together["language"]) == {"de", "en", "zh"}
    path = write_manifest(together, tmp_path / "emotion.parquet")
    assert read_manifest(path).height == together.height


def test_emotions_outside_the_vocabulary_are_refused_and_absent_ones_warned(tmp_path):
    build_emodb(tmp_path)
    with pytest.raises(CorpusImportError, match="unknown emotion 'joyful'"):
        import_corpus("emodb", tmp_path, emotions="angry,joyful")
    df, report = collect("emodb", tmp_path, emotions="calm,angry")
    assert df["emotion"].to_list() == ["angry"]
    assert any("no calm" in w for w in report.warnings)
    with pytest.raises(CorpusImportError, match="no utterance of calm"):
        load_preset("emodb", tmp_path, PresetSettings(emotions=("calm",)))


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_preset_import_writes_the_manifest_and_reports_left_out_files(tmp_path):
    build_emodb(tmp_path / "emodb")
    out = tmp_path / "emodb.parquet"
    result = invoke(
        "corpus", "import", "emodb", tmp_path / "emodb", "--out", out, "--emotions", "angry,happy"
    )
    assert result.exit_code == 0, result.output
    assert "2 audio file(s) do not follow the emodb naming convention" in result.output
    assert re.search(r"\b2 utterances\b", result.output)
    assert sorted(read_manifest(out)["emotion"]) == ["angry", "happy"]

    strict = invoke(
        "corpus", "import", "emodb", tmp_path / "emodb", "--out", tmp_path / "s.parquet", "--strict"
    )
    assert strict.exit_code == 2 and "--strict" in strict.output and not (tmp_path / "s.parquet").exists()


def test_cli_preset_errors_are_one_line_without_traceback(tmp_path):
    wav(tmp_path / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
    result = invoke("corpus", "import", "cremad", tmp_path, "--out", tmp_path / "c.parquet")
    assert (
        result.exit_code == 2 and "1001_DFA_XYZ_XX.wav" in result.output and "Traceback" not in result.output
    )
    bad = invoke(
        "corpus", "import", "emodb", tmp_path, "--out", tmp_path / "c.parquet", "--emotions", "joyful"
    )
    assert bad.exit_code == 2 and "unknown emotion 'joyful'" in bad.output  # a bad option: usage
    for name in PRESETS:
        assert invoke("corpus", "import", name, "--help").exit_code == 0


def test_cli_iemocap_merge_excited_and_ravdess_channel(tmp_path):
    build_iemocap(tmp_path / "iemocap")
    out = tmp_path / "iemocap.parquet"
    result = invoke(
        "corpus", "import", "iemocap", tmp_path / "iemocap", "--out", out, "--merge-excited", "-q"
    )
    assert result.exit_code == 0, result.output
    assert "happy" in set(read_manifest(out)["emotion"].drop_nulls())
    build_ravdess(tmp_path / "ravdess")
    out = tmp_path / "ravdess.parquet"
    result = invoke("corpus", "import", "ravdess", tmp_path / "ravdess", "--out", out, "--channel", "song")
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["vocal_channel"].to_list() == ["song"]


# ---------------------------------------------------------------------------------------------- info --task


def reference_balance(rows: list[dict], label: str, by: list[str], classes: list[str]) -> dict:
    counts: dict[tuple, Counter] = {}
    for row in rows:
        key = tuple(row.get(c) for c in by)
        value = row[label] if row[label] in classes else "(other)"
        counts.setdefault(key, Counter())[value] += 1
    return counts


def random_manifest(seed: int, with_split: bool) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(rng.randint(20, 120)):
        rows.append(
            {
                "utt_id": f"u{i}",
                "path": f"/a/{i}.wav",
                "language": rng.choice(["de", "en", "zh"]),
                "gender": rng.choice(["female", "male", None]),
                "split": rng.choice(["train", "train", "test"]) if with_split else None,
                "emotion": rng.choice(["angry", "happy", "neutral", "sad", None]),
            }
        )
    return pl.DataFrame(
        rows, schema_overrides={"split": pl.String, "gender": pl.String, "emotion": pl.String}
    )


@pytest.mark.parametrize("seed", range(6))
def test_class_balance_matches_a_plain_count(seed):
    df = random_manifest(seed, with_split=seed % 2 == 0)
    df, label, classes = task_classes(df, "emotion")
    assert classes == sorted(set(df["emotion"].drop_nulls()))
    by = ["language", "gender", "split"]
    table = class_balance(df, label, by=by, classes=classes)
    expected = reference_balance(df.to_dicts(), label, by, classes)
    assert table.height == len(expected)
    for row in table.iter_rows(named=True):
        counts = expected[tuple(row[c] for c in by)]
        for c in classes:
            assert row[c] == counts[c]
        assert row.get("(other)", 0) == counts["(other)"]
        assert row["total"] == sum(counts.values())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 3, 8])
def test_class_shortfalls_match_the_plan_rule(seed, n):
    df = random_manifest(seed, with_split=seed % 2 == 0)
    classes = ["angry", "happy", "neutral", "sad"]
    found = {s.language: s for s in class_shortfalls(df, "emotion", n, classes=classes)}
    has_split = df["split"].null_count() == 0
    for language in ("de", "en", "zh"):
        rows = [r for r in df.to_dicts() if r["language"] == language]
        if not rows:
            assert language not in found
            continue
        train = [r for r in rows if r["split"] == "train"] if has_split else rows
        short = {c: sum(r["emotion"] == c for r in train) for c in classes}
        short = {c: k for c, k in short.items() if k < 2 * n}
        no_test = [
            c
            for c in classes
            if has_split and not any(r["split"] == "test" and r["emotion"] == c for r in rows)
        ]
        if short or no_test:
            assert found[language].have == short
            assert found[language].pool == ("train split" if has_split else "all rows (no split)")
            assert list(found[language].test_missing) == no_test
        else:
            assert language not in found


def test_task_classes_for_gender_speaker_and_missing_columns():
    df = pl.DataFrame({"utt_id": ["a"], "path": ["/a"], "language": ["en"], "gender": ["other"]})
    assert task_classes(df, "gender")[1:] == ("gender", ["female", "male"])
    with pytest.raises(ValueError, match="verification"):
        task_classes(df, "speaker")
    with pytest.raises(ValueError, match="needs the manifest column 'emotion'"):
        task_classes(df, "emotion")
    with pytest.raises(ValueError, match="floating-point"):
        task_classes(df.with_columns(valence=pl.lit(2.5)), "valence")


def test_cli_info_task_shows_the_balance_and_warns_for_short_languages(tmp_path):
    build_emodb(tmp_path / "emodb")
    build_esd(tmp_path / "esd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        df = pl.concat(
            [import_corpus("emodb", tmp_path / "emodb"), import_corpus("esd", tmp_path / "esd")],
            how="diagonal_relaxed",
        )
    path = write_manifest(df, tmp_path / "m.parquet")
    save = tmp_path / "balance.csv"
    result = invoke(
        "corpus", "info", path, "--task", "emotion", "--n", "1", "--by", "language", "--save", save
    )
    assert result.exit_code == 0, result.output
    assert "task emotion: utterances per emotion class" in result.output
    # EmoDB has one file per emotion here, and N=1 needs 2N = 2 training rows per class
    assert re.search(r"warning: de: needs 2 training rows per class .* angry 1", result.output)
    # ESD's split folders cover only some rows: the test split is not checked, the pool is every row
    assert re.search(r"warning: en: .*no test rows of", result.output) is None
    assert "all rows (split incomplete) has only" in result.output
    saved = pl.read_csv(save)
    de = saved.filter(pl.col("language") == "de").row(0, named=True)
    assert (de["angry"], de["boredom"], de["surprised"], de["total"]) == (1, 1, 0, 7)

    assert invoke("corpus", "info", path, "--n", "3").exit_code == 2
    unknown = invoke("corpus", "info", path, "--task", "valence")
    assert unknown.exit_code == 2 and "needs the manifest column 'valence'" in unknown.output


# ---------------------------------------------------------------------------------------------- combine


def test_cli_combine_unites_corpora_and_refuses_a_repeated_utt_id(tmp_path):
    build_emodb(tmp_path / "emodb")
    build_cremad(tmp_path / "cremad")
    build_iemocap(tmp_path / "iemocap")
    parts = []
    for name in ("emodb", "cremad", "iemocap"):
        out = tmp_path / f"{name}.parquet"
        assert invoke("corpus", "import", name, tmp_path / name, "--out", out, "-q").exit_code == 0
        parts.append(out)
    combined = tmp_path / "all.parquet"
    result = invoke("corpus", "combine", *parts, "--out", combined)
    assert result.exit_code == 0, result.output
    df = read_manifest(combined)
    expected = pl.concat([read_manifest(p) for p in parts], how="diagonal_relaxed")
    assert df["utt_id"].to_list() == expected["utt_id"].to_list()
    assert df["emotion"].to_list() == expected["emotion"].to_list()
    assert df["corpus"].unique().sort().to_list() == ["cremad", "emodb", "iemocap"]
    # a column one corpus lacks is null for its rows, and kept for the others
    assert df.filter(pl.col("corpus") == "emodb")["valence"].null_count() == 7
    assert df.filter(pl.col("corpus") == "iemocap")["valence"].null_count() == 0
    again = invoke("corpus", "combine", parts[0], parts[0], "--out", tmp_path / "twice.parquet")
    assert again.exit_code == 2 and "utt_id 'emodb/03a01Fa' is in both" in again.output
