"""Result tables: the reference CSV format (both directions), the results object (one validated, atomic set),
runs-table validation."""

import json
import os
import shutil

import numpy as np
import polars as pl
import pytest

from cltm.transfer import (
    MATRICES_COLUMNS,
    PROPERTIES_COLUMNS,
    RUNS_COLUMNS,
    matrix_from_runs,
    read_results,
    read_runs,
    result_from_runs,
    write_reference_csv,
    write_results,
)
from cltm.transfer.stats import MetricError, incomplete_targets
from cltm.transfer.tables import (
    RESULT_TABLES,
    SET_JOURNAL,
    SET_MANIFEST,
    SKIPPED_COLUMNS,
    MatrixResult,
    ResultsError,
    RunsTableError,
)


def _per_seed_runs(metric: str = "f1", task: str = "gender", seeds: int = 4) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    langs = ["ca", "es", "zh-HK"]
    for t in langs:
        for s in range(seeds):
            base = {"task": task, "model": "m", "layer": 12, "probe": "logreg", "target": t, "seed": s}
            rows.append({**base, "condition": "single", "donor": t, metric: 0.6 + 0.02 * rng.normal()})
            rows.append({**base, "condition": "self", "donor": t, metric: 0.8 + 0.02 * rng.normal()})
            for d in langs:
                if d != t:
                    rows.append({**base, "condition": "pair", "donor": d, metric: 0.7 + 0.05 * rng.normal()})
    return pl.DataFrame(rows)


def test_reference_csv_round_trip_gives_the_same_matrix(tmp_path):
    runs = _per_seed_runs()
    path = write_reference_csv(runs, tmp_path / "gender_matrix.csv", metric="f1")
    text = pl.read_csv(path)
    assert text.columns == ["type", "lang_src", "lang_tgt", "f1_mean", "f1_var", "seed_count"]
    dual_self = text.filter((pl.col("type") == "dual") & (pl.col("lang_src") == pl.col("lang_tgt")))
    assert dual_self.height == 3  # the 2N condition is a dual row with lang_tgt == lang_src
    back = read_runs(path, task="gender", model="m", probe="logreg", layer=12)
    a = matrix_from_runs(runs).sort("target", "donor")
    b = matrix_from_runs(back).sort("target", "donor")
    for col in ("cltm", "cltm_se", "m", "p_positive", "perf_single", "perf_self", "perf_pair"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-9)


def test_reference_csv_as_published(tmp_path):
    # hand-written in the published layout: single rows without a donor, WER as the metric
    csv = tmp_path / "asr_matrix.csv"
    csv.write_text(
        "type,lang_src,lang_tgt,wer_mean,wer_var,seed_count\n"
        "single,ca,,0.40,0.0004,\n"
        "dual,ca,ca,0.30,0.0009,5\n"
        "dual,ca,es,0.35,0.0016,5\n"
    )
    runs = read_runs(csv)
    assert set(runs["task"]) == {"asr"} and set(runs["source"]) == {"reference"}
    by_cond = {r["condition"]: r for r in runs.to_dicts()}
    assert by_cond["single"]["one_minus_wer"] == pytest.approx(0.60)
    assert by_cond["single"]["seed_count"] == 10  # default when missing
    assert by_cond["pair"]["donor"] == "es" and by_cond["self"]["donor"] == "ca"
    cell = matrix_from_runs(runs).filter(pl.col("donor") == "es").to_dicts()[0]
    assert cell["metric"] == "one_minus_wer"
    assert cell["cltm"] == pytest.approx((0.65 - 0.60) / (0.70 - 0.60))
    vi, vii, vij = 0.0004 / 10, 0.0009 / 5, 0.0016 / 5
    num, den = 0.05, 0.10
    se = np.sqrt((vij + vi) / den**2 + num**2 * (vii + vi) / den**4 - 2 * num * vi / den**3)
    assert cell["cltm_se"] == pytest.approx(se)


def test_unrecognised_runs_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a recognised runs table"):
        read_runs(bad)
    with pytest.raises(FileNotFoundError):
        read_runs(tmp_path / "missing.parquet")


def test_results_directory_round_trip_and_column_contracts(tmp_path):
    res = result_from_runs(_per_seed_runs())
    write_results(
        tmp_path / "out",
        res.runs,
        res.matrices,
        res.properties,
        skipped=res.skipped,
        language_scores=res.language_scores,
    )
    back = read_results(tmp_path / "out")
    assert back.matrices.columns == list(MATRICES_COLUMNS)
    assert back.properties.columns == list(PROPERTIES_COLUMNS)
    assert back.runs.columns[: len(RUNS_COLUMNS)] == list(RUNS_COLUMNS)
    assert back.matrices.equals(res.matrices)
    assert back.properties.equals(res.properties)
    # our own runs table read back through read_runs (parquet and csv)
    runs_again = read_runs(tmp_path / "out" / "runs.parquet")
    assert matrix_from_runs(runs_again).equals(res.matrices)
    back.runs.write_csv(tmp_path / "runs.csv")
    assert matrix_from_runs(read_runs(tmp_path / "runs.csv")).equals(res.matrices)
    assert back.properties["mean_within_family"].null_count() == 0  # ca/es share a family in the shipped map


