"""Confusion matrices of classification runs (the engine's ``confusion`` table): per language and pair.

Counts are summed over seeds and folds: each run's test set is scored once per seed (and, in K-fold, every
speaker once per fold), so the sum is the confusion of all the predictions the runs made. Panels show
row-normalised counts (each row is a true class; the diagonal is its recall) with the raw count beside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from matplotlib.figure import Figure

MAX_PANELS = 64
"""Zero-shot pairs grow as L·(L−1): past this many panels the figure keeps the first ones (CSV has all)."""


@dataclass(frozen=True)
class ConfusionPanel:
    """One confusion matrix: ``counts[t, p]`` = test items of true class ``classes[t]`` predicted ``p``."""

    title: str
    target: str
    donor: str
    classes: list[str]
    counts: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        """Row-normalised counts (NaN for a class absent from the test set)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, self.counts / totals, np.nan)


def confusion_counts(
    confusion: pl.DataFrame, *, task: str, model: str, probe: str, layer: int | None, condition: str
) -> pl.DataFrame:
    """Counts of one (task, model, probe, layer, condition), summed over seeds and folds.

    Columns: target, donor, true, pred, count. ``single`` keeps donor == target (the monolingual run).
    """
    rows = confusion.filter(
        (pl.col("task") == task)
        & (pl.col("model") == model)
        & (pl.col("probe") == probe)
        & pl.col("layer").eq_missing(layer)
        & (pl.col("condition") == condition)
    )
    return (
        rows.group_by("target", "donor", "true", "pred")
        .agg(pl.col("count").sum())
        .sort("target", "donor", "true", "pred")
    )


def confusion_panels(counts: pl.DataFrame, order: list[str] | None = None) -> list[ConfusionPanel]:
    """One panel per (target, donor) of ``counts`` (targets in ``order`` when given), classes shared."""
    if counts.height == 0:
        return []
    classes = sorted(set(counts["true"].to_list()) | set(counts["pred"].to_list()))
    index = {c: k for k, c in enumerate(classes)}
    rank = {lang: k for k, lang in enumerate(order or [])}
    matrices: dict[tuple[str, str], np.ndarray] = {}
    for target, donor, true, pred, count in counts.select(
        "target", "donor", "true", "pred", "count"
    ).iter_rows():
        cell = matrices.setdefault((target, donor), np.zeros((len(classes), len(classes)), dtype=np.int64))
        cell[index[true], index[pred]] += int(count)
    pairs = sorted(
        matrices, key=lambda td: (rank.get(td[0], len(rank)), td[0], rank.get(td[1], len(rank)), td[1])
    )
    return [
        ConfusionPanel(
            target if target == donor else f"{donor} → {target}",
            target,
            donor,
            classes,
            matrices[(target, donor)],
        )
        for target, donor in pairs
    ]


def draw_confusion_grid(panels: list[ConfusionPanel], *, title: str = "") -> Figure:
    """Small multiples of row-normalised confusion matrices (shared colour scale 0..1).

    All panels are tiles of one image (one ``imshow``, not one axes per panel): a 54-language study draws in
    a fraction of a second. Values are written in the cells while they stay legible.
    """
    shown = panels[:MAX_PANELS]
    k = len(shown[0].classes)
    n_cols = max(1, min(len(shown), math.ceil(math.sqrt(len(shown)))))
    n_rows = math.ceil(len(shown) / n_cols)
    step = k + 1  # one blank cell between tiles
    mosaic = np.full((n_rows * step + 1, n_cols * step), np.nan)
    for index, panel in enumerate(shown):
        r, c = divmod(index, n_cols)
        mosaic[r * step + 1 : r * step + 1 + k, c * step : c * step + k] = panel.recall
    cell = min(0.45, max(0.12, 9.0 / (n_cols * step)))
    fig = Figure(
        figsize=(n_cols * step * cell + 2.4, n_rows * step * cell + 2.0),
        layout="constrained",
    )
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(mosaic), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    label_pt = max(4.0, min(7.0, cell * 72 * 0.35))
    label_cells = 0.62 * label_pt * max(len(c) for c in shown[0].classes) / (cell * 72) + 0.3
    # widen the view so the class names (left of the first column, below the last row) are inside it
    ax.set_xlim(-0.5 - label_cells, n_cols * step - 0.5)
    ax.set_ylim(n_rows * step + label_cells - 0.5, -0.5)
    annotate = cell * 72 >= 14
    title_pt = max(4.0, min(8.0, cell * 72 * 0.45))
    for index, panel in enumerate(shown):
        r, c = divmod(index, n_cols)
        top, left = r * step + 1, c * step
        ax.text(left - 0.5, top - 0.65, panel.title, fontsize=title_pt, ha="left", va="bottom")
        if c == 0:  # class names beside the first column of tiles and below the last row
            for t, name in enumerate(panel.classes):
                ax.text(left - 0.6, top + t, name, fontsize=label_pt, ha="right", va="center")
        if r == n_rows - 1 or index + n_cols >= len(shown):
            for q, name in enumerate(panel.classes):
                ax.text(left + q, top + k - 0.4, name, fontsize=label_pt, ha="center", va="top", rotation=90)
        if annotate:
            recall = panel.recall
            for t in range(k):
                for q in range(k):
                    if np.isfinite(recall[t, q]):
                        ax.text(
                            left + q,
                            top + t,
                            f"{recall[t, q]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=max(4.0, min(7.0, cell * 72 * 0.3)),
                            color="white" if recall[t, q] > 0.6 else "black",
                        )
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class (recall)")
    note = f" (first {MAX_PANELS} of {len(panels)}; the CSV has all)" if len(panels) > MAX_PANELS else ""
    classes = ", ".join(shown[0].classes)
    fig.suptitle(f"{title}{note}\nrows = true, columns = predicted, classes in order: {classes}", fontsize=9)
    return fig


def confusion_csv(panels: list[ConfusionPanel]) -> pl.DataFrame:
    """The panels in long form: target, donor, true, pred, count, recall."""
    rows = [
        (panel.target, panel.donor, true, pred, int(panel.counts[t, p]), float(panel.recall[t, p]))
        for panel in panels
        for t, true in enumerate(panel.classes)
        for p, pred in enumerate(panel.classes)
    ]
    return pl.DataFrame(
        rows,
        schema={
            "target": pl.String,
            "donor": pl.String,
            "true": pl.String,
            "pred": pl.String,
            "count": pl.Int64,
            "recall": pl.Float64,
        },
        orient="row",
    )
