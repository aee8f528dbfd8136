"""Result tables: the reference CSV format (both directions), results directory round trip, contracts."""

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
