"""Heatmap decisions checked on data: clipped / unstable / faded cells, order, blocks, annotation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PatchCollection, PathCollection
from matplotlib.text import Text

from cltm.report.heatmap import annotation_layout, draw_heatmap, heatmap_data
from cltm.report.results import order_languages

FAMILIES = {"aa": "Fam1", "bb": "Fam2", "cc": "Fam1", "ee": "Fam2"}  # "dd" has no family


def _matrix(languages, rng, *, clip=1.5):
    rows = []
    for target in languages:
        for donor in languages:
            if target == donor:
                rows.append((target, donor, 1.0, 0.0, 1.0, False))
                continue
            value = float(rng.choice([rng.normal(0, 0.5), rng.normal(0, 4)]))
            se = float(rng.uniform(0.05, 1.0))
            p_pos = float(rng.uniform(0, 1))
            unstable = bool(rng.random() < 0.2)
            rows.append((target, donor, value, se, p_pos, unstable))
    df = pl.DataFrame(
        rows, schema=["target", "donor", "cltm", "cltm_se", "p_positive", "unstable"], orient="row"
    )
    return df.with_columns(
        pl.lit("gender").alias("task"),
        pl.lit("m").alias("model"),
        pl.lit("logistic").alias("probe"),
        pl.lit(3).alias("layer"),
    )


def test_marks_match_a_cell_by_cell_reference():
    rng = np.random.default_rng(1)
    languages = ["ee", "dd", "cc", "bb", "aa"]
    matrix = _matrix(languages, rng)
    # drop one off-diagonal cell: it must come back as missing, not as 0
    matrix = matrix.filter(~((pl.col("target") == "aa") & (pl.col("donor") == "bb")))
    clip, fade = 1.5, (0.1, 0.9)
    data = heatmap_data(matrix, clip=clip, families=FAMILIES, fade_range=fade)
    # family order: Fam1 (aa, cc), Fam2 (bb, ee), then the unknown family last
    assert data.rows == ["aa", "cc", "bb", "ee", "dd"]
    assert data.cols == data.rows
    assert data.row_families == ["Fam1", "Fam1", "Fam2", "Fam2", "other"]
    lookup = {
        (t, d): (v, s, p, u)
        for t, d, v, s, p, u in matrix.select(
            "target", "donor", "cltm", "cltm_se", "p_positive", "unstable"
        ).iter_rows()
    }
    for i, target in enumerate(data.rows):
        for j, donor in enumerate(data.cols):
            diagonal = target == donor
            assert data.diagonal[i, j] == diagonal
            if (target, donor) not in lookup:
                assert data.missing[i, j] and np.isnan(data.values[i, j])
                assert not data.faded[i, j] and data.clipped[i, j] == 0
                continue
            value, _se, p_pos, unstable = lookup[(target, donor)]
            assert data.values[i, j] == value
            expected_clip = 0 if diagonal else (1 if value > clip else (-1 if value < -clip else 0))
            assert data.clipped[i, j] == expected_clip, (target, donor, value)
            assert data.faded[i, j] == (not diagonal and fade[0] < p_pos < fade[1])
            assert data.unstable[i, j] == (unstable and not diagonal)
            assert not data.missing[i, j]
    assert data.clipped.any() and data.unstable.any() and data.faded.any()
    blocks = {(b.family, b.row_start, b.row_stop, b.col_start, b.col_stop) for b in data.family_blocks}
    assert blocks == {("Fam1", 0, 2, 0, 2), ("Fam2", 2, 4, 2, 4)}


def test_without_families_order_is_alphabetical_and_no_blocks():
    matrix = _matrix(["zz", "aa", "mm"], np.random.default_rng(2))
    data = heatmap_data(matrix, families=None)
    assert data.rows == ["aa", "mm", "zz"]
    assert data.family_blocks == []
    assert order_languages({"b", "a"}, None) == (["a", "b"], ["other", "other"])


def test_heatmap_rejects_several_matrices_and_bad_clip():
    matrix = _matrix(["aa", "bb"], np.random.default_rng(3))
    two = pl.concat([matrix, matrix.with_columns(pl.lit(4).alias("layer"))])
    with pytest.raises(ValueError, match="layer"):
        heatmap_data(two)
    with pytest.raises(ValueError, match="clip"):
        heatmap_data(matrix, clip=0)


@pytest.mark.parametrize("n", [2, 6, 12, 26, 44, 54, 80, 120, 200])
def test_annotation_fits_its_cell_or_is_switched_off(n):
    cell_inches, font, decimals, annotate = annotation_layout(n, n)
    cell_pt = cell_inches * 72
    chars = 3 + decimals  # widest text: "−0.12" / "−0.1" (the leading zero is dropped: "−.12")
    if annotate:
        assert font * 0.6 * chars <= cell_pt  # the value fits inside its cell
        assert font <= 0.6 * cell_pt + 1e-9
        assert font >= 4.5
    else:
        assert font < 4.5
    assert n * cell_inches <= 18.0 + 1e-9


def test_fifty_four_languages_are_annotated_and_two_hundred_are_not():
    assert annotation_layout(54, 54)[3]
    assert not annotation_layout(200, 200)[3]
    fonts = [annotation_layout(n, n)[1] for n in range(2, 201)]
    assert all(a >= b - 1e-9 for a, b in zip(fonts, fonts[1:], strict=False))  # shrinks with n
    languages = [f"l{k:03d}" for k in range(200)]
    rows = [(t, d, 0.5) for t in languages[:200] for d in languages[:200]]
    big = pl.DataFrame(rows, schema=["target", "donor", "cltm"], orient="row").with_columns(
        pl.lit("t").alias("task"),
        pl.lit("m").alias("model"),
        pl.lit("p").alias("probe"),
        pl.lit(0).alias("layer"),
        pl.lit(None, pl.Float64).alias("cltm_se"),
        pl.lit(None, pl.Float64).alias("p_positive"),
        pl.lit(False).alias("unstable"),
    )
    data = heatmap_data(big)
    assert not data.annotate and data.note and "not annotated" in data.note


def test_drawn_figure_carries_the_decided_marks():
    rng = np.random.default_rng(5)
    matrix = _matrix(["aa", "bb", "cc", "dd", "ee"], rng)
    data = heatmap_data(matrix, families=FAMILIES)
    fig = draw_heatmap(data)
    ax = fig.axes[0]
    # hatched collection: exactly one rectangle per unstable cell, at that cell
    hatched = [c for c in ax.collections if isinstance(c, PatchCollection) and c.get_hatch()]
    assert len(hatched) == 1
    corners = sorted(
        (round(p.vertices[:, 1].min() + 0.5), round(p.vertices[:, 0].min() + 0.5))
        for p in hatched[0].get_paths()
    )
    assert corners == sorted(map(tuple, np.argwhere(data.unstable).tolist()))
    # one triangle per clipped cell, up for > clip and down for < -clip
    markers = [c for c in ax.collections if isinstance(c, PathCollection)]
    positions = sorted((round(y + 0.34), round(x - 0.36)) for c in markers for x, y in c.get_offsets())
    assert positions == sorted(map(tuple, np.argwhere(data.clipped != 0).tolist()))
    # every present cell annotated with its value (diagonal "1")
    texts = [t for t in ax.texts if isinstance(t, Text)]
    assert len(texts) == int((~data.missing).sum())
    by_cell = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in texts}
    for (i, j), text in by_cell.items():
        if data.diagonal[i, j]:
            assert text == "1"
        else:
            shown = float(text.replace("−", "-"))
            assert math.isclose(shown, data.values[i, j], abs_tol=0.5 * 10**-data.decimals + 1e-12)
    # the colour map is centred at 0 and clipped: two values beyond the clip get the extreme colour
    colors = data.cell_colors()
    off = ~data.diagonal & ~data.missing & ~data.faded
    high = np.argwhere(off & (data.values > data.clip))
    low = np.argwhere(off & (data.values < -data.clip))
    if len(high) > 1:
        assert np.allclose(colors[tuple(high[0])], colors[tuple(high[1])])
    if len(low) and len(high):
        assert colors[tuple(low[0])][0] > colors[tuple(low[0])][2]  # red end for negative
        assert colors[tuple(high[0])][2] > colors[tuple(high[0])][0]  # blue end for positive
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Fam1" in legend_labels and "Fam2" in legend_labels


def test_a_report_palette_keeps_family_colours_across_matrices():
    from cltm.report.heatmap import family_colors

    palette = family_colors(["Fam1", "Fam2", "other"])
    only_fam2 = _matrix(["bb", "ee"], np.random.default_rng(6))
    both = _matrix(["aa", "bb"], np.random.default_rng(7))
    first = heatmap_data(only_fam2, families=FAMILIES, palette=palette)
    second = heatmap_data(both, families=FAMILIES, palette=palette)
    assert first.family_colors["Fam2"] == second.family_colors["Fam2"] == palette["Fam2"]
    assert list(second.family_colors) == ["Fam1", "Fam2"]  # legend order: alphabetical
    # without a palette each matrix colours its own families from the start of the palette
    assert heatmap_data(only_fam2, families=FAMILIES).family_colors["Fam2"] == palette["Fam1"]
