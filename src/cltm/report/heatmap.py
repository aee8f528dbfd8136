"""The CLTM heatmap: what each cell shows is decided on data first (:class:`HeatmapData`), then drawn.

Keeping the decisions (which cells are clipped, unstable, faded, whether values are annotated and at
which size) in a plain dataclass lets the tests check the figure on data instead of pixels, and lets the
small-multiples grid reuse exactly the same colours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from cltm.report.results import UNKNOWN_FAMILY, layer_text, order_languages

COLORMAP = "RdBu"
"""Diverging: red = harmful donor (CLTM < 0), white = no effect, blue = helpful (CLTM > 0)."""
DIAGONAL_COLOR = "#9e9e9e"
MISSING_COLOR = "#f2f2f2"
FADE_TO_WHITE = 0.6
"""Share of white blended into a cell whose sign is not decisive."""
DEFAULT_FADE_RANGE = (0.1, 0.9)
MIN_ANNOTATION_PT = 4.5
"""Below this font size the values are left out (with a note in the figure): they would not be readable."""
MAX_ANNOTATION_PT = 9.0
MAX_MATRIX_INCHES = 18.0
FAMILY_PALETTE = "tab20"
_UNSTABLE_TEXT_BOX = {"facecolor": "white", "alpha": 0.55, "edgecolor": "none", "pad": 0.4}


@dataclass(frozen=True)
class FamilyBlock:
    """Rows ``[row_start, row_stop)`` and columns ``[col_start, col_stop)`` of one family's diagonal block."""

    family: str
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int


@dataclass
class HeatmapData:
    """Everything one heatmap shows, decided before drawing. Arrays are [len(rows), len(cols)]."""

    task: str
    model: str
    probe: str
    layer: int | None
    rows: list[str]
    cols: list[str]
    row_families: list[str]
    col_families: list[str]
    values: np.ndarray
    se: np.ndarray
    p_positive: np.ndarray
    unstable: np.ndarray
    clipped: np.ndarray
    """+1 where the value is above +clip, -1 below -clip, 0 elsewhere (drawn with a triangle)."""
    faded: np.ndarray
    diagonal: np.ndarray
    missing: np.ndarray
    family_blocks: list[FamilyBlock]
    clip: float
    fade_range: tuple[float, float]
    annotate: bool
    font_size: float
    decimals: int
    cell_inches: float
    note: str | None = None
    family_colors: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.task} · {self.model} · {self.probe} · layer {layer_text(self.layer)}"

    def cell_colors(self) -> np.ndarray:
        """RGBA per cell: the colour map clipped at ±clip, faded cells blended to white, diagonal grey."""
        return cell_colors(
            self.values, self.clip, faded=self.faded, diagonal=self.diagonal, missing=self.missing
        )


def cell_colors(
    values: np.ndarray,
    clip: float,
    *,
    faded: np.ndarray | None = None,
    diagonal: np.ndarray | None = None,
    missing: np.ndarray | None = None,
) -> np.ndarray:
    """Map CLTM values to RGBA with the diverging map centred at 0 and clipped at ±clip."""
    norm = Normalize(vmin=-clip, vmax=clip, clip=True)
    rgba = colormaps[COLORMAP](norm(np.nan_to_num(values, nan=0.0)))
    if faded is not None:
        rgba[faded, :3] = rgba[faded, :3] * (1 - FADE_TO_WHITE) + FADE_TO_WHITE
    if missing is not None:
        rgba[missing] = to_rgba(MISSING_COLOR)
    if diagonal is not None:
        rgba[diagonal] = to_rgba(DIAGONAL_COLOR)
    return rgba


def family_colors(families: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A stable colour per family (in order of first appearance); the unknown family is light grey."""
    palette = colormaps[FAMILY_PALETTE]
    # tab20 comes in dark/light pairs of one hue: take the dark ones first so neighbours differ in hue.
    order = list(range(0, palette.N, 2)) + list(range(1, palette.N, 2))
    colors: dict[str, tuple[float, float, float, float]] = {}
    known = 0
    for family in dict.fromkeys(families):
        if family == UNKNOWN_FAMILY:
            colors[family] = to_rgba("#d0d0d0")
        else:
            colors[family] = palette(order[known % len(order)])
            known += 1
    return colors


def _legend_colors(
    families: Sequence[str], palette: Mapping[str, tuple[float, float, float, float]] | None
) -> dict[str, tuple[float, float, float, float]]:
    """Colours of the families present, in legend order (alphabetical, unknown last)."""
    present = sorted(set(families), key=lambda f: (f == UNKNOWN_FAMILY, f))
    if palette is not None and set(present) <= set(palette):
        return {f: palette[f] for f in present}
    return family_colors(present)


def _runs_of(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs ``(label, start, stop)`` of equal labels."""
    runs: list[tuple[str, int, int]] = []
    for index, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], index + 1)
        else:
            runs.append((label, index, index + 1))
    return runs


