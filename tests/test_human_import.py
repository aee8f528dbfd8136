"""Listener table import: the column contract, label normalisation, native flags, and every bad row named."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from cltm.cli import app
from cltm.human.labels import normalise_label
from cltm.human.listeners import (
    LISTENER_COLUMNS,
    ListenerColumnMap,
    ListenerImport,
    ListenerTableError,
    import_listeners,
    read_listeners,
    validate_listeners,
    write_listeners,
)

MAP = ListenerColumnMap(listener="subject", group="L1", utt_id="stimulus", response="answer", rt="RT")


def _manifest() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "utt_id": ["en1", "en2", "de1", "de2", "de3"],
            "path": ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"],
            "language": ["en", "en", "de", "de", "de"],
            "emotion": ["anger", "sadness", "happiness", "neutral", None],
        }
    )


def _table(**changes) -> pl.DataFrame:
    base = {
        "subject": ["s1", "s1", "s1", "s2", "s2"],
        "L1": ["en", "en", "en", "DE", "DE"],
        "stimulus": ["en1", "en2", "de1", "en1", "de2"],
        "answer": ["Anger", "sad", " happy ", "angry", "Neutral"],
        "RT": [1.2, 0.8, 2.0, 1.1, 0.9],
    }
    base.update(changes)
    return pl.DataFrame(base)


def test_a_good_table_becomes_the_contract_with_normalised_labels_and_native_flags():
    out = validate_listeners(_table(), _manifest(), ListenerImport(columns=MAP))
    assert out.schema == pl.Schema(LISTENER_COLUMNS)
    assert out["response"].to_list() == ["angry", "sad", "happy", "angry", "neutral"]
    assert out["true"].to_list() == ["angry", "sad", "happy", "angry", "neutral"]
    assert out["correct"].all()
    assert out["language"].to_list() == ["en", "en", "de", "en", "de"]
    # group DE is native for a `de` stimulus (case-insensitive), s1 (en) is not for de1
    assert out["native"].to_list() == [True, True, False, False, True]
    assert out["rt"].to_list() == [1.2, 0.8, 2.0, 1.1, 0.9]
    assert out["confidence"].null_count() == out.height
    assert out["row"].to_list() == [0, 1, 2, 3, 4]
    assert set(out["task"]) == {"emotion"}


def _problems(table: pl.DataFrame, settings: ListenerImport | None = None) -> list[str]:
    with pytest.raises(ListenerTableError) as info:
        validate_listeners(table, _manifest(), settings or ListenerImport(columns=MAP), source="test.csv")
    assert str(info.value).startswith("test.csv: invalid listener table")
    return [str(p) for p in info.value.problems]


def test_bad_rows_are_each_named_with_value_and_fix():
    table = _table(
        subject=["s1", "s1", "s1", "s2", "s2", "s2", "s1", None],
        L1=["en", "en", "en", "DE", "DE", "DE", "en", "en"],
        stimulus=["en1", "nope", "de1", "en1", "de2", "de3", "en1", "en2"],
        answer=["Anger", "sad", "joyful", "angry", "Neutral", "sad", "sad", "sad"],
        RT=[1.2, 0.8, 2.0, 1.1, 0.9, 1.0, 1.0, -1.0],
    )
    problems = _problems(table)
    assert problems == [
        "row 1 (utt_id 'nope'): unknown utt_id 'nope': not in the manifest; fix the id or pass the manifest "
        "the stimuli came from",
        "row 2 (utt_id 'de1'): response 'joyful' is not one of the task's classes angry, happy, neutral, sad "
        "(after normalisation: 'joyful'); correct it or drop the row",
        "row 5 (utt_id 'de3'): utt_id 'de3' has no 'emotion' label in the manifest, so the answer cannot be "
        "scored; label the utterance or drop the row",
        "row 6 (utt_id 'en1'): listener 's1' answered utt_id 'en1' again (first answer in row 0); keep one "
        "answer per listener and utterance",
        "row 7: response time -1.0 is negative",
        "row 7 (utt_id 'en2'): listener is missing (column 'subject'); fill it in or drop the row",
    ]


def test_a_listener_in_two_groups_and_bad_numbers_are_reported():
    table = _table(L1=["en", "en", "de", "DE", "DE"], RT=["1.2", "fast", "2.0", "inf", ""])
    problems = _problems(table)
    assert "row 1: rt 'fast' is not a number; write a number or leave it empty" in problems
    assert "row 3: rt inf is not finite; write a number or leave it empty" in problems
    assert (
        "row 2 (utt_id 'de1'): listener 's1' is in group 'de' here but 'en' in row 0; a listener belongs to "
        "one group" in problems
    )
    assert len(problems) == 3


def test_missing_columns_are_named_with_the_table_columns():
    problems = _problems(_table().drop("answer"))
    assert len(problems) == 1
    assert "response=answer" in problems[0] and "subject, L1, stimulus, RT" in problems[0]


def test_an_empty_table_is_refused():
    assert _problems(_table().head(0)) == ["the table has no answers (no data rows)"]


def test_classes_can_be_restricted_and_manifest_labels_outside_them_are_reported():
    settings = ListenerImport(columns=MAP, classes=("Anger", "happiness", "sad"))
    problems = _problems(_table(), settings)
    # neutral answers to a neutral utterance: both the answer and the label are outside the classes
    assert any("row 4" in p and "not one of the classes angry, happy, sad" in p for p in problems)
    assert any("row 4" in p and "response 'Neutral' is not one of" in p for p in problems)
    assert not any(p.startswith("row 0") for p in problems)


def test_column_map_parsing():
    parsed = ListenerColumnMap.parse("listener=subject, group=L1,utt_id=stimulus,response=answer,rt=RT")
    assert parsed == MAP
    assert ListenerColumnMap.parse("") == ListenerColumnMap()
    for bad, message in (
        ("listener", "not FIELD=COLUMN"),
        ("speaker=x", "unknown"),
        ("rt=", "names no column"),
        ("rt=a,rt=b", "twice"),
    ):
        with pytest.raises(ValueError, match=message):
            ListenerColumnMap.parse(bad)


def test_normalise_label_follows_the_emotion_vocabulary():
    assert normalise_label("emotion", " Anger ") == "angry"
    assert normalise_label("emotion", "SADNESS") == "sad"
    assert normalise_label("emotion", "") is None
    assert normalise_label("gender", "F") == "female"
    assert normalise_label("emotion", "joyful") == "joyful"  # unknown words kept, so a check can name them


def test_write_and_read_round_trip(tmp_path):
    out = validate_listeners(_table(), _manifest(), ListenerImport(columns=MAP))
    path = write_listeners(out, tmp_path / "listeners.parquet")
    assert read_listeners(path).equals(out)
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a listener table"):
        read_listeners(tmp_path / "other.parquet")


def test_import_reads_csv_tsv_and_parquet_alike(tmp_path):
    expected = validate_listeners(_table(), _manifest(), ListenerImport(columns=MAP))
    for name, write in (
        ("t.csv", lambda df, p: df.write_csv(p)),
        ("t.tsv", lambda df, p: df.write_csv(p, separator="\t")),
        ("t.parquet", lambda df, p: df.write_parquet(p)),
    ):
        write(_table(), tmp_path / name)
        assert import_listeners(tmp_path / name, _manifest(), ListenerImport(columns=MAP)).equals(expected)


def test_cli_import_rejects_bad_rows_and_writes_nothing(tmp_path):
    _manifest().write_parquet(tmp_path / "manifest.parquet")
    _table(stimulus=["en1", "en2", "xx", "en1", "de2"]).write_csv(tmp_path / "answers.csv")
    out = tmp_path / "listeners.parquet"
    args = [
        "human",
        "import",
        str(tmp_path / "answers.csv"),
        "--map",
        "listener=subject,group=L1,utt_id=stimulus,response=answer,rt=RT",
        "--manifest",
        str(tmp_path / "manifest.parquet"),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "row 2 (utt_id 'xx'): unknown utt_id 'xx'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()

    _table().write_csv(tmp_path / "answers.csv")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_listeners(out).height == 5

    result = CliRunner().invoke(app, [*args[:3], "--map", "listener", *args[5:]])
    assert result.exit_code == 2 and "FIELD=COLUMN" in result.output
