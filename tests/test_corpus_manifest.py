"""Manifest schema, validation, I/O, gender normalisation and hashing (cltm.corpus.manifest)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cltm.corpus import (
    REQUIRED_COLUMNS,
    ManifestError,
    manifest_hash,
    normalize_gender,
    normalize_genders,
    read_manifest,
    validate,
    write_manifest,
)
from cltm.corpus.manifest import resolve_paths


def good_frame(n: int = 6) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(n)],
            "path": [f"clips/u{i}.wav" for i in range(n)],
            "language": ["ca" if i % 2 else "es" for i in range(n)],
            "speaker": [f"s{i // 2}" for i in range(n)],
            "gender": ["female" if i % 3 else "male" for i in range(n)],
            "split": [("train", "dev", "test")[i % 3] for i in range(n)],
            "duration": [1.0 + i for i in range(n)],
            "emotion": ["happy"] * n,
        }
    )


def problem_cells(err: ManifestError) -> set[tuple[int | None, str | None]]:
    return {(p.row, p.column) for p in err.problems}


# ---------------------------------------------------------------------------------------------- validation


def test_valid_frame_passes_and_is_returned_unchanged():
    df = good_frame()
    assert validate(df) is df


def test_every_problem_is_reported_with_its_row():
    df = good_frame(8).with_columns(
        pl.Series("utt_id", ["u0", "u1", "u0", None, "u4", "u5", "u6", "u7"]),
        pl.Series("path", ["a", "", "c", "d", None, "f", "g", "h"]),
        pl.Series("split", ["train", "validation", None, "test", "dev", "train", "train", "TEST"]),
        pl.Series("duration", ["1.5", "abc", "-2", None, "3", "inf", "0", "2"]),
        pl.Series("start", [0.0, None, None, None, None, 2.0, None, 1.0]),
        pl.Series("end", [1.0, None, None, None, None, 2.0, None, None]),
    )
    with pytest.raises(ManifestError) as info:
        validate(df)
    expected = {
        (0, "utt_id"),  # duplicate of row 2
        (1, "path"),  # empty
        (1, "split"),  # unknown value
        (1, "duration"),  # not a number
        (2, "duration"),  # negative
        (3, "utt_id"),  # null
        (4, "path"),  # null
        (5, "duration"),  # not finite
        (5, "start"),  # start == end
        (6, "duration"),  # zero
        (7, "split"),  # case matters: 'TEST' is not a split
    }
    assert problem_cells(info.value) == expected
    message = str(info.value)
    assert "row 0 (utt_id 'u0'): duplicate utt_id, also in row(s) 2" in message
    assert "'validation' is not one of train, dev, test" in message
    assert "'abc' is not a number" in message
    assert "row 3: utt_id is missing" in message
    assert isinstance(info.value, ValueError)


def test_missing_required_columns_are_named_with_the_columns_present():
    df = good_frame().drop("path", "language")
    with pytest.raises(ManifestError) as info:
        validate(df)
    message = str(info.value)
    assert "path" in message and "language" in message
    assert "utt_id, speaker" in message  # what the frame does have, so the fix is obvious


def test_wrong_column_types_are_reported():
    df = good_frame(3).with_columns(pl.Series("language", [1, 2, 3]), pl.Series("duration", [[1.0]] * 3))
    with pytest.raises(ManifestError) as info:
        validate(df)
    assert problem_cells(info.value) == {(None, "language"), (None, "duration")}


def test_integer_ids_are_accepted_and_conformed_to_text(tmp_path):
    df = good_frame(3).with_columns(pl.Series("utt_id", [10, 11, 12]), pl.Series("speaker", [1, 1, 2]))
    validate(df)
    out = write_manifest(df, tmp_path / "m.parquet")
    back = pl.read_parquet(out)
    assert back["utt_id"].to_list() == ["10", "11", "12"]
    assert back["speaker"].dtype == pl.String


def test_message_is_capped_but_problems_hold_everything():
    n = 500
    df = good_frame(n).with_columns(pl.Series("split", ["bogus"] * n))
    with pytest.raises(ManifestError) as info:
        validate(df)
    assert len(info.value.problems) == n
    assert sorted(p.row for p in info.value.problems) == list(range(n))
    assert "and 300 more" in str(info.value)


# A slow, obvious reference validator: one Python loop per rule, over plain lists.
def reference_problem_cells(rows: list[dict]) -> set[tuple[int, str]]:
    cells = set()
    seen: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for column in REQUIRED_COLUMNS:
            value = row[column]
            if value is None or value.strip() == "":
                cells.add((i, column))
        if row["utt_id"] is not None:
            seen.setdefault(row["utt_id"], []).append(i)
        if row["split"] is not None and row["split"].strip() and row["split"] not in ("train", "dev", "test"):
            cells.add((i, "split"))
        duration = row["duration"]
        if duration is not None and (math.isnan(duration) or math.isinf(duration) or duration <= 0):
            cells.add((i, "duration"))
        start, end = row["start"], row["end"]
        for column, value in (("start", start), ("end", end)):
            if value is not None and (value < 0 or math.isinf(value)):
                cells.add((i, column))
        if start is not None and end is not None and start >= end:
            cells.add((i, "start"))
    for rows_with_id in seen.values():
        if len(rows_with_id) > 1:
            cells.add((rows_with_id[0], "utt_id"))
    return cells


maybe_text = st.one_of(st.none(), st.sampled_from(["", " ", "a", "b", "c"]))
maybe_number = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, math.inf, math.nan]))
row_strategy = st.fixed_dictionaries(
    {
        "utt_id": maybe_text,
        "path": maybe_text,
        "language": maybe_text,
        "split": st.one_of(st.none(), st.sampled_from(["train", "dev", "test", "val", "Train"])),
        "duration": maybe_number,
        "start": maybe_number.filter(lambda v: v is None or not math.isnan(v)),
        "end": maybe_number.filter(lambda v: v is None or (not math.isnan(v) and not math.isinf(v))),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(row_strategy, min_size=1, max_size=12))
def test_validation_matches_a_row_by_row_reference(rows):
    schema = {c: pl.String for c in ("utt_id", "path", "language", "split")}
    schema |= {c: pl.Float64 for c in ("duration", "start", "end")}
    df = pl.DataFrame(rows, schema=schema)
    expected = reference_problem_cells(rows)
    try:
        validate(df)
        found = set()
    except ManifestError as err:
        found = problem_cells(err)
    assert found == expected


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["m.parquet", "m.csv", "m.tsv"])
def test_write_then_read_round_trips_and_resolves_relative_paths(tmp_path, name):
    df = good_frame().with_columns(pl.Series("utt_id", [f"00{i}" for i in range(6)]))
    out = write_manifest(df, tmp_path / "sub" / name)
    back = read_manifest(out)
    assert back["utt_id"].to_list() == df["utt_id"].to_list()  # "001" stays text, not the number 1
    assert back["path"].to_list() == [os.path.join(str(tmp_path / "sub"), p) for p in df["path"]]
    for column in ("language", "speaker", "gender", "split", "duration", "emotion"):
        assert back[column].to_list() == df[column].to_list()
    assert read_manifest(out, resolve=False)["path"].to_list() == df["path"].to_list()


def test_absolute_paths_and_urls_are_left_alone(tmp_path):
    df = good_frame(2).with_columns(pl.Series("path", ["/data/a.wav", "s3://bucket/b.wav"]))
    back = read_manifest(write_manifest(df, tmp_path / "m.parquet"))
    assert back["path"].to_list() == ["/data/a.wav", "s3://bucket/b.wav"]
    mixed = good_frame(3).with_columns(pl.Series("path", ["/data/a.wav", "./sub/../b.wav", "s3://x/c.wav"]))
    back = read_manifest(write_manifest(mixed, tmp_path / "mixed.parquet"))
    assert back["path"].to_list() == ["/data/a.wav", str(tmp_path / "b.wav"), "s3://x/c.wav"]


path_parts = st.sampled_from(["a", "b.wav", ".", "..", "", "~", "C:", "s3:", "x y", "é"])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(path_parts, min_size=1, max_size=4).map("/".join)), max_size=8))
def test_path_resolution_matches_os_path(paths):
    base = "/data/corpus"

    def reference(p):
        if p is None or not p.strip() or "://" in p or os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(base, os.path.expanduser(p)))

    df = pl.DataFrame({"path": paths}, schema={"path": pl.String})
    assert resolve_paths(df, base)["path"].to_list() == [reference(p) for p in paths]


def test_read_manifest_names_the_file_and_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("utt_id,path,language,split\na,x.wav,ca,train\na,,ca,eval\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert str(path) in message
    assert problem_cells(info.value) == {(0, "utt_id"), (1, "path"), (1, "split")}


def test_write_refuses_an_invalid_frame_and_leaves_no_file(tmp_path):
    with pytest.raises(ManifestError):
        write_manifest(good_frame().drop("language"), tmp_path / "m.parquet")
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_is_a_clear_error(tmp_path):
    path = tmp_path / "m.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match="parquet"):
        read_manifest(path)


# ---------------------------------------------------------------------------------------------- gender

COMMON_VOICE_GENDERS = {
    # old releases (<= v15)
    "male": "male",
    "female": "female",
    "other": "other",
    # new releases (>= v16)
    "male_masculine": "male",
    "female_feminine": "female",
    "intersex": "intersex",
    "transgender": "transgender",
    "non-binary": "non-binary",
    "do_not_wish_to_say": "do_not_wish_to_say",
    # spelling noise
    " Male ": "male",
    "FEMALE_FEMININE": "female",
    "": None,
    "   ": None,
}


@pytest.mark.parametrize(("raw", "expected"), sorted(COMMON_VOICE_GENDERS.items()))
def test_normalize_gender_covers_both_common_voice_vocabularies(raw, expected):
    assert normalize_gender(raw) == expected


def test_normalize_gender_missing_values():
    assert normalize_gender(None) is None
    assert normalize_gender(float("nan")) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(sorted(COMMON_VOICE_GENDERS)), st.text(max_size=6))))
def test_vectorised_gender_normalisation_matches_the_scalar_one(values):
    series = pl.Series("g", values, dtype=pl.String)
    assert normalize_genders(series).to_list() == [normalize_gender(v) for v in values]


# ---------------------------------------------------------------------------------------------- hash


def test_hash_depends_on_ids_paths_segments_and_their_order_only():
    df = good_frame().with_columns(start=pl.lit(None, dtype=pl.Float64), end=pl.lit(None, dtype=pl.Float64))
    base = manifest_hash(df)
    assert manifest_hash(df.clone()) == base
    assert manifest_hash(df.drop("start", "end")) == base  # absent == all null
    assert manifest_hash(df.with_columns(gender=pl.lit("male"), duration=pl.lit(9.0))) == base
    assert manifest_hash(df.drop("emotion")) == base
    changed = [
        df.reverse(),
        df.head(5),
        df.with_columns(pl.Series("path", ["other.wav"] + df["path"].to_list()[1:])),
        df.with_columns(pl.Series("utt_id", ["zz"] + df["utt_id"].to_list()[1:])),
        df.with_columns(pl.Series("start", [0.5] + [None] * 5, dtype=pl.Float64)),
        df.with_columns(pl.Series("end", [None] * 5 + [0.5], dtype=pl.Float64)),
    ]
    hashes = {manifest_hash(d) for d in changed}
    assert base not in hashes and len(hashes) == len(changed)


def test_hash_does_not_confuse_values_across_column_boundaries():
    a = pl.DataFrame({"utt_id": ["ab"], "path": ["c"], "language": ["x"]})
    b = pl.DataFrame({"utt_id": ["a"], "path": ["bc"], "language": ["x"]})
    assert manifest_hash(a) != manifest_hash(b)


def test_hash_is_stable_across_processes(tmp_path):
    df = good_frame()
    path = write_manifest(df, tmp_path / "m.parquet")
    code = (
        "import polars as pl, sys; from cltm.corpus import manifest_hash;"
        f"print(manifest_hash(pl.read_parquet({str(path)!r})))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {manifest_hash(pl.read_parquet(path))}


def test_importing_the_corpus_package_is_light_and_exports_the_contract():
    code = (
        "import sys, cltm.corpus as c\n"
        "assert 'torch' not in sys.modules, 'import cltm.corpus pulled in torch'\n"
        "for name in ('read_manifest', 'write_manifest', 'validate', 'normalize_gender', 'manifest_hash',\n"
        "             'ManifestError', 'IMPORTERS', 'import_commonvoice', 'import_table', 'import_folder',\n"
        "             'CorpusImportError', 'summarize'):\n"
        "    getattr(c, name)\n"
        "assert 'torch' not in sys.modules, 'the importers pulled in torch'\n"
        "assert issubclass(c.ManifestError, ValueError) and issubclass(c.CorpusImportError, ValueError)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