def annotation_layout(n_rows: int, n_cols: int) -> tuple[float, float, int, bool]:
    """Cell size (inches), annotation font size (pt), decimals and whether to annotate, for an n×m matrix.

    The matrix grows with the number of languages up to :data:`MAX_MATRIX_INCHES`; the font is the largest
    that fits the formatted value (about 0.6 em per character) inside a cell, capped at 9 pt. Past 25
    languages one decimal is shown to keep the text inside its cell.
    """
    n = max(n_rows, n_cols, 1)
    side = min(MAX_MATRIX_INCHES, max(3.5, 0.55 * n))
    cell_inches = side / n
    cell_pt = cell_inches * 72
    decimals = 2 if n <= 25 else 1
    chars = 3 + decimals  # "-0.12" or "-0.1"
    font = min(MAX_ANNOTATION_PT, 0.85 * cell_pt / (0.6 * chars), 0.6 * cell_pt)
    return cell_inches, font, decimals, font >= MIN_ANNOTATION_PT


def heatmap_data(
    matrix: pl.DataFrame,
    *,
    clip: float = 1.5,
    families: Mapping[str, str] | None = None,
    fade_range: tuple[float, float] = DEFAULT_FADE_RANGE,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    palette: Mapping[str, tuple[float, float, float, float]] | None = None,
) -> HeatmapData:
    """Decide what the heatmap of one (task, model, probe, layer) matrix shows.

    ``matrix`` holds the long rows of one matrix (columns of ``matrices.parquet``). Rows are targets and
    columns donors, both ordered by family (see :func:`order_languages`); ``rows``/``cols`` fix the language
    sets across several matrices (the small-multiples grid). A cell is *faded* when ``fade_range[0] <
    p_positive < fade_range[1]`` (its sign is not decisive), *clipped* when ``|cltm| > clip``; the diagonal
    (target = donor, 1 by definition) is drawn grey. ``palette`` (family -> colour, e.g. from
    :func:`family_colors` over every family of a report) keeps family colours equal across figures.
    """
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    keys = {c: matrix[c].unique().to_list() for c in ("task", "model", "probe", "layer")}
    for column, values in keys.items():
        if len(values) != 1:
            raise ValueError(f"heatmap_data expects one matrix; column {column!r} has values {values}")
    rows, row_families = order_languages(set(matrix["target"].to_list() if rows is None else rows), families)
    cols, col_families = order_languages(set(matrix["donor"].to_list() if cols is None else cols), families)
    row_index = {lang: i for i, lang in enumerate(rows)}
    col_index = {lang: j for j, lang in enumerate(cols)}
    shape = (len(rows), len(cols))
    values = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    p_positive = np.full(shape, np.nan)
    unstable = np.zeros(shape, dtype=bool)
    for record in matrix.select("target", "donor", "cltm", "cltm_se", "p_positive", "unstable").iter_rows():
        target, donor, value, value_se, p_pos, is_unstable = record
        if target not in row_index or donor not in col_index:
            continue
        i, j = row_index[target], col_index[donor]
        values[i, j] = np.nan if value is None else value
        se[i, j] = np.nan if value_se is None else value_se
        p_positive[i, j] = np.nan if p_pos is None else p_pos
        unstable[i, j] = bool(is_unstable)
    diagonal = np.array([[r == c for c in cols] for r in rows], dtype=bool).reshape(shape)
    missing = np.isnan(values) & ~diagonal
    with np.errstate(invalid="ignore"):
        clipped = np.where(values > clip, 1, np.where(values < -clip, -1, 0)).astype(np.int8)
        faded = (p_positive > fade_range[0]) & (p_positive < fade_range[1])
    clipped[diagonal | missing] = 0
    faded &= ~diagonal & ~missing
    unstable &= ~diagonal
    blocks = []
    if families:
        col_runs = {family: (start, stop) for family, start, stop in _runs_of(col_families)}
        for family, start, stop in _runs_of(row_families):
            if family in col_runs and family != UNKNOWN_FAMILY:
                blocks.append(FamilyBlock(family, start, stop, *col_runs[family]))
    cell_inches, font, decimals, annotate = annotation_layout(*shape)
    note = None
    if not annotate:
        note = (
            f"Values not annotated: {shape[0]}×{shape[1]} cells are too small to read; "
            "see the CSV/LaTeX export for the numbers."
        )
    return HeatmapData(
        task=str(keys["task"][0]),
        model=str(keys["model"][0]),
        probe=str(keys["probe"][0]),
        layer=None if keys["layer"][0] is None else int(keys["layer"][0]),
        rows=rows,
        cols=cols,
        row_families=row_families,
        col_families=col_families,
        values=values,
        se=se,
        p_positive=p_positive,
        unstable=unstable,
        clipped=clipped,
        faded=faded,
        diagonal=diagonal,
        missing=missing,
        family_blocks=blocks,
        clip=clip,
        fade_range=fade_range,
        annotate=annotate,
        font_size=font,
        decimals=decimals,
        cell_inches=cell_inches,
        note=note,
        family_colors=_legend_colors(row_families + col_families, palette),
    )


