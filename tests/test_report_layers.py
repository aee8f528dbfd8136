"""Layer views and summaries against slow references: Perf(i), layer summary, best layer, scores."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from cltm.report import ReportInputError, build_report, heatmap_data, matrix_latex, resolve_families
from cltm.report.layers import best_layer, layer_summary, single_performance
from cltm.report.summaries import top_pairs
from report_fixtures import FAMILIES, engine_result, synthetic_runs, write_engine_results


@pytest.fixture(scope="module")
def tables():
    runs, _ = synthetic_runs(5, layers=[0, 1, 2], tasks=("speaker",), seeds=3, seed=7)
    result = engine_result(runs)
    return result.runs, result.matrices, result.properties


def test_single_performance_is_the_engines_perf_single(tables):
    runs, matrices, _ = tables
    got = single_performance(matrices)
    expected = {}
    for row in runs.filter(pl.col("condition") == "single").iter_rows(named=True):
        expected.setdefault((row["layer"], row["target"]), []).append(row["auc"])  # speaker -> AUC
    assert got.height == len(expected)
    for layer, target, perf in got.iter_rows():
        assert np.isclose(perf, np.mean(expected[(layer, target)]))


def test_layer_summary_reads_the_engines_properties_and_best_layer(tables):
    runs, matrices, properties = tables
    summary = layer_summary(properties)
    for row in summary.iter_rows(named=True):
        cells = matrices.filter((pl.col("layer") == row["layer"]) & (pl.col("target") != pl.col("donor")))
        stable = cells.filter(~pl.col("unstable"))["cltm"].drop_nulls().to_numpy()
        assert row["n_stable"] == stable.size
        assert np.isclose(row["mean_offdiag_stable"], stable.mean())
        assert np.isclose(row["median_offdiag_stable"], np.median(stable))
        assert np.isclose(row["share_positive"], np.mean(cells["cltm"].drop_nulls().to_numpy() > 0))
        assert row["n_unstable"] == cells.filter(pl.col("unstable")).height
    # the summary shows what the properties table says, whatever it says (it reads, never recomputes)
    changed = properties.with_columns(
        pl.lit(0.123).alias("share_positive"),
        pl.lit(9.0).alias("asymmetry"),
        pl.lit(-7.0).alias("mean_offdiag_stable"),
    )
    shown = layer_summary(changed)
    assert shown["share_positive"].to_list() == [0.123] * 3 and shown["asymmetry"].to_list() == [9.0] * 3
    assert shown["mean_offdiag_stable"].to_list() == [-7.0] * 3
    performance = single_performance(matrices)
    layer, criterion = best_layer(performance, summary)
    means = {}
    for row in performance.iter_rows(named=True):
        means.setdefault(row["layer"], []).append(row["perf"])
    top = max(np.mean(v) for v in means.values())
    assert layer == min(k for k, v in means.items() if np.mean(v) == top)
    assert "single condition" in criterion
    # ties go to the shallower layer; without Perf(i) the stable mean off-diagonal CLTM decides
    tie = pl.DataFrame({"layer": [3, 3, 1, 1], "target": ["a", "b", "a", "b"], "perf": [0.8, 0.6, 0.6, 0.8]})
    assert best_layer(tie)[0] == 1
    fallback, why = best_layer(performance.clear(), summary)
    assert fallback == int(summary.sort("mean_offdiag_stable", descending=True)["layer"][0])
    assert "off-diagonal" in why


def test_top_pairs_match_loops(tables):
    _, matrices, _ = tables
    data = heatmap_data(matrices.filter(pl.col("layer") == 2))
    positive, negative = top_pairs(data, k=3)
    cells = sorted(
        (data.values[i, j], data.rows[i], data.cols[j])
        for i in range(len(data.rows))
        for j in range(len(data.cols))
        if i != j and not data.unstable[i, j] and not np.isnan(data.values[i, j])
    )
    assert positive["cltm"].to_list() == [v for v, _, _ in reversed(cells) if v > 0][:3]
    assert negative["cltm"].to_list() == [v for v, _, _ in cells if v < 0][:3]


def test_report_figures_change_when_the_engines_properties_change(tmp_path):
    """The report draws the engine's properties and language scores: edit them, and its output follows."""
    from cltm.transfer.tables import MatrixResult

    results = write_engine_results(tmp_path / "r", 4, layers=[0, 1, 2], seeds=2, seed=5)
    before = build_report(results, tmp_path / "before", families=FAMILIES).parent
    edited = MatrixResult.read(results)
    edited.properties = edited.properties.with_columns(
        (pl.col("mean_offdiag_stable") + 0.5).alias("mean_offdiag_stable"),
        pl.lit(0.0).alias("share_positive"),
    )
    edited.language_scores = edited.language_scores.with_columns(pl.col("donor_score") * 3 + 1)
    edited.write(results)
    after = build_report(results, tmp_path / "after", families=FAMILIES).parent
    stem = "gender-tiny-hubert-logistic"
    for name in (f"{stem}_layer_curves.png", f"{stem}_donor_receiver.png"):
        assert (before / "figures" / name).read_bytes() != (after / "figures" / name).read_bytes(), name
    # the heatmaps do not depend on the properties: unchanged bytes
    assert (before / "figures" / f"{stem}_L1.png").read_bytes() == (
        after / "figures" / f"{stem}_L1.png"
    ).read_bytes()
    old = pl.read_csv(before / "tables" / f"{stem}_layers.csv")
    new = pl.read_csv(after / "tables" / f"{stem}_layers.csv")
    assert np.allclose(new["mean_offdiag_stable"], old["mean_offdiag_stable"] + 0.5)
    assert new["share_positive"].to_list() == [0.0] * 3


