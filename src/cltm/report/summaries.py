"""Donor/receiver charts (the engine's scores), top pairs, zero-shot views, probe vs fine-tune."""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from scipy.stats import spearmanr

from cltm.report.heatmap import HeatmapData
from cltm.transfer.tables import MATRIX_KEYS, MatrixResult

FINETUNE_SOURCE = "finetune"
MIN_CELLS_FOR_SPEARMAN = 3


def draw_donor_receiver(
    scores: pl.DataFrame, data: HeatmapData, *, title: str = "", source: str = ""
) -> Figure:
    """Two horizontal bar charts of the engine's receiver and donor scores (``language_scores``: columns
    language, family, receiver, donor), each sorted by its score, bars coloured by family (legend below)."""
    n = scores.height
    fig = Figure(figsize=(10, max(3.0, 0.16 * n + 1.5)), layout="constrained")
    axes = fig.subplots(1, 2)
    label_pt = 8 if n <= 30 else 6
    for ax, column, label in (
        (axes[0], "receiver", "receiver score: Σ_j max(CLTM[i,j], 0)  (how much i gains from others)"),
        (axes[1], "donor", "donor score: Σ_i max(CLTM[i,j], 0)  (how much j gives to others)"),
    ):
        ordered = scores.drop_nulls(column).filter(pl.col(column).is_not_nan()).sort(column)
        colors = [data.family_colors.get(f, (0.5, 0.5, 0.5, 1.0)) for f in ordered["family"]]
        ax.barh(range(ordered.height), ordered[column].to_numpy(), color=colors)
        ax.set_yticks(range(ordered.height), ordered["language"].to_list(), fontsize=label_pt)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(y=0.01)
    families = [f for f in dict.fromkeys(scores["family"].to_list()) if f in data.family_colors]
    if len(families) > 1 or (families and families[0] != "other"):
        handles = [Patch(facecolor=data.family_colors[f], label=f) for f in sorted(families)]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(6, len(handles)),
            fontsize=7,
            frameon=False,
            title="family",
            title_fontsize=8,
        )
    fig.suptitle(title + (f"\nscores: {source}" if source else ""), fontsize=10)
    return fig


def top_pairs(data: HeatmapData, k: int = 10) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``k`` most positive and ``k`` most negative stable off-diagonal cells (with SE and P>0)."""
    usable = ~data.diagonal & ~data.missing & ~data.unstable
    i, j = np.nonzero(usable)
    cells = pl.DataFrame(
        {
            "target": [data.rows[a] for a in i],
            "donor": [data.cols[b] for b in j],
            "cltm": data.values[i, j].astype(float),
            "cltm_se": data.se[i, j].astype(float),
            "p_positive": data.p_positive[i, j].astype(float),
        },
        schema={
            "target": pl.Utf8,
            "donor": pl.Utf8,
            "cltm": pl.Float64,
            "cltm_se": pl.Float64,
            "p_positive": pl.Float64,
        },
    )
    positive = cells.filter(pl.col("cltm") > 0).sort("cltm", descending=True).head(k)
    negative = cells.filter(pl.col("cltm") < 0).sort("cltm").head(k)
    return positive, negative


def split_finetune(result: MatrixResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split matrix rows into (probe matrices, fine-tune matrices).

    A matrix is a fine-tune one when its (task, model, layer, probe) appears in runs with ``source ==
    "finetune"``. (Matrices of fine-tune runs without matrix rows were added by the engine's
    ``matrix_from_runs`` when the results were loaded.)
    """
    matrices = result.matrices
    finetune_runs = result.runs.filter(pl.col("source") == FINETUNE_SOURCE)
    if finetune_runs.height == 0:
        return matrices, matrices.clear()
    keys = finetune_runs.select(MATRIX_KEYS).unique().with_columns(pl.lit(True).alias("__ft"))
    flagged = matrices.join(keys, on=list(MATRIX_KEYS), how="left", nulls_equal=True).with_columns(
        pl.col("__ft").fill_null(False)
    )
    return flagged.filter(~pl.col("__ft")).drop("__ft"), flagged.filter(pl.col("__ft")).drop("__ft")


