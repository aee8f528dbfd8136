"""Layer views: Perf(i) and matrix summaries across layers, the best layer, the small-multiples grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cltm.report.heatmap import COLORMAP, HeatmapData, _draw_cells, family_colors, grid_shape
from cltm.report.results import family_lookup

BEST_LAYER_CRITERION = (
    "best layer = highest mean Perf(i) over target languages in the single condition "
    "(trained on N samples of i; the matrices' perf_single); ties go to the shallower layer"
)
BEST_LAYER_FALLBACK_CRITERION = (
    "best layer = highest mean off-diagonal CLTM over stable cells (no single-condition runs available)"
)
SUMMARY_SCHEMA = {
    "layer": pl.Int64,
    "mean_offdiag_stable": pl.Float64,
    "median_offdiag_stable": pl.Float64,
    "n_stable": pl.Int64,
    "share_positive": pl.Float64,
    "asymmetry": pl.Float64,
    "n_unstable": pl.Int64,
    "n_cells": pl.Int64,
}
"""The per-layer summary: columns of the engine's properties table, shown as they are."""


def single_performance(matrices: pl.DataFrame) -> pl.DataFrame:
    """Perf(i) per layer and target as the engine computed it (``perf_single`` of the matrices, in the
    matrix's metric, higher is better). ``matrices`` holds one (task, model, probe). Columns: layer, target,
    perf."""
    schema = {"layer": pl.Int64, "target": pl.Utf8, "perf": pl.Float64}
    if matrices.is_empty():
        return pl.DataFrame(schema=schema)
    return (
        matrices.filter((pl.col("target") == pl.col("donor")) & pl.col("perf_single").is_not_null())
        .group_by("layer", "target")
        .agg(pl.col("perf_single").first().alias("perf"))
        .select(pl.col("layer").cast(pl.Int64), "target", "perf")
        .sort("layer", "target", nulls_last=True)
    )


def layer_summary(properties: pl.DataFrame) -> pl.DataFrame:
    """Per layer: mean/median off-diagonal CLTM over stable cells and their count, share positive, asymmetry,
    unstable and present cells — read from the engine's ``properties`` rows of one (task, model, probe).

    Nothing is recomputed here: the definitions live in :mod:`cltm.transfer.properties`.
    """
    if properties.is_empty():
        return pl.DataFrame(schema=SUMMARY_SCHEMA)
    return (
        properties.select([pl.col(c).cast(dtype) for c, dtype in SUMMARY_SCHEMA.items()])
        .unique("layer", keep="first", maintain_order=True)
        .sort("layer", nulls_last=True)
    )


def best_layer(performance: pl.DataFrame, summary: pl.DataFrame | None = None) -> tuple[int | None, str]:
    """The best layer and the criterion used (see :data:`BEST_LAYER_CRITERION`)."""
    performance = performance.filter(pl.col("layer").is_not_null())
    if performance.height:
        by_layer = performance.group_by("layer").agg(pl.col("perf").mean()).sort("layer")
        perf = by_layer["perf"].to_numpy()
        if np.isfinite(perf).any():
            return int(by_layer["layer"][int(np.nanargmax(perf))]), BEST_LAYER_CRITERION
    if summary is not None:
        summary = summary.filter(pl.col("layer").is_not_null())
    if summary is not None and summary.height:
        means = summary["mean_offdiag_stable"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        if np.isfinite(means).any():
            return int(summary["layer"][int(np.nanargmax(means))]), BEST_LAYER_FALLBACK_CRITERION
    return None, "no layer could be ranked (no runs and no stable cells)"


def draw_layer_curves(
    performance: pl.DataFrame,
    summary: pl.DataFrame,
    *,
    best: int | None,
    criterion: str,
    families: Mapping[str, str] | None = None,
    title: str = "",
    metric: str = "Perf",
    palette: Mapping[str, tuple[float, float, float, float]] | None = None,
) -> Figure:
    """Four panels over layers: Perf(i) per language, mean off-diagonal CLTM, share positive, asymmetry."""
    fig = Figure(figsize=(11, 7.2), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    ax_perf, ax_mean, ax_share, ax_asym = axes.ravel()
    languages = sorted(performance["target"].unique().to_list()) if performance.height else []
    family_of = {lang: family_lookup(lang, families) for lang in languages}
    if palette is not None:
        colors = {f: palette[f] for f in sorted(set(family_of.values())) if f in palette}
    else:
        colors = family_colors(sorted(set(family_of.values()))) if families else {}
    many = len(languages) > 12
    cycle = [ax_perf._get_lines.get_next_color() for _ in range(max(1, len(languages)))] if not many else []
    for index, lang in enumerate(languages):
        curve = performance.filter(pl.col("target") == lang).sort("layer")
        color = colors.get(family_of[lang]) if (many and colors) else (cycle[index] if cycle else "#888888")
        ax_perf.plot(
            curve["layer"].to_numpy(),
            curve["perf"].to_numpy(),
            color=color,
            linewidth=0.7 if many else 1.3,
            alpha=0.6 if many else 0.95,
            label=None if many else lang,
            marker=None if many else "o",
            markersize=3,
        )
    if languages:
        mean = performance.group_by("layer").agg(pl.col("perf").mean()).sort("layer")
        ax_perf.plot(mean["layer"], mean["perf"], color="black", linewidth=2.4, label="mean over languages")
        if many and colors:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=c, label=f) for f, c in colors.items()]
            handles.append(Line2D([], [], color="black", linewidth=2.4, label="mean"))
            ax_perf.legend(handles=handles, fontsize=6, ncols=2, loc="best", title="family", title_fontsize=7)
        else:
            ax_perf.legend(fontsize=7, ncols=2 if len(languages) > 6 else 1, loc="best")
    else:
        ax_perf.text(
            0.5, 0.5, "no single-condition runs", ha="center", va="center", transform=ax_perf.transAxes
        )
    ax_perf.set_title(f"{metric}(i), single condition (N of i)", fontsize=10)
    ax_perf.set_ylabel(metric)
    layers = summary["layer"].to_numpy()
    ax_mean.plot(layers, summary["mean_offdiag_stable"], marker="o", color="#1f4e79", label="mean")
    ax_mean.plot(
        layers, summary["median_offdiag_stable"], marker="s", linestyle="--", color="#6a9bc3", label="median"
    )
    ax_mean.axhline(0, color="#999999", linewidth=0.8)
    ax_mean.axhline(1, color="#999999", linewidth=0.8, linestyle=":")
    ax_mean.legend(fontsize=7)
    if not np.isfinite(
        summary["mean_offdiag_stable"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    ).any():
        ax_mean.text(
            0.5,
            0.5,
            "no stable off-diagonal cell at any layer:\nevery own-data gain is within noise",
            ha="center",
            va="center",
            transform=ax_mean.transAxes,
            fontsize=8,
            color="#b71c1c",
        )
    ax_mean.set_title("off-diagonal CLTM (stable cells; engine's properties)", fontsize=10)
    ax_share.plot(layers, summary["share_positive"], marker="o", color="#2e7d32")
    ax_share.set_ylim(-0.02, 1.02)
    ax_share.set_title("share of positive off-diagonal cells", fontsize=10)
    ax_asym.plot(layers, summary["asymmetry"], marker="o", color="#8e24aa")
    ax_asym.set_title("asymmetry ‖M−Mᵀ‖/‖M‖", fontsize=10)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best, color="#d84315", linestyle="--", linewidth=1.2)
    for ax in axes[1]:
        ax.set_xlabel("layer")
    if layers.size:
        step = max(1, int(np.ceil(layers.size / 14)))
        ax_asym.set_xticks(layers[::step])
    if best is not None:
        at_right_edge = layers.size > 0 and best >= layers.max()
        ax_perf.annotate(
            f"best layer {best}",
            xy=(best, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if at_right_edge else 3, -12),
            textcoords="offset points",
            ha="right" if at_right_edge else "left",
            color="#d84315",
            fontsize=8,
        )
    fig.suptitle(f"{title}\n{criterion}", fontsize=9)
    return fig


