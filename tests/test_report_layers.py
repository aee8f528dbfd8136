"""Layer views and summaries against slow references: Perf(i), layer summary, best layer, scores."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from cltm.report import ReportInputError, build_report, heatmap_data, matrix_latex, resolve_families
from cltm.report.layers import best_layer, layer_summary, single_performance
from cltm.report.summaries import donor_receiver_scores, top_pairs
from cltm.report.synthetic import SYNTHETIC_FAMILIES, make_synthetic_results, write_synthetic_results


@pytest.fixture(scope="module")
def tables():
    return make_synthetic_results(
        5, layers=[0, 1, 2], tasks=("speaker",), seeds=3, finetune_targets=2, seed=7
    )


def test_single_performance_matches_a_loop(tables):
    runs, _, _ = tables
    probe = runs.filter(pl.col("probe") == "logistic")
    got = single_performance(runs.filter(pl.col("probe").is_in(["logistic", "finetune"])))
    expected = {}
    for row in probe.iter_rows(named=True):
        if row["condition"] == "single" and row["source"] == "probe":
            expected.setdefault((row["layer"], row["target"]), []).append(row["auc"])  # speaker -> AUC
    assert got.height == len(expected)
    for layer, target, perf, perf_sd, seeds in got.iter_rows():
        values = expected[(layer, target)]
        assert seeds == len(values) == 3
        assert np.isclose(perf, np.mean(values))
        assert np.isclose(perf_sd, np.std(values, ddof=1))


def test_layer_summary_and_best_layer(tables):
    runs, matrices, properties = tables
    probe = matrices.filter(pl.col("probe") == "logistic")
    heatmaps = [heatmap_data(probe.filter(pl.col("layer") == layer)) for layer in (0, 1, 2)]
    summary = layer_summary(heatmaps)  # no properties: computed here
    for data, row in zip(heatmaps, summary.iter_rows(named=True), strict=True):
        stable, everything = [], []
        for i, target in enumerate(data.rows):
            for j, donor in enumerate(data.cols):
                if target == donor:
                    continue
                everything.append(data.values[i, j])
                if not data.unstable[i, j]:
                    stable.append(data.values[i, j])
        assert row["layer"] == data.layer
        assert np.isclose(row["mean_offdiag"], np.mean(stable))
        assert np.isclose(row["share_positive"], np.mean(np.array(everything) > 0))
        full = np.where(data.diagonal, 1.0, data.values)
        assert np.isclose(row["asymmetry"], np.linalg.norm(full - full.T) / np.linalg.norm(full))
        assert row["n_unstable"] == int(data.unstable.sum())
    # with the engine's properties table, its share_positive / asymmetry are the ones shown
    engine = properties.with_columns(pl.lit(0.123).alias("share_positive"), pl.lit(9.0).alias("asymmetry"))
    shown = layer_summary(heatmaps, engine)
    assert shown["share_positive"].to_list() == [0.123] * 3 and shown["asymmetry"].to_list() == [9.0] * 3
    performance = single_performance(runs.filter(pl.col("probe") == "logistic"))
    layer, criterion = best_layer(performance, summary)
    means = {}
    for row in performance.iter_rows(named=True):
        means.setdefault(row["layer"], []).append(row["perf"])
    top = max(np.mean(v) for v in means.values())
    assert layer == min(k for k, v in means.items() if np.mean(v) == top)
    assert "single condition" in criterion
    # ties go to the shallower layer; without runs the stable mean off-diagonal CLTM decides
    tie = pl.DataFrame({"layer": [3, 3, 1, 1], "target": ["a", "b", "a", "b"], "perf": [0.8, 0.6, 0.6, 0.8]})
    assert best_layer(tie)[0] == 1
    empty = performance.clear()
    fallback, why = best_layer(empty, summary)
    assert fallback == int(summary.sort("mean_offdiag", descending=True)["layer"][0])
    assert "off-diagonal" in why


def test_scores_and_top_pairs_match_loops(tables):
    _, matrices, _ = tables
    data = heatmap_data(matrices.filter((pl.col("probe") == "logistic") & (pl.col("layer") == 2)))
    scores = {r["language"]: r for r in donor_receiver_scores(data).iter_rows(named=True)}
    for i, target in enumerate(data.rows):
        receiver = sum(
            max(data.values[i, j], 0.0) for j in range(len(data.cols)) if i != j and not data.unstable[i, j]
        )
        assert np.isclose(scores[target]["receiver"], receiver)
    for j, donor in enumerate(data.cols):
        given = sum(
            max(data.values[i, j], 0.0) for i in range(len(data.rows)) if i != j and not data.unstable[i, j]
        )
        assert np.isclose(scores[donor]["donor"], given)
    positive, negative = top_pairs(data, k=3)
    cells = sorted(
        (data.values[i, j], data.rows[i], data.cols[j])
        for i in range(len(data.rows))
        for j in range(len(data.cols))
        if i != j and not data.unstable[i, j]
    )
    assert positive["cltm"].to_list() == [v for v, _, _ in reversed(cells) if v > 0][:3]
    assert negative["cltm"].to_list() == [v for v, _, _ in cells if v < 0][:3]


def test_families_from_files_replace_the_default(tmp_path):
    tsv = tmp_path / "f.tsv"
    tsv.write_text("# comment\nlanguage\tfamily\nen\tA\nde\tB\n")
    assert resolve_families(tsv) == {"en": "A", "de": "B"}
    three = tmp_path / "f3.tsv"
    three.write_text("en\tEnglish\tA\n")
    assert resolve_families(three) == {"en": "A"}
    js = tmp_path / "f.json"
    js.write_text(json.dumps({"en": "A", "fr": "C"}))
    assert resolve_families(js) == {"en": "A", "fr": "C"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("en\n")
    with pytest.raises(ReportInputError, match="bad.tsv"):
        resolve_families(bad)
    with pytest.raises(ReportInputError):
        resolve_families(tmp_path / "missing.tsv")
    shipped = resolve_families(None)
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
    results = write_synthetic_results(tmp_path / "r", 2, layers=[0, 1], seeds=1)
    serial = build_report(results, tmp_path / "serial", families=SYNTHETIC_FAMILIES, n_jobs=1).parent
    parallel = build_report(results, tmp_path / "parallel", families=SYNTHETIC_FAMILIES, n_jobs=2).parent
    names = sorted(p.relative_to(serial).as_posix() for p in serial.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*") if p.is_file())
    for name in names:
        if name.endswith(".png") and "_L" in name:
            assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