def finetune_pairs(probe_matrices: pl.DataFrame, finetune_matrices: pl.DataFrame) -> pl.DataFrame:
    """Cells present in both: one row per (task, model, probe, layer, finetune, target, donor).

    Off-diagonal only (the diagonal is 1 by definition in both). ``finetune`` names the fine-tune matrix
    (its probe column, and its layer when it has several).
    """
    if probe_matrices.is_empty() or finetune_matrices.is_empty():
        return pl.DataFrame()
    ft = finetune_matrices.filter(pl.col("target") != pl.col("donor"))
    several_layers = ft.group_by("task", "model", "probe").agg(pl.col("layer").n_unique() > 1)
    ft = ft.join(several_layers.rename({"layer": "__several"}), on=["task", "model", "probe"]).with_columns(
        pl.when(pl.col("__several"))
        .then(pl.col("probe") + " L" + pl.col("layer").cast(pl.Utf8))
        .otherwise(pl.col("probe"))
        .alias("finetune")
    )
    ft = ft.select(
        "task",
        "model",
        "finetune",
        "target",
        "donor",
        pl.col("cltm").alias("finetune_cltm"),
        pl.col("unstable").alias("finetune_unstable"),
    )
    probe = probe_matrices.filter(pl.col("target") != pl.col("donor")).select(
        "task",
        "model",
        "probe",
        "layer",
        "target",
        "donor",
        pl.col("cltm").alias("probe_cltm"),
        pl.col("unstable").alias("probe_unstable"),
    )
    return probe.join(ft, on=["task", "model", "target", "donor"], how="inner").sort(
        "task", "model", "probe", "finetune", "layer", "target", "donor"
    )


def spearman_by_layer(pairs: pl.DataFrame) -> pl.DataFrame:
    """Spearman's ρ between probe and fine-tune CLTM per (task, model, probe, finetune, layer)."""
    schema = {
        "task": pl.Utf8,
        "model": pl.Utf8,
        "probe": pl.Utf8,
        "finetune": pl.Utf8,
        "layer": pl.Int64,
        "n_cells": pl.Int64,
        "spearman": pl.Float64,
        "p_value": pl.Float64,
    }
    if pairs.is_empty():
        return pl.DataFrame(schema=schema)
    rows = []
    for key, group in pairs.group_by("task", "model", "probe", "finetune", "layer", maintain_order=True):
        group = group.filter(pl.col("probe_cltm").is_finite() & pl.col("finetune_cltm").is_finite())
        rho, p_value = float("nan"), float("nan")
        if (
            group.height >= MIN_CELLS_FOR_SPEARMAN
            and group["probe_cltm"].n_unique() > 1
            and group["finetune_cltm"].n_unique() > 1
        ):
            result = spearmanr(group["probe_cltm"].to_numpy(), group["finetune_cltm"].to_numpy())
            rho, p_value = float(result.statistic), float(result.pvalue)
        rows.append((*key, group.height, rho, p_value))
    return pl.DataFrame(rows, schema=schema, orient="row").sort("task", "model", "probe", "finetune", "layer")


