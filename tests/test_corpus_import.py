"""Importers (cltm.corpus.importers): Common Voice release directory, mapped tables, folder trees."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from cltm.corpus import ManifestError, read_manifest, write_manifest
from cltm.corpus.importers import (
    IMPORTERS,
    CorpusImportError,
    add_durations,
    import_commonvoice,
    import_corpus,
    import_folder,
    import_hf_dataset,
    import_lhotse,
    import_table,
    missing_files,
    parse_mapping,
)

SR = 16000


def write_clip(path: Path, seconds: float = 0.25, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, format=fmt)


# ---------------------------------------------------------------------------------------------- Common Voice
# Two locales in the two TSV dialects Common Voice has shipped:
#   "ca": an old release (<= v15): gender male/female/other, column `accent`, no `locale` column;
#   "zh-HK": a new release (>= v16): gender male_masculine/female_feminine/..., `accents`, `locale`, ...
OLD_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "segment"]
NEW_HEADER = [
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
    "gender", "accents", "variant", "locale", "segment",
]  # fmt: skip
GENDERS = {
    "ca": ["male", "female", "other", ""],
    "zh-HK": ["male_masculine", "female_feminine", "non-binary", "do_not_wish_to_say", "", "intersex"],
}
EXPECTED_GENDER = {
    "male": "male", "female": "female", "other": "other", "": None,
    "male_masculine": "male", "female_feminine": "female", "non-binary": "non-binary",
    "do_not_wish_to_say": "do_not_wish_to_say", "intersex": "intersex",
}  # fmt: skip


def build_common_voice(root: Path, clips_per_file: int = 3, extra_validated: int = 2) -> list[dict]:
    """Write a fake release; return the rows an importer should produce (split None = only in validated)."""
    expected = []
    for locale, genders in GENDERS.items():
        locale_dir = root / locale
        new = locale == "zh-HK"
        header = NEW_HEADER if new else OLD_HEADER
        split_rows: list[list[str]] = []
        for split in ("train", "dev", "test", "validated"):
            count = extra_validated if split == "validated" else clips_per_file
            lines = []
            for i in range(count):
                clip = f"common_voice_{locale}_{split}_{i}.mp3"
                write_clip(locale_dir / "clips" / clip, fmt="MP3")
                gender = genders[(i + len(split)) % len(genders)]
                speaker = f"{locale}-client-{(i + len(split)) % 2}"
                values = {
                    "client_id": speaker, "path": clip, "sentence": f'She said "hi" {i}',
                    "sentence_id": f"sid{i}", "sentence_domain": "", "up_votes": "2", "down_votes": "0",
                    "age": "twenties", "gender": gender, "accent": "", "accents": "", "variant": "",
                    "locale": locale, "segment": "",
                }  # fmt: skip
                lines.append([values[c] for c in header])
                expected.append(
                    {
                        "utt_id": clip[: -len(".mp3")],
                        "path": os.path.abspath(locale_dir / "clips" / clip),
                        "language": locale,
                        "speaker": speaker,
                        "gender": EXPECTED_GENDER[gender],
                        "split": None if split == "validated" else split,
                    }
                )
            if split == "validated":
                lines = split_rows + lines  # validated.tsv also lists every clip of the split files
            else:
                split_rows += lines
            (locale_dir / f"{split}.tsv").write_text(
                "\n".join("\t".join(row) for row in [header, *lines]) + "\n", encoding="utf-8"
            )
    return expected


KEY_COLUMNS = ["utt_id", "path", "language", "speaker", "gender", "split"]


def as_rows(df: pl.DataFrame) -> list[tuple]:
    return sorted(df.select(KEY_COLUMNS).iter_rows(), key=lambda r: r[0])


def rows_of(expected: list[dict], *, validated: bool = False, locales=None) -> list[tuple]:
    keep = [
        r for r in expected
        if (validated or r["split"] is not None) and (locales is None or r["language"] in locales)
    ]  # fmt: skip
    return sorted((tuple(r[c] for c in KEY_COLUMNS) for r in keep), key=lambda r: r[0])


@pytest.fixture(scope="module")
def common_voice(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("cv") / "cv-corpus-17.0"
    return root, build_common_voice(root)


def test_common_voice_release_imports_both_gender_vocabularies(common_voice):
    root, expected = common_voice
    df = import_commonvoice(root)
    assert as_rows(df) == rows_of(expected)
    assert set(df["split"]) == {"train", "dev", "test"}  # dev stays dev
    # label columns survive; the old `accent` is renamed to today's `accents`; votes become numbers
    assert {"sentence", "age", "accents", "up_votes"} <= set(df.columns)
    assert df["up_votes"].dtype == pl.Int64
    assert df.filter(pl.col("language") == "ca")["sentence"].to_list()[0].startswith('She said "hi"')


def test_common_voice_clips_are_found_and_playable(common_voice):
    root, _ = common_voice
    df = import_commonvoice(root, locales=["ca"])
    assert missing_files(df).height == 0
    audio, sr = sf.read(df["path"][0])
    assert sr == SR and audio.size > 0.2 * SR


def test_common_voice_locale_selection_and_validated_rows(common_voice):
    root, expected = common_voice
    df = import_commonvoice(root, locales=["zh-HK"], include_validated=True)
    assert as_rows(df) == rows_of(expected, validated=True, locales={"zh-HK"})
    as_text = import_commonvoice(root, locales="zh-HK", splits="train,test")  # "a,b" strings work too
    assert as_rows(as_text) == as_rows(df.filter(pl.col("split").is_in(["train", "test"])))
    assert df.filter(pl.col("split").is_null()).height == 2  # only the clips in no split file


def test_clip_durations_tsv_fills_durations(tmp_path):
    build_common_voice(tmp_path, clips_per_file=2, extra_validated=1)
    clips = sorted(p.name for p in (tmp_path / "zh-HK" / "clips").iterdir())
    milliseconds = {clip: (0 if i == 0 else 200 + 10 * i) for i, clip in enumerate(clips)}
    lines = ["clip\tduration[ms]", *(f"{clip}\t{ms}" for clip, ms in milliseconds.items())]
    (tmp_path / "zh-HK" / "clip_durations.tsv").write_text("\n".join(lines) + "\n")
    df = import_commonvoice(tmp_path, include_validated=True)
    got = dict(zip(df["utt_id"], df["duration"], strict=True))
    for clip, ms in milliseconds.items():
        assert got[clip.removesuffix(".mp3")] == (None if ms == 0 else ms / 1000)  # 0 ms: unknown, not 0 s
    catalan = df.filter(pl.col("language") == "ca")
    assert catalan.height == 7 and catalan["duration"].null_count() == 7  # no table: unknown


def test_a_single_locale_directory_is_accepted(common_voice):
    root, expected = common_voice
    df = import_commonvoice(root / "ca")  # old release: no locale column, language comes from the dir name
    assert as_rows(df) == rows_of(expected, locales={"ca"})


def test_common_voice_result_round_trips_through_a_manifest_file(common_voice, tmp_path):
    root, _ = common_voice
    df = import_commonvoice(root)
    back = read_manifest(write_manifest(df, tmp_path / "corpus.parquet"))
    assert as_rows(back) == as_rows(df)


def test_unknown_locale_lists_the_locales_found(common_voice):
    root, _ = common_voice
    with pytest.raises(CorpusImportError) as info:
        import_commonvoice(root, locales=["ca", "xx"])
    message = str(info.value)
    assert "xx" in message and "ca, zh-HK" in message


def test_missing_tsv_names_the_file_expected(tmp_path):
    build_common_voice(tmp_path, clips_per_file=1, extra_validated=1)
    (tmp_path / "ca" / "dev.tsv").unlink()
    with pytest.raises(CorpusImportError, match=str(tmp_path / "ca" / "dev.tsv")):
        import_commonvoice(tmp_path, locales=["ca"])
    (tmp_path / "zh-HK" / "validated.tsv").unlink()
    import_commonvoice(tmp_path, locales=["zh-HK"])  # validated.tsv is only needed when asked for
    with pytest.raises(CorpusImportError, match="validated.tsv"):
        import_commonvoice(tmp_path, locales=["zh-HK"], include_validated=True)


def test_a_directory_without_common_voice_files_is_a_clear_error(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(CorpusImportError, match="train.tsv"):
        import_commonvoice(tmp_path)
    with pytest.raises(CorpusImportError, match="not a directory"):
        import_commonvoice(tmp_path / "nope")


def test_an_empty_tsv_or_no_split_is_a_clear_error(tmp_path):
    build_common_voice(tmp_path, clips_per_file=1, extra_validated=1)
    with pytest.raises(CorpusImportError, match="nothing to import"):
        import_commonvoice(tmp_path, splits=())
    only_validated = import_commonvoice(tmp_path, locales=["ca"], splits=(), include_validated=True)
    assert only_validated.height == 4 and only_validated["split"].null_count() == 4  # 3 split clips + 1
    (tmp_path / "ca" / "test.tsv").write_bytes(b"")
    with pytest.raises(CorpusImportError, match=re.escape(str(tmp_path / "ca" / "test.tsv"))):
        import_commonvoice(tmp_path, locales=["ca"])


def test_a_tsv_without_client_id_names_the_file_and_its_columns(tmp_path):
    locale = tmp_path / "eu"
    for split in ("train", "dev", "test"):
        (locale / "clips").mkdir(parents=True, exist_ok=True)
        (locale / f"{split}.tsv").write_text("speaker\tpath\nx\ta.mp3\n")
    with pytest.raises(CorpusImportError) as info:
        import_commonvoice(tmp_path)
    message = str(info.value)
    assert "train.tsv" in message and "client_id" in message and "speaker, path" in message


# ---------------------------------------------------------------------------------------------- tables


def write_table(path: Path, df: pl.DataFrame) -> Path:
    {".csv": lambda: df.write_csv(path), ".tsv": lambda: df.write_csv(path, separator="\t"),
     ".parquet": lambda: df.write_parquet(path)}[path.suffix]()  # fmt: skip
    return path


def source_table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "file": ["audio/a.wav", "audio/b.wav", "/abs/c.wav", "audio/d.flac"],
            "client": ["007", "007", "9", "9"],  # leading zeros must survive: ids are text
            "sex": ["F", "male_masculine", "female", None],
            "lang": ["de", "de", "fr", "fr"],
            "emotion": ["happy", "sad", "neutral", "happy"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_table_import_with_a_mapping(tmp_path, suffix):
    table = write_table(tmp_path / f"meta{suffix}", source_table())
    df = import_table(table, mapping="path=file, speaker=client,gender=sex,language=lang")
    src = source_table()
    expected_paths = [p if os.path.isabs(p) else str(tmp_path / p) for p in src["file"]]
    assert df["path"].to_list() == expected_paths
    assert df["utt_id"].to_list() == ["a", "b", "c", "d"]  # from the file names, no utt_id column given
    assert df["speaker"].to_list() == ["007", "007", "9", "9"]
    assert df["gender"].to_list() == ["female", "male", "female", None]
    assert df["language"].to_list() == src["lang"].to_list()
    assert df["emotion"].to_list() == src["emotion"].to_list()  # unmapped columns are kept
    assert not {"file", "client", "sex", "lang"} & set(df.columns)


def test_table_mapping_to_a_missing_column_lists_the_available_ones(tmp_path):
    table = write_table(tmp_path / "meta.csv", source_table())
    with pytest.raises(CorpusImportError) as info:
        import_table(table, mapping={"path": "file", "speaker": "client_id", "language": "lang"})
    message = str(info.value)
    assert "speaker=client_id" in message and "file, client, sex, lang, emotion" in message


def test_constant_language_for_a_table_without_one(tmp_path):
    table = write_table(tmp_path / "meta.parquet", source_table().drop("lang"))
    df = import_table(table, mapping={"path": "file"}, language="eu")
    assert df["language"].to_list() == ["eu"] * 4
    with pytest.raises(CorpusImportError, match="language"):
        import_table(table, mapping={"path": "file"})  # no language at all
    with_lang = write_table(tmp_path / "meta2.parquet", source_table())
    with pytest.raises(CorpusImportError, match="already has a language column"):
        import_table(with_lang, mapping={"path": "file", "language": "lang"}, language="eu")


def test_table_validation_problems_name_the_rows(tmp_path):
    src = source_table().with_columns(pl.Series("file", ["x/a.wav", "y/a.wav", None, "d.wav"]))
    table = write_table(tmp_path / "meta.csv", src)
    with pytest.raises(ManifestError) as info:
        import_table(table, mapping={"path": "file", "language": "lang"})
    rows = {(p.row, p.column) for p in info.value.problems}
    assert rows == {(0, "utt_id"), (2, "utt_id"), (2, "path")}  # a/a duplicate; row 2 has no file at all


def test_parse_mapping():
    assert parse_mapping("speaker=client_id, path = file") == {"speaker": "client_id", "path": "file"}
    assert parse_mapping(None) == {}
    for bad in ("speaker", "speaker=", "=x", "a=b,a=c"):
        with pytest.raises(CorpusImportError):
            parse_mapping(bad)


# ---------------------------------------------------------------------------------------------- folder tree


def build_tree(root: Path) -> list[tuple[str, str, str, str]]:
    files = {
        "en/alice/one.wav": "WAV",
        "en/alice/ch2/two.flac": "FLAC",
        "en/bob/three.ogg": "OGG",
        "de/karl/vier.WAV": "WAV",
        "de/alice/fünf.mp3": "MP3",
    }
    for rel, fmt in files.items():
        write_clip(root / rel, fmt=fmt)
    # things that are not utterances
    (root / "README.txt").write_text("x")
    (root / "en" / "stray.wav").write_bytes(b"")  # not inside a speaker folder
    (root / "en" / "alice" / "notes.txt").write_text("x")
    (root / "en" / "alice" / ".hidden.wav").write_bytes(b"")
    expected = []
    for rel in files:
        language, speaker = rel.split("/")[:2]
        expected.append((os.path.splitext(rel)[0], os.path.abspath(root / rel), language, speaker))
    return sorted(expected)


def test_folder_tree_import(tmp_path):
    expected = build_tree(tmp_path)
    df = import_folder(tmp_path)
    assert sorted(df.select("utt_id", "path", "language", "speaker").iter_rows()) == expected
    assert df["gender"].to_list() == [None] * len(expected)  # unknown without a gender table
    assert df["utt_id"].to_list() == sorted(df["utt_id"].to_list())  # listing order does not matter


def test_folder_tree_with_a_gender_table(tmp_path):
    build_tree(tmp_path / "corpus")
    genders = tmp_path / "genders.csv"
    genders.write_text("speaker,gender\nalice,Female\nkarl,male_masculine\n")
    df = import_folder(tmp_path / "corpus", genders=genders)
    got = dict(zip(df["utt_id"], df["gender"], strict=True))
    for utt_id, gender in got.items():
        speaker = utt_id.split("/")[1]
        assert gender == {"alice": "female", "karl": "male"}.get(speaker)  # bob is not listed -> null
    per_language = import_folder(
        tmp_path / "corpus",
        genders=pl.DataFrame({"language": ["en", "de"], "speaker": ["alice", "alice"], "gender": ["f", "m"]}),
    )
    pairs = set(per_language.filter(pl.col("speaker") == "alice").select("language", "gender").iter_rows())
    assert pairs == {("en", "female"), ("de", "male")}


def test_folder_errors(tmp_path):
    (tmp_path / "en" / "alice").mkdir(parents=True)
    with pytest.raises(CorpusImportError, match="no audio files"):
        import_folder(tmp_path)
    write_clip(tmp_path / "en" / "alice" / "a.wav")
    bad = tmp_path / "g.csv"
    bad.write_text("spk,sex\nalice,f\n")
    with pytest.raises(CorpusImportError, match="speaker and gender"):
        import_folder(tmp_path, genders=bad)


# ---------------------------------------------------------------------------------------------- helpers


def test_registry_and_dispatch(tmp_path):
    assert {"commonvoice", "table", "folder"} <= set(IMPORTERS)
    write_clip(tmp_path / "en" / "s1" / "a.wav")
    assert import_corpus("folder", tmp_path)["utt_id"].to_list() == ["en/s1/a"]
    with pytest.raises(CorpusImportError, match="commonvoice"):
        import_corpus("nope", tmp_path)


def test_add_durations_reads_file_headers(tmp_path):
    lengths = {"a.wav": 0.5, "b.flac": 1.25}
    for name, seconds in lengths.items():
        write_clip(tmp_path / "en" / "s" / name, seconds=seconds)
    (tmp_path / "en" / "s" / "broken.wav").write_bytes(b"not audio")
    df = add_durations(import_folder(tmp_path))
    got = dict(zip(df["utt_id"], df["duration"], strict=True))
    for name in lengths:
        samples, sr = sf.read(tmp_path / "en" / "s" / name)
        assert got[f"en/s/{os.path.splitext(name)[0]}"] == pytest.approx(len(samples) / sr)
    assert got["en/s/broken"] is None
    segments = df.with_columns(start=pl.lit(0.1), end=pl.lit(None, dtype=pl.Float64))
    recomputed = add_durations(segments, overwrite=True)["duration"]
    got_segments = dict(zip(segments["utt_id"], recomputed, strict=True))
    assert got_segments["en/s/a"] == pytest.approx(0.4)
    assert add_durations(segments)["duration"].to_list() == df["duration"].to_list()  # kept unless overwrite


def test_lhotse_manifests_import_when_lhotse_is_installed(tmp_path):
    if importlib.util.find_spec("lhotse") is None:
        with pytest.raises(CorpusImportError, match=r"pip install 'cltm\[lhotse\]'"):
            import_lhotse(tmp_path / "recordings.jsonl.gz")
        return
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    for name, seconds in (("r1", 1.0), ("r2", 0.5)):
        write_clip(tmp_path / "audio" / f"{name}.wav", seconds=seconds)
    recordings = RecordingSet.from_recordings(
        Recording.from_file(tmp_path / "audio" / f"{name}.wav", recording_id=name) for name in ("r1", "r2")
    )
    supervisions = SupervisionSet.from_segments(
        [
            SupervisionSegment("s1", "r1", start=0.0, duration=0.4, language="fr", speaker="A", gender="F"),
            SupervisionSegment("s2", "r1", start=0.5, duration=0.5, language="fr", speaker="B", gender="M",
                               custom={"emotion": "sad"}),
            SupervisionSegment("s3", "r2", start=0.1, duration=0.3, speaker="A"),
        ]
    )  # fmt: skip
    recordings.to_file(tmp_path / "recordings.jsonl.gz")
    supervisions.to_file(tmp_path / "supervisions.jsonl.gz")
    df = import_lhotse(
        tmp_path / "recordings.jsonl.gz", supervisions=tmp_path / "supervisions.jsonl.gz", language="de"
    )
    assert df.select("utt_id", "language", "speaker", "gender", "start", "end").rows() == [
        ("s1", "fr", "A", "female", 0.0, 0.4),
        ("s2", "fr", "B", "male", 0.5, 1.0),
        ("s3", "de", "A", None, 0.1, pytest.approx(0.4)),
    ]
    assert df["path"].to_list() == [
        os.path.abspath(tmp_path / "audio" / f) for f in ("r1.wav", "r1.wav", "r2.wav")
    ]
    assert df["emotion"].to_list() == [None, "sad", None]
    whole = import_lhotse(tmp_path / "recordings.jsonl.gz", language="de")
    assert whole.select("utt_id", "duration").rows() == [("r1", 1.0), ("r2", 0.5)]


def test_hf_datasets_import_when_datasets_is_installed(tmp_path):
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(CorpusImportError, match=r"pip install 'cltm\[datasets\]'"):
            import_hf_dataset(tmp_path / "dataset")
        return
    import datasets

    paths = []
    for name in ("a", "b", "c"):
        write_clip(tmp_path / "audio" / f"{name}.wav")
        paths.append(str(tmp_path / "audio" / f"{name}.wav"))
    table = {
        "file": paths,
        "spk": ["x", "y", "x"],
        "sex": ["female", "male_masculine", ""],
        "id": ["a", "b", "c"],
    }
    full = datasets.Dataset.from_dict(table).cast_column("file", datasets.Audio())
    splits = datasets.DatasetDict({"train": full.select([2, 0]), "validation": full.select([1])})
    # in memory the Audio column holds the files' paths: kept as they are
    df = import_hf_dataset(splits, mapping="path=file,speaker=spk,gender=sex,utt_id=id", language="sw")
    assert df.select("utt_id", "path", "speaker", "gender", "language", "split").rows() == [
        ("c", paths[2], "x", None, "sw", "train"),
        ("a", paths[0], "x", "female", "sw", "train"),
        ("b", paths[1], "y", "male", "sw", "dev"),  # validation -> dev
    ]
    # save_to_disk embeds the audio bytes (the path keeps only the file name): written out to audio_dir
    splits.save_to_disk(str(tmp_path / "dataset"))
    with pytest.raises(CorpusImportError, match=r"embedded bytes.*--audio-dir"):
        import_hf_dataset(tmp_path / "dataset", mapping="path=file,utt_id=id", language="sw")
    out_dir = tmp_path / "extracted"
    df = import_hf_dataset(
        tmp_path / "dataset",
        mapping="path=file,speaker=spk,gender=sex,utt_id=id",
        language="sw",
        audio_dir=out_dir,
    )
    assert df["utt_id"].to_list() == ["c", "a", "b"] and df["split"].to_list() == ["train", "train", "dev"]
    for written, original in zip(df["path"].to_list(), [paths[2], paths[0], paths[1]], strict=True):
        assert written.startswith(str(out_dir)) and written.endswith(Path(original).name)
        assert Path(written).read_bytes() == Path(original).read_bytes()
    first = Path(df["path"][0]).stat().st_mtime_ns
    import_hf_dataset(tmp_path / "dataset", mapping="path=file,utt_id=id", language="sw", audio_dir=out_dir)
    assert Path(df["path"][0]).stat().st_mtime_ns == first  # re-import reuses the files
    only_dev = import_hf_dataset(
        tmp_path / "dataset",
        mapping="path=file,utt_id=id",
        language="sw",
        split="validation",
        audio_dir=out_dir,
    )
    assert only_dev["utt_id"].to_list() == ["b"]
    with pytest.raises(CorpusImportError, match="available: file, spk, sex, id"):
        import_hf_dataset(tmp_path / "dataset", mapping="path=audio", language="sw", audio_dir=out_dir)


def test_hf_import_of_a_local_dataset_repository(tmp_path):
    """A Hub repository downloaded as files (Parquet under data/, audio embedded as bytes) loads through
    load_dataset, the code path of a Hub name; save_to_disk is not needed."""
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(CorpusImportError, match=r"pip install 'cltm\[datasets\]'"):
            import_hf_dataset(tmp_path / "repo")
        return
    import datasets

    originals = []
    for name in ("a", "b"):
        write_clip(tmp_path / "src" / f"{name}.wav")
        originals.append((tmp_path / "src" / f"{name}.wav").read_bytes())
    rows = {
        "audio": [{"bytes": data, "path": f"{n}.wav"} for n, data in zip("ab", originals, strict=True)],
        "client_id": ["x", "y"],
        "id": ["a", "b"],
    }
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    table.to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(CorpusImportError, match="--audio-dir"):
        import_hf_dataset(repo, mapping="utt_id=id,speaker=client_id", language="sw")
    df = import_hf_dataset(
        repo, mapping="utt_id=id,speaker=client_id", language="sw", audio_dir=tmp_path / "out"
    )
    assert df.select("utt_id", "speaker", "split").rows() == [("a", "x", "test"), ("b", "y", "test")]
    assert [Path(p).read_bytes() for p in df["path"].to_list()] == originals
    with pytest.raises(CorpusImportError, match="could not load it as a dataset"):
        import_hf_dataset(tmp_path / "empty-folder-that-is-no-dataset", language="sw")


@pytest.mark.parametrize(
    ("function", "package", "extra"),
    [(import_lhotse, "lhotse", "lhotse"), (import_hf_dataset, "datasets", "datasets")],
)
def test_optional_importers_say_what_to_install(tmp_path, function, package, extra):
    if importlib.util.find_spec(package) is not None:
        # with the package installed the same call must get past the guard (and fail on the missing input)
        with pytest.raises(Exception) as info:
            function(tmp_path / "missing")
        assert f"cltm[{extra}]" not in str(info.value)
    else:
        with pytest.raises(CorpusImportError, match=rf"pip install 'cltm\[{extra}\]'"):
            function(tmp_path / "missing")


def test_a_locale_shared_as_only_validated_tsv_imports_with_splits_validated(tmp_path):
    """Issue 15 item 9: validated.tsv + clips/ only (a common way to share a subset)."""
    build_common_voice(tmp_path, clips_per_file=1, extra_validated=1)
    for split in ("train", "dev", "test"):
        (tmp_path / "ca" / f"{split}.tsv").unlink()
    # the default splits name the missing files and the fix
    with pytest.raises(
        CorpusImportError, match=r"train\.tsv.*ca: validated\.tsv is there.*--splits validated"
    ):
        import_commonvoice(tmp_path, locales=["ca"])
    df = import_commonvoice(tmp_path, locales=["ca"], splits=["validated"])
    reference = import_commonvoice(tmp_path, locales=["ca"], splits=(), include_validated=True)
    assert as_rows(df) == as_rows(reference) and df.height == 4 and df["split"].null_count() == 4
    # the same through the CLI
    from typer.testing import CliRunner

    from cltm.cli import app

    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(
        app,
        [
            "corpus",
            "import",
            "commonvoice",
            str(tmp_path),
            "--locales",
            "ca",
            "--splits",
            "validated",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).height == 4