def _format_value(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    if text.startswith("0."):
        text = text[1:]  # ".45": narrower, as in published CLTM figures
    elif text.startswith("-0."):
        text = "−" + text[2:]
    elif text.startswith("-"):
        text = "−" + text[1:]
    return "0" if text in {".00", ".0", "−.00", "−.0"} else text


def _draw_cells(ax, data: HeatmapData, *, marks: bool = True) -> None:
    """Colours, family outlines, hatching of unstable cells and clip triangles onto ``ax``."""
    n_rows, n_cols = data.values.shape
    ax.imshow(data.cell_colors(), aspect="equal", interpolation="nearest")
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)
    diagonal_cells = [Rectangle((j - 0.5, i - 0.5), 1, 1) for i, j in np.argwhere(data.diagonal)]
    if diagonal_cells:
        ax.add_collection(
            PatchCollection(diagonal_cells, facecolor="none", edgecolor="#303030", linewidth=0.8, zorder=2)
        )
    unstable_cells = [Rectangle((j - 0.5, i - 0.5), 1, 1) for i, j in np.argwhere(data.unstable)]
    if unstable_cells:
        hatched = PatchCollection(
            unstable_cells, facecolor="none", edgecolor="#333333", linewidth=0, hatch="////", zorder=3
        )
        ax.add_collection(hatched)
    for block in data.family_blocks:
        ax.add_patch(
            Rectangle(
                (block.col_start - 0.5, block.row_start - 0.5),
                block.col_stop - block.col_start,
                block.row_stop - block.row_start,
                fill=False,
                edgecolor="black",
                linewidth=1.6 if marks else 0.9,
                zorder=4,
            )
        )
    if marks and data.clipped.any():
        size = (data.cell_inches * 72 * 0.2) ** 2
        for sign, marker in ((1, "^"), (-1, "v")):
            rows, cols = np.nonzero(data.clipped == sign)
            if rows.size:
                ax.scatter(cols + 0.36, rows - 0.34, marker=marker, s=size, c="black", linewidths=0, zorder=5)
    elif data.clipped.any():
        rows, cols = np.nonzero(data.clipped != 0)
        ax.scatter(cols, rows, marker="o", s=6, c="black", linewidths=0, zorder=5)


def _legend_handles(data: HeatmapData, has_families: bool) -> list:
    handles = [Patch(facecolor=DIAGONAL_COLOR, edgecolor="#303030", label="diagonal (= 1)")]
    if data.unstable.any():
        handles.append(
            Patch(facecolor="white", edgecolor="#333333", hatch="////", label="unstable (own-data gain ≈ 0)")
        )
    if data.faded.any():
        low, high = data.fade_range
        handles.append(
            Patch(
                facecolor="#dfe9f3", edgecolor="none", label=f"pale, grey italic: {low:g} < P(>0) < {high:g}"
            )
        )
    if data.clipped.any():
        handles.append(
            Line2D([], [], marker="^", color="black", linestyle="none", label=f"|CLTM| > {data.clip:g}")
        )
    if data.missing.any():
        handles.append(Patch(facecolor=MISSING_COLOR, edgecolor="#bbbbbb", label="no value"))
    if has_families:
        handles.extend(
            Patch(facecolor=color, edgecolor="none", label=family)
            for family, color in data.family_colors.items()
        )
    return handles