def draw_small_multiples(
    heatmaps: Sequence[HeatmapData], *, title: str = "", best: int | None = None
) -> Figure:
    """One panel per layer, identical language order and colours; unstable cells hatched, clipped dotted.

    Panels sit on a fixed grid (inches), not constrained layout: with a dozen panels the layout solver
    costs more than the drawing.
    """
    n_rows, n_cols = grid_shape(len(heatmaps))
    n_lang = max(max(len(d.rows), len(d.cols)) for d in heatmaps)
    labels = n_lang <= 12
    panel = 2.2 if n_lang <= 12 else 3.0
    gap_x = 0.55 if labels else 0.15
    gap_y = 0.85 if labels else 0.4
    left, right, top, bottom = (0.5 if labels else 0.2), 1.2, 1.1, (0.5 if labels else 0.2)
    fig_w = left + n_cols * panel + (n_cols - 1) * gap_x + right
    fig_h = top + n_rows * panel + (n_rows - 1) * gap_y + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    for index, data in enumerate(heatmaps):
        row, col = divmod(index, n_cols)
        x = left + col * (panel + gap_x)
        y = fig_h - top - (row + 1) * panel - row * gap_y
        ax = fig.add_axes((x / fig_w, y / fig_h, panel / fig_w, panel / fig_h))
        _draw_cells(ax, data, marks=False)
        is_best = data.layer == best
        ax.set_title(
            f"layer {data.layer}" + ("  ★ best" if is_best else ""),
            fontsize=9,
            color="#d84315" if is_best else "black",
            fontweight="bold" if is_best else "normal",
            pad=3,
        )
        if labels:
            ax.set_xticks(range(len(data.cols)), data.cols, rotation=90, fontsize=6)
            ax.set_yticks(range(len(data.rows)), data.rows, fontsize=6)
            ax.tick_params(length=0, pad=1)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if is_best:
            for spine in ax.spines.values():
                spine.set_edgecolor("#d84315")
                spine.set_linewidth(2)
    clip = heatmaps[0].clip
    bar_h = min(3.0, fig_h - top - bottom)
    cax = fig.add_axes(
        ((fig_w - right + 0.3) / fig_w, (fig_h - top - bar_h) / fig_h, 0.16 / fig_w, bar_h / fig_h)
    )
    colorbar = fig.colorbar(
        ScalarMappable(norm=Normalize(-clip, clip), cmap=COLORMAP), cax=cax, extend="both"
    )
    colorbar.set_label(f"CLTM (clipped at ±{clip:g})", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    fig.text(
        left / fig_w,
        (fig_h - 0.45) / fig_h,
        f"{title}\nrows = targets, columns = donors\nhatched = unstable, dot = beyond clip, "
        "pale = sign not decisive",
        fontsize=8,
        va="center",
    )
    return fig