# ----------------------------------------------------------------------------------------------------
# The results object: one set, validated, atomic
# ----------------------------------------------------------------------------------------------------


def _result():
    return result_from_runs(_per_seed_runs())


def test_results_object_round_trip_keeps_every_table(tmp_path):
    res = _result()
    res.confusion = pl.DataFrame(
        {"task": ["gender"], "model": ["m"], "layer": [12], "probe": ["logreg"], "condition": ["single"]}
        | {"target": ["ca"], "donor": ["ca"], "seed": [0], "true": ["female"], "pred": ["male"], "count": [3]}
    )
    res.write(tmp_path / "out")
    back = MatrixResult.read(tmp_path / "out")
    for name in RESULT_TABLES:
        assert getattr(back, name).columns[: len(RESULT_TABLES[name][1])] == list(RESULT_TABLES[name][1]), (
            name
        )
    assert back.matrices.equals(res.matrices) and back.properties.equals(res.properties)
    assert back.confusion["count"].to_list() == [3]
    manifest = json.loads((tmp_path / "out" / SET_MANIFEST).read_text())
    assert set(manifest["tables"]) == set(RESULT_TABLES)
    # rewriting the same tables gives the same bytes
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    back.write(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == first


def test_a_runs_only_directory_is_a_results_directory(tmp_path):
    runs = _per_seed_runs()
    MatrixResult(runs=runs).write(tmp_path / "ft")
    back = MatrixResult.read(tmp_path / "ft")
    assert back.runs.height == runs.height and back.matrices.height == 0
    with pytest.raises(ResultsError, match="no results tables"):
        MatrixResult.read(tmp_path)  # holds only a sub-directory
    with pytest.raises(ResultsError, match="not a directory"):
        MatrixResult.read(tmp_path / "missing")


def test_contract_violations_name_the_file_and_column(tmp_path):
    res = _result()
    bad = MatrixResult(runs=res.runs, matrices=res.matrices.with_columns(pl.lit("high").alias("cltm")))
    with pytest.raises(ResultsError, match=r"'cltm'.*Float64"):
        bad.write(tmp_path / "w")
    assert not (tmp_path / "w" / "matrices.parquet").exists()
    res.write(tmp_path / "r")
    res.matrices.drop("donor").write_parquet(tmp_path / "r" / "matrices.parquet")
    (tmp_path / "r" / SET_MANIFEST).unlink()  # accept the hand-edited file, then check its columns
    with pytest.raises(ResultsError, match=r"matrices.parquet: missing column\(s\) donor"):
        MatrixResult.read(tmp_path / "r")
    res.write(tmp_path / "s")
    res.properties.with_columns(pl.lit("x").alias("n_cells")).write_parquet(
        tmp_path / "s" / "properties.parquet"
    )
    (tmp_path / "s" / SET_MANIFEST).unlink()
    with pytest.raises(ResultsError, match=r"properties.parquet: column 'n_cells'"):
        MatrixResult.read(tmp_path / "s")
    (tmp_path / "s" / "properties.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ResultsError, match=r"properties.parquet: cannot be read as Parquet"):
        MatrixResult.read(tmp_path / "s")


def test_a_failure_mid_write_leaves_the_previous_set_intact(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _result().write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = pl.DataFrame.write_parquet

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third table of the new set
            raise OSError("disk full (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)
    new = result_from_runs(_per_seed_runs(seeds=5))
    with pytest.raises(OSError, match="injected"):
        new.write(out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staged file left either
    assert MatrixResult.read(out).runs.height == _per_seed_runs().height


def test_a_crash_between_renames_is_completed_by_the_next_reader(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _result().write(out)
    new = result_from_runs(_per_seed_runs(seeds=5))
    real = os.replace
    calls = {"n": 0}

    def crash(src, dst):
        if str(src).endswith(".staged"):  # the commit's renames (staging itself renames .partial files)
            calls["n"] += 1
            if calls["n"] == 4:  # after three tables were renamed
                raise KeyboardInterrupt("killed (injected)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        new.write(out)
    monkeypatch.undo()
    assert (out / SET_JOURNAL).exists()  # torn on disk, but the journal knows the new set
    back = MatrixResult.read(out)  # rolls forward
    assert back.runs.height == new.runs.height and back.matrices.equals(new.matrices)
    assert not (out / SET_JOURNAL).exists() and not list(out.glob(".*.staged"))


def test_a_torn_set_is_refused(tmp_path):
    _result().write(tmp_path / "a")
    result_from_runs(_per_seed_runs(seeds=5)).write(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "runs.parquet", tmp_path / "a" / "runs.parquet")
    with pytest.raises(ResultsError, match=r"runs.parquet: does not match .*torn"):
        MatrixResult.read(tmp_path / "a")
    (tmp_path / "a" / "skipped.parquet").unlink()
    (tmp_path / "a" / "runs.parquet").unlink()
    with pytest.raises(ResultsError, match=r"missing: the results set is incomplete"):
        MatrixResult.read(tmp_path / "a")


# ----------------------------------------------------------------------------------------------------
# --from-runs trusts nothing: one message per bad-input kind
# ----------------------------------------------------------------------------------------------------

REFERENCE = (
    "type,lang_src,lang_tgt,auc_mean,auc_var,seed_count\n"
    "single,ca,,0.80,0.0004,10\n"
    "dual,ca,ca,0.86,0.0004,10\n"
    "dual,ca,es,0.84,0.0005,10\n"
    "single,es,,0.78,0.0003,10\n"
    "dual,es,es,0.85,0.0003,10\n"
    "dual,es,ca,0.83,0.0004,10\n"
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "dual,ca,es,0.95,0.0005,10\n", r"rows 3, 7 repeat condition 'pair' of target 'ca'"),
        (lambda t: t.replace("0.83,0.0004,10", "0.83,0.0004,-3"), r"row 6: seed_count must be a positive"),
        (lambda t: t.replace("0.83,0.0004,10", "0.83,0.0004,0"), r"row 6: seed_count must be a positive"),
        (lambda t: t.replace("0.83,0.0004,10", "0.83,-0.0004,10"), r"row 6: auc_var is negative"),
        (lambda t: t.replace("single,es,,0.78,0.0003,10\n", ""), r"target 'es' .* has no 'single' row"),
        (lambda t: t.replace("dual,ca,ca,0.86,0.0004,10\n", ""), r"target 'ca' .* has no 'self' row"),
        (lambda t: t.replace("0.83,0.0004", "abc,0.0004"), r"row 6: column 'auc_mean' holds 'abc', not a"),
        (lambda t: "", r"the file is empty \(0 bytes\)"),
        (lambda t: t + "dual,es,ca,0.83,0.0004,10,9\n", r"line 8 has 7 field\(s\), the header has 6"),
        (lambda t: t.replace("dual,es,ca", "tripl,es,ca"), r"row 6: `type` must be single or dual"),
    ],
    ids=["duplicate", "negative-count", "zero-count", "negative-var", "no-single", "no-self", "text", "empty",
         "ragged", "bad-type"],
)  # fmt: skip
def test_bad_runs_tables_are_refused_with_the_row(tmp_path, edit, message):
    path = tmp_path / "runs.csv"
    path.write_text(edit(REFERENCE))
    with pytest.raises(RunsTableError, match=message):
        read_runs(path)


def test_our_runs_tables_are_checked_too(tmp_path):
    runs = _per_seed_runs()
    doubled = pl.concat([runs, runs.head(1)])
    with pytest.raises(RunsTableError, match=r"rows 1, \d+ repeat condition 'single' of target 'ca'.*seed 0"):
        matrix_from_runs(doubled)
    doubled.write_parquet(tmp_path / "runs.parquet")
    with pytest.raises(RunsTableError, match="repeat condition"):
        read_runs(tmp_path / "runs.parquet")
    runs.with_columns(pl.col("f1").cast(pl.String)).with_columns(
        pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("n/a")).otherwise(pl.col("f1")).alias("f1")
    ).write_csv(tmp_path / "runs.csv")
    with pytest.raises(RunsTableError, match=r"row 5: column 'f1' holds 'n/a'"):
        read_runs(tmp_path / "runs.csv")


def test_a_metric_without_values_is_an_error_not_an_empty_matrix(tmp_path):
    path = tmp_path / "sv.csv"
    path.write_text(REFERENCE)
    runs = read_runs(path)
    assert matrix_from_runs(runs)["cltm"].null_count() == 0  # the default (auc) has values
    with pytest.raises(MetricError, match=r"'eer' has no values .* metrics with values: auc"):
        matrix_from_runs(runs, "eer")


def test_incomplete_targets_are_listed():
    runs = _per_seed_runs().filter(~((pl.col("target") == "es") & (pl.col("condition") == "self")))
    matrices = matrix_from_runs(runs)
    assert "es" not in matrices["target"].to_list()
    listed = incomplete_targets(runs)
    assert listed.columns == list(SKIPPED_COLUMNS) and listed["language"].to_list() == ["es"]
    assert "no self runs" in listed["reason"][0]