def draw_heatmap(data: HeatmapData) -> Figure:
    """Draw one CLTM heatmap (see :func:`heatmap_data` for what each mark means) and return the figure.

    Every element is placed in inches computed up front (labels, strips, colour bar, legend), so the figure
    needs no tight-bbox pass when saved: that pass would draw each heatmap twice.
    """
    n_rows, n_cols = data.values.shape
    matrix_w, matrix_h = n_cols * data.cell_inches, n_rows * data.cell_inches
    label_pt = min(10.0, max(5.0, data.cell_inches * 72 * 0.62))
    char_in = 0.62 * label_pt / 72  # a generous average glyph width
    has_families = bool(data.family_blocks) or any(f != UNKNOWN_FAMILY for f in data.row_families)
    handles = _legend_handles(data, has_families)
    legend_cols = 1 if len(handles) <= 24 else 2
    longest = max(len(str(h.get_label())) for h in handles)
    legend_w = legend_cols * (0.55 + longest * 0.058)
    legend_h = 0.4 + 0.17 * math.ceil(len(handles) / legend_cols)
    left = 0.45 + char_in * max(len(r) for r in data.rows)
    bottom = 0.55 + char_in * max(len(c) for c in data.cols) + (0.3 if data.note else 0)
    top = 0.6 + (0.2 if has_families else 0)
    strip = 0.14
    cbar_x = left + matrix_w + (0.45 if has_families else 0.25)
    legend_x = cbar_x + 1.0
    fig_w = legend_x + legend_w + 0.15
    fig_h = bottom + max(matrix_h, legend_h) + top
    fig = Figure(figsize=(fig_w, fig_h))
    matrix_bottom = bottom + max(matrix_h, legend_h) - matrix_h  # top-aligned with the legend

    def box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / fig_w, y / fig_h, w / fig_w, h / fig_h)

    ax = fig.add_axes(box(left, matrix_bottom, matrix_w, matrix_h))
    _draw_cells(ax, data)
    ax.set_xticks(range(n_cols), data.cols, rotation=90, fontsize=label_pt)
    ax.set_yticks(range(n_rows), data.rows, fontsize=label_pt)
    ax.tick_params(length=0, pad=2)
    ax.set_xlabel("donor language j", fontsize=9)
    ax.set_ylabel("target language i", fontsize=9)
    for label, family in zip(ax.get_yticklabels(), data.row_families, strict=True):
        label.set_color(_label_color(data.family_colors.get(family)))
    for label, family in zip(ax.get_xticklabels(), data.col_families, strict=True):
        label.set_color(_label_color(data.family_colors.get(family)))
    if has_families:
        top_strip = fig.add_axes(box(left, matrix_bottom + matrix_h + 0.04, matrix_w, strip))
        top_strip.imshow(
            [[data.family_colors[f] for f in data.col_families]], aspect="auto", interpolation="nearest"
        )
        top_strip.set_axis_off()
        right_strip = fig.add_axes(box(left + matrix_w + 0.04, matrix_bottom, strip, matrix_h))
        right_strip.imshow(
            [[data.family_colors[f]] for f in data.row_families], aspect="auto", interpolation="nearest"
        )
        right_strip.set_axis_off()
    if data.annotate:
        norm = Normalize(vmin=-data.clip, vmax=data.clip, clip=True)
        for i in range(n_rows):
            for j in range(n_cols):
                if data.missing[i, j]:
                    continue
                faded = bool(data.faded[i, j])
                if data.diagonal[i, j]:
                    text = "1"  # by definition
                    strong = False
                else:
                    value = data.values[i, j]
                    text = _format_value(value, data.decimals)
                    # white text only on a saturated cell without the (light) box of an unstable cell
                    strong = abs(norm(value) - 0.5) > 0.33 and not faded and not data.unstable[i, j]
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=data.font_size,
                    # a faded cell's value is grey italic too, so the mark survives greyscale printing
                    color="white" if strong else ("#5a5a5a" if faded else "black"),
                    style="italic" if faded else "normal",
                    # keep the number legible over the hatching of an unstable cell
                    bbox=_UNSTABLE_TEXT_BOX if data.unstable[i, j] else None,
                    zorder=6,
                )
    cbar_h = min(matrix_h, 4.0)
    cax = fig.add_axes(box(cbar_x, matrix_bottom + matrix_h - cbar_h, 0.18, cbar_h))
    mappable = ScalarMappable(norm=Normalize(-data.clip, data.clip), cmap=COLORMAP)
    colorbar = fig.colorbar(mappable, cax=cax, extend="both")
    colorbar.set_label(f"CLTM (clipped at ±{data.clip:g})", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(legend_x / fig_w, (matrix_bottom + matrix_h + 0.05) / fig_h),
        fontsize=7,
        frameon=False,
        title="marks" + (" and families" if has_families else ""),
        title_fontsize=8,
        ncols=legend_cols,
        borderaxespad=0,
    )
    fig.text(left / fig_w, (fig_h - 0.3) / fig_h, data.title, ha="left", va="center", fontsize=11)
    if data.note:
        fig.text(left / fig_w, 0.15 / fig_h, data.note, fontsize=8, style="italic", ha="left")
    return fig


def _label_color(rgba: tuple[float, float, float, float] | None) -> tuple[float, float, float]:
    """Darken a family colour so that tick labels in it stay readable on white."""
    if rgba is None:
        return (0.0, 0.0, 0.0)
    return tuple(0.55 * channel for channel in rgba[:3])  # type: ignore[return-value]


def grid_shape(n_panels: int) -> tuple[int, int]:
    """Rows and columns of a near-square small-multiples grid."""
    n_cols = max(1, math.ceil(math.sqrt(n_panels)))
    return math.ceil(n_panels / n_cols), n_cols
