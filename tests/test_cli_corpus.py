"""`cltm corpus import|info` through typer's CliRunner, and the summary table behind `info`."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cltm.cli import app
from cltm.corpus import read_manifest
from cltm.corpus.importers import import_commonvoice
from cltm.corpus.info import corpus_totals, summarize
from test_corpus_import import as_rows, build_common_voice, build_tree, write_clip

# wide enough that rich never truncates a table cell
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def common_voice(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cv_cli") / "cv"
    build_common_voice(root, clips_per_file=2, extra_validated=1)
    return root


# ---------------------------------------------------------------------------------------------- summary table


def reference_summary(rows: list[dict], by: list[str]) -> dict[tuple, tuple]:
    """Group with a dict, count with sets: the obvious way."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(c) for c in by)].append(row)
    out = {}
    for key, members in groups.items():
        speakers = {m["speaker"] for m in members if m["speaker"] is not None}
        known = [m["duration"] for m in members if m["duration"] is not None]
        out[key] = (len(members), len(speakers), sum(known) / 3600.0, len(known))
    return out


manifest_rows = st.lists(
    st.fixed_dictionaries(
        {
            "language": st.sampled_from(["ca", "es", "zh-HK"]),
            "gender": st.one_of(st.none(), st.sampled_from(["female", "male", "other"])),
            "split": st.one_of(st.none(), st.sampled_from(["train", "dev", "test"])),
            "speaker": st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3", "s4"])),
            "duration": st.one_of(st.none(), st.floats(0.1, 30.0)),
        }
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(manifest_rows, st.sampled_from([["language", "gender", "split"], ["language"], ["split", "gender"]]))
def test_summary_matches_a_reference_count(rows, by):
    df = pl.DataFrame(
        [{"utt_id": f"u{i}", "path": f"{i}.wav", **r} for i, r in enumerate(rows)],
        schema_overrides={
            "duration": pl.Float64,
            "gender": pl.String,
            "split": pl.String,
            "speaker": pl.String,
        },
    )
    summary = summarize(df, by=by)
    got = {
        tuple(r[c] for c in by): (r["utterances"], r["speakers"], r["hours"], r["with_duration"])
        for r in summary.iter_rows(named=True)
    }
    expected = reference_summary(rows, by)
    assert got.keys() == expected.keys() and summary.height == len(expected)
    for key, (n, speakers, hours, known) in expected.items():
        assert got[key][0] == n and got[key][1] == speakers and got[key][3] == known
        assert got[key][2] == pytest.approx(hours)
    totals = corpus_totals(df)
    assert totals.utterances == len(rows)
    assert totals.speakers == len({r["speaker"] for r in rows if r["speaker"] is not None})
    assert totals.with_duration == sum(r["duration"] is not None for r in rows)


def test_summary_of_a_manifest_without_optional_columns():
    df = pl.DataFrame({"utt_id": ["a", "b"], "path": ["a.wav", "b.wav"], "language": ["en", "en"]})
    summary = summarize(df)
    assert summary.select("language", "gender", "split", "utterances").rows() == [("en", None, None, 2)]
    assert summary["speakers"].to_list() == [None] and summary["with_duration"].to_list() == [0]


# ---------------------------------------------------------------------------------------------- import


def test_import_commonvoice_writes_the_same_manifest_as_the_library(common_voice, tmp_path):
    out = tmp_path / "out" / "corpus.parquet"
    result = invoke("corpus", "import", "commonvoice", common_voice, "--out", out, "--locales", "ca,zh-HK")
    assert result.exit_code == 0, result.output
    assert as_rows(read_manifest(out)) == as_rows(import_commonvoice(common_voice))
    assert re.search(r"\b12 utterances\b", result.output)  # 2 locales x 3 splits x 2 clips


def test_import_commonvoice_with_validated_and_durations(common_voice, tmp_path):
    out = tmp_path / "corpus.csv"
    result = invoke(
        "corpus", "import", "commonvoice", common_voice / "ca", "--out", out,
        "--include-validated", "--durations", "--check-files", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert df.filter(pl.col("split").is_null()).height == 1
    assert df["duration"].null_count() == 0 and df["duration"].min() > 0.2


def test_import_commonvoice_errors_are_clean_messages(common_voice, tmp_path):
    result = invoke(
        "corpus", "import", "commonvoice", common_voice, "--out", tmp_path / "x.parquet", "-l", "xx"
    )
    assert result.exit_code == 2
    assert "unknown locale(s) xx" in result.output and "ca, zh-HK" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.parquet").exists()
    missing = invoke("corpus", "import", "commonvoice", tmp_path / "nothing", "--out", tmp_path / "x.parquet")
    assert missing.exit_code == 2 and "not a directory" in missing.output


def test_import_table_with_map_and_language(tmp_path):
    for name in ("a", "b", "c"):
        write_clip(tmp_path / "wav" / f"{name}.wav")
    pl.DataFrame(
        {"file": ["wav/a.wav", "wav/b.wav", "wav/c.wav"], "who": ["x", "y", "x"], "sex": ["F", "M", "F"]}
    ).write_csv(tmp_path / "meta.csv")
    out = tmp_path / "m.parquet"
    result = invoke(
        "corpus", "import", "table", tmp_path / "meta.csv", "--out", out,
        "--map", "path=file,speaker=who,gender=sex", "--language", "eu", "--check-files",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert df.select("utt_id", "speaker", "gender", "language").rows() == [
        ("a", "x", "female", "eu"),
        ("b", "y", "male", "eu"),
        ("c", "x", "female", "eu"),
    ]
    assert df["path"].to_list() == [str(tmp_path / "wav" / f"{n}.wav") for n in "abc"]

    bad = invoke("corpus", "import", "table", tmp_path / "meta.csv", "--out", out, "--map", "path=filename")
    assert bad.exit_code == 2 and "available columns: file, who, sex" in bad.output


def test_an_unknown_output_format_is_refused_before_importing(common_voice, tmp_path):
    result = invoke("corpus", "import", "commonvoice", common_voice, "--out", tmp_path / "m.xlsx")
    assert result.exit_code == 2 and "--out" in result.output and ".parquet" in result.output
    assert not (tmp_path / "m.xlsx").exists()


def test_check_files_fails_on_missing_audio(tmp_path):
    pl.DataFrame({"path": ["gone.wav"], "language": ["en"]}).write_csv(tmp_path / "meta.csv")
    result = invoke("corpus", "import", "table", tmp_path / "meta.csv", "--out", tmp_path / "m.parquet",
                    "--check-files")  # fmt: skip
    assert result.exit_code == 2 and "1 of 1 audio files do not exist" in result.output
    assert str(tmp_path / "gone.wav") in result.output


def test_import_folder_with_genders(tmp_path):
    build_tree(tmp_path / "tree")
    (tmp_path / "g.tsv").write_text("speaker\tgender\nalice\tfemale\nbob\tmale\n")
    out = tmp_path / "m.parquet"
    result = invoke(
        "corpus", "import", "folder", tmp_path / "tree", "--out", out, "--genders", tmp_path / "g.tsv"
    )
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert df.height == 5
    expected = {"alice": "female", "bob": "male", "karl": None}
    assert all(expected[s] == g for s, g in df.select("speaker", "gender").iter_rows())


# ---------------------------------------------------------------------------------------------- info


def table_rows(output: str) -> dict[tuple[str, ...], list[str]]:
    """Parse rich's box table: {(first cells...): [remaining cells]} for every body row."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[tuple(cells[:-3])] = cells[-3:]
    return rows


def test_info_shows_counts_per_language_gender_split(common_voice, tmp_path):
    out = tmp_path / "m.parquet"
    assert invoke("corpus", "import", "commonvoice", common_voice, "--out", out, "-q").exit_code == 0
    result = invoke("corpus", "info", out)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    df = read_manifest(out)
    for (language, gender, split), group in df.group_by(["language", "gender", "split"]):
        key = (language, "-" if gender is None else gender, split)
        assert rows[key] == [str(group.height), str(group["speaker"].n_unique()), "unknown"]
    assert rows[("total", "", "")][0] == str(df.height)
    assert "unknown for rows without a duration" in result.output


def test_info_shows_hours_when_durations_are_known(common_voice, tmp_path):
    out = tmp_path / "m.parquet"
    invoke("corpus", "import", "commonvoice", common_voice, "--out", out, "--durations", "-q")
    result = invoke("corpus", "info", out, "--by", "language", "--save", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    rows = table_rows(result.output)
    for language in ("ca", "zh-HK"):
        hours = df.filter(pl.col("language") == language)["duration"].sum() / 3600
        assert float(rows[(language,)][2]) == pytest.approx(hours, rel=1e-2)
    saved = pl.read_csv(tmp_path / "s.csv")
    assert saved["utterances"].sum() == df.height
    assert "unknown" not in result.output


def test_info_on_an_invalid_manifest_lists_the_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("utt_id,path,language,split\na,a.wav,en,train\na,,en,valid\n")
    result = invoke("corpus", "info", path)
    assert result.exit_code == 2
    assert "row 0 (utt_id 'a'): duplicate utt_id" in result.output
    assert "row 1 (utt_id 'a'): path is missing" in result.output  # an empty CSV field reads as null
    assert "'valid' is not one of" in result.output
    assert "Traceback" not in result.output


def test_info_rejects_unknown_group_columns(common_voice, tmp_path):
    out = tmp_path / "m.parquet"
    invoke("corpus", "import", "commonvoice", common_voice, "--out", out, "-q")
    result = invoke("corpus", "info", out, "--by", "language,colour")
    assert result.exit_code == 2 and "colour" in result.output
    totals_only = invoke("corpus", "info", out, "--by", "")
    assert totals_only.exit_code == 0, totals_only.output
    assert str(read_manifest(out).height) in totals_only.output


@pytest.mark.parametrize(
    "command",
    [
        ["corpus"],
        ["corpus", "import"],
        ["corpus", "import", "commonvoice"],
        ["corpus", "import", "table"],
        ["corpus", "import", "folder"],
        ["corpus", "import", "lhotse"],
        ["corpus", "import", "hf"],
        ["corpus", "info"],
        ["corpus", "synth"],
    ],
)
def test_every_corpus_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # the command describes itself: a line of prose between the usage line and the first box
    prose = result.output.split("Usage:", 1)[1].split("╭", 1)[0].splitlines()[1:]
    assert any(len(line.split()) >= 5 for line in prose), result.output