def draw_finetune_scatter(
    pairs: pl.DataFrame,
    correlations: pl.DataFrame,
    *,
    clip: float,
    title: str = "",
    highlight: int | None = None,
) -> Figure:
    """Left: Spearman ρ (probe vs fine-tune CLTM) per probe layer. Right: the cells at one layer.

    The scatter shows ``highlight`` (default: the layer with the highest ρ); values are clipped at ±clip like
    the heatmaps (points on the edge are beyond it) and unstable cells drawn hollow.
    """
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_rho, ax_scatter = fig.subplots(1, 2)
    layers = correlations["layer"].to_numpy()
    rho = correlations["spearman"].to_numpy()
    ax_rho.plot(layers, rho, marker="o", color="#1f4e79")
    ax_rho.axhline(0, color="#999999", linewidth=0.8)
    ax_rho.set_ylim(-1.05, 1.05)
    ax_rho.set_xlabel("probe layer")
    ax_rho.set_ylabel("Spearman ρ")
    ax_rho.grid(alpha=0.3)
    ax_rho.set_title("rank agreement of the cells, per probe layer", fontsize=9)
    if highlight is None or highlight not in set(layers.tolist()):
        finite = np.isfinite(rho)
        highlight = int(layers[finite][np.argmax(rho[finite])]) if finite.any() else int(layers[-1])
    ax_rho.axvline(highlight, color="#d84315", linestyle="--", linewidth=1)
    group = pairs.filter(pl.col("layer") == highlight)
    x = np.clip(group["probe_cltm"].to_numpy(), -clip, clip)
    y = np.clip(group["finetune_cltm"].to_numpy(), -clip, clip)
    unstable = (
        group["probe_unstable"].fill_null(False) | group["finetune_unstable"].fill_null(False)
    ).to_numpy()
    ax_scatter.scatter(x[~unstable], y[~unstable], s=18, color="#1f4e79", alpha=0.8, label="stable")
    if unstable.any():
        ax_scatter.scatter(
            x[unstable], y[unstable], s=18, facecolors="none", edgecolors="#b71c1c", label="unstable"
        )
    ax_scatter.plot([-clip, clip], [-clip, clip], color="#999999", linewidth=0.8, linestyle=":")
    ax_scatter.axhline(0, color="#cccccc", linewidth=0.6)
    ax_scatter.axvline(0, color="#cccccc", linewidth=0.6)
    ax_scatter.set_xlim(-clip * 1.05, clip * 1.05)
    ax_scatter.set_ylim(-clip * 1.05, clip * 1.05)
    ax_scatter.set_xlabel(f"probe CLTM (layer {highlight})")
    ax_scatter.set_ylabel("fine-tune CLTM")
    ax_scatter.legend(fontsize=7, loc="upper left")
    rho_at = dict(zip(layers.tolist(), rho.tolist(), strict=True)).get(highlight, float("nan"))
    ax_scatter.set_title(f"layer {highlight}: ρ = {rho_at:.2f}, {group.height} cells", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def zero_shot_matrix(matrix: pl.DataFrame, data: HeatmapData) -> np.ndarray | None:
    """Perf of the ``zero_shot`` condition (trained on N of donor j only, tested on target i), in the
    heatmap's order, with Perf(i) on the diagonal; None when the matrix rows carry no zero-shot value.

    Taken from the CLTM engine's ``perf_zero_shot`` / ``perf_single`` matrix columns.
    """
    if "perf_zero_shot" not in matrix.columns:
        return None
    off = matrix.filter(pl.col("target") != pl.col("donor"))
    if off["perf_zero_shot"].drop_nulls().len() == 0:
        return None
    row = {lang: i for i, lang in enumerate(data.rows)}
    col = {lang: j for j, lang in enumerate(data.cols)}
    values = np.full(data.values.shape, np.nan)
    single = "perf_single" in matrix.columns
    for target, donor, zero, own in matrix.select(
        "target", "donor", "perf_zero_shot", pl.col("perf_single") if single else pl.lit(None)
    ).iter_rows():
        if target in row and donor in col:
            value = own if target == donor else zero
            values[row[target], col[donor]] = np.nan if value is None else value
    return values


def draw_zero_shot(values: np.ndarray, data: HeatmapData, *, metric: str = "Perf", title: str = "") -> Figure:
    """Zero-shot Perf as a sequential heatmap (same order and family blocks as the CLTM heatmap)."""
    n_rows, n_cols = values.shape
    side = data.cell_inches
    fig = Figure(figsize=(n_cols * side + 2.6, n_rows * side + 1.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="equal", interpolation="nearest")
    for block in data.family_blocks:
        ax.add_patch(
            Rectangle(
                (block.col_start - 0.5, block.row_start - 0.5),
                block.col_stop - block.col_start,
                block.row_stop - block.row_start,
                fill=False,
                edgecolor="white",
                linewidth=1.4,
            )
        )
    label_pt = min(10.0, max(5.0, side * 72 * 0.62))
    ax.set_xticks(range(n_cols), data.cols, rotation=90, fontsize=label_pt)
    ax.set_yticks(range(n_rows), data.rows, fontsize=label_pt)
    ax.tick_params(length=0)
    ax.set_xlabel("trained on donor j only", fontsize=9)
    ax.set_ylabel("tested on target i", fontsize=9)
    if data.annotate:
        finite = values[np.isfinite(values)]
        middle = float(np.mean([finite.min(), finite.max()])) if finite.size else 0.0
        for i, j in np.argwhere(np.isfinite(values)):
            ax.text(
                j,
                i,
                f"{values[i, j]:.{data.decimals}f}".replace("0.", ".", 1),
                ha="center",
                va="center",
                fontsize=data.font_size,
                color="black" if values[i, j] > middle else "white",
                fontweight="bold" if i == j or data.rows[i] == data.cols[j] else "normal",
            )
    fig.colorbar(image, ax=ax, shrink=0.7, label=f"{metric} (diagonal: trained on own data, bold)")
    fig.suptitle(title, fontsize=10)
    return fig