def test_families_from_files_are_merged_with_the_shipped_map(tmp_path):
    shipped = resolve_families(None)
    tsv = tmp_path / "f.tsv"
    tsv.write_text("# comment\nlanguage\tfamily\nen\tA\nde\tB\n")
    assert resolve_families(tsv) == shipped | {"en": "A", "de": "B"}  # the same meaning as `cltm matrix`
    three = tmp_path / "f3.tsv"
    three.write_text("en\tEnglish\tA\n")
    assert resolve_families(three) == shipped | {"en": "A"}
    js = tmp_path / "f.json"
    js.write_text(json.dumps({"en": "A", "xx": "C"}))
    assert resolve_families(js) == shipped | {"en": "A", "xx": "C"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("en\n")
    with pytest.raises(ReportInputError, match="bad.tsv"):
        resolve_families(bad)
    with pytest.raises(ReportInputError):
        resolve_families(tmp_path / "missing.tsv")
    assert shipped.get("ca") and shipped.get("en")  # the CLTM engine's Common Voice map
    data = heatmap_data(
        pl.DataFrame(
            {"target": ["zh-HK", "en", "de"], "donor": ["en", "de", "zh-HK"], "cltm": [0.1, 0.2, 0.3]}
        ).with_columns(
            pl.lit("t").alias("task"),
            pl.lit("m").alias("model"),
            pl.lit("p").alias("probe"),
            pl.lit(0).alias("layer"),
            pl.lit(None, pl.Float64).alias("cltm_se"),
            pl.lit(None, pl.Float64).alias("p_positive"),
            pl.lit(False).alias("unstable"),
        ),
        families={"de": "Germanic", "en": "Germanic", "zh": "Sino-Tibetan"},
        rows=["zh-HK", "en", "de"],
        cols=["zh-HK", "en", "de"],
    )
    assert data.rows == ["de", "en", "zh-HK"] and data.row_families[-1] == "Sino-Tibetan"  # base-code lookup


def test_latex_escapes_and_marks():
    matrix = pl.DataFrame(
        {
            "target": ["a_1", "a_1", "b&c", "b&c"],
            "donor": ["a_1", "b&c", "a_1", "b&c"],
            "cltm": [1.0, 2.5, -0.25, 1.0],
            "unstable": [False, False, True, False],
        }
    ).with_columns(
        pl.lit("t").alias("task"),
        pl.lit("m").alias("model"),
        pl.lit("p").alias("probe"),
        pl.lit(0).alias("layer"),
        pl.lit(None, pl.Float64).alias("cltm_se"),
        pl.lit(None, pl.Float64).alias("p_positive"),
    )
    tex = matrix_latex(heatmap_data(matrix))
    assert r"a\_1" in tex and r"b\&c" in tex
    assert r"\textbf{2.50}" in tex  # beyond the clip
    assert r"-0.25$^\dagger$" in tex  # unstable


def test_parallel_heatmaps_give_the_same_files(tmp_path):
    results = write_engine_results(tmp_path / "r", 2, layers=[0, 1], seeds=2)
    serial = build_report(results, tmp_path / "serial", families=FAMILIES, n_jobs=1).parent
    parallel = build_report(results, tmp_path / "parallel", families=FAMILIES, n_jobs=2).parent
    names = sorted(p.relative_to(serial).as_posix() for p in serial.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*") if p.is_file())
    for name in names:
        if name.endswith(".png") and "_L" in name:
            assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
