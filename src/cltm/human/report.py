"""The humans-vs-models section of the report: figures (PNG) and an HTML fragment.

:func:`human_section` reads the comparison tables of ``cltm human compare`` (and, when given, the model's runs
table with per-layer results on the full test sets) and draws:

* ``figures/human_groups.<fmt>``: per stimulus language, each listener group's accuracy with its two-way
  bootstrap interval (native group highlighted), next to each model's monolingual and mean cross-lingual
  accuracy at its best layer;
* ``figures/human_layers.<fmt>``: per stimulus language, the model's monolingual and cross-lingual accuracy
  per layer, with the native and non-native listener intervals as bands;
* ``figures/human_drops.<fmt>``: human vs model cross-lingual drops per language pair at the best layer, with
  Spearman's rank correlation.

The best layer of a model (source, model, probe) is the one with the highest mean monolingual score over
languages (:func:`cltm.human.compare.best_layers`). Figures are drawn on ``matplotlib.figure.Figure`` objects
(no pyplot state), so the section can be rendered from worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cltm.human.compare import best_layers
from cltm.human.tables import HumanComparison, read_comparison

__all__ = ["HumanReportSettings", "human_section", "model_layer_curves"]

_NATIVE = "#1f4e79"
_NON_NATIVE = "#9bb7d4"
_LINES = ("#c0392b", "#27ae60", "#8e44ad", "#d35400")
#: runs-table condition -> setting drawn, and each setting's line style
_RUN_SETTINGS = {"single": "monolingual", "zero_shot": "cross-lingual", "sequential": "transfer"}
_STYLES = (("monolingual", "-"), ("cross-lingual", "--"), ("transfer", ":"))


@dataclass(frozen=True)
class HumanReportSettings:
    """Which metric to draw (``accuracy``, ``uar`` or ``f1``), figure formats and resolution."""

    metric: str = "accuracy"
    formats: tuple[str, ...] = ("png",)
    dpi: int = 110

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "uar", "f1"):
            raise ValueError(f"metric {self.metric!r} is not one of accuracy, uar, f1")


def model_layer_curves(
    comparison: HumanComparison, runs: pl.DataFrame | None = None, metric: str = "accuracy"
) -> pl.DataFrame:
    """Per (source, model, probe, setting, language, layer) the model's mean ``metric``.

    From ``runs`` when given (condition ``single`` = monolingual, ``zero_shot`` = cross-lingual,
    ``sequential`` = transfer; means over seeds, folds and donors; the full test sets), otherwise from the
    comparison's ``model_scores`` (the utterances the listeners heard).
    """
    keys = ["source", "model", "probe", "setting", "language", "layer"]
    task = comparison.scores["task"][0] if comparison.scores.height else None
    if runs is not None and metric in runs.columns and runs.height:
        part = runs.filter(pl.col("condition").is_in(list(_RUN_SETTINGS)))
        if task is not None and "task" in runs.columns:
            part = part.filter(pl.col("task") == task)
        part = part.with_columns(
            pl.col("condition").replace_strict(_RUN_SETTINGS).alias("setting"),
            pl.col("target").alias("language"),
            pl.col("source").fill_null("probe")
            if "source" in runs.columns
            else pl.lit("probe").alias("source"),
        )
        if part.height:
            return part.group_by(keys).agg(pl.col(metric).mean()).sort(keys)
    scores = comparison.model_scores.filter(pl.col("setting") != "other")
    return scores.group_by(keys).agg(pl.col(metric).mean()).sort(keys)


def _save(fig: Figure, out_dir: Path, stem: str, settings: HumanReportSettings) -> str:
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for fmt in settings.formats:
        metadata = {"Software": None} if fmt == "png" else None
        fig.savefig(figures / f"{stem}.{fmt}", dpi=settings.dpi, metadata=metadata)
    fig.clear()
    page = "svg" if "svg" in settings.formats and "png" not in settings.formats else settings.formats[0]
    return f"figures/{stem}.{page}"


def _group_figure(
    groups: pl.DataFrame, curves: pl.DataFrame, best: pl.DataFrame, languages: list[str], metric: str
) -> Figure:
    fig = Figure(figsize=(3.2 * len(languages) + 1.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(languages), sharey=True, squeeze=False)[0]
    for ax, language in zip(axes, languages, strict=True):
        part = groups.filter(pl.col("language") == language).sort("group")
        x = list(range(part.height))
        values = part["value"].to_list()
        # a percentile interval need not contain the point estimate: clip the bars, never negative
        low = [max(v - lo, 0.0) for v, lo in zip(values, part["ci_low"].to_list(), strict=True)]
        high = [max(hi - v, 0.0) for v, hi in zip(values, part["ci_high"].to_list(), strict=True)]
        colours = [_NATIVE if n else _NON_NATIVE for n in part["native"].to_list()]
        ax.bar(x, values, color=colours, yerr=[low, high], capsize=3)
        ax.set_xticks(x, part["group"].to_list(), rotation=45, ha="right")
        ax.set_title(f"stimuli: {language}")
        for i, row in enumerate(best.iter_rows(named=True)):
            colour = _LINES[i % len(_LINES)]
            at = curves.filter(
                (pl.col("source") == row["source"])
                & (pl.col("model") == row["model"])
                & (pl.col("probe") == row["probe"])
                & (pl.col("layer") == row["layer"])
                & (pl.col("language") == language)
            )
            for setting, style in _STYLES:
                value = at.filter(pl.col("setting") == setting)[metric]
                if value.len():
                    label = f"{row['model']}/{row['probe']} layer {row['layer']} {setting}"
                    ax.axhline(value.mean(), color=colour, linestyle=style, linewidth=1.4, label=label)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel(metric)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Listener groups (dark: native) vs models at the best layer ({metric})")
    return fig


def _layer_figure(
    nativeness: pl.DataFrame, curves: pl.DataFrame, languages: list[str], metric: str
) -> Figure:
    fig = Figure(figsize=(3.4 * len(languages) + 1.5, 3.4), layout="constrained")
    axes = fig.subplots(1, len(languages), sharey=True, squeeze=False)[0]
    models = curves.select("source", "model", "probe").unique(maintain_order=True).rows()
    for ax, language in zip(axes, languages, strict=True):
        for row in nativeness.filter(pl.col("language") == language).iter_rows(named=True):
            colour = _NATIVE if row["native"] else _NON_NATIVE
            ax.axhspan(
                row["ci_low"], row["ci_high"], color=colour, alpha=0.25, label=f"{row['group']} listeners"
            )
            ax.axhline(row["value"], color=colour, linewidth=1)
        for i, (source, model, probe) in enumerate(models):
            colour = _LINES[i % len(_LINES)]
            for setting, style in _STYLES:
                line = curves.filter(
                    (pl.col("source") == source)
                    & (pl.col("model") == model)
                    & (pl.col("probe") == probe)
                    & (pl.col("setting") == setting)
                    & (pl.col("language") == language)
                ).sort("layer")
                if line.height:
                    label = f"{model}/{probe} {setting}"
                    ax.plot(
                        line["layer"],
                        line[metric],
                        style,
                        color=colour,
                        marker="o",
                        markersize=3,
                        label=label,
                    )
        ax.set_title(f"stimuli: {language}")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel(metric)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Models per layer vs native / non-native listeners ({metric}; bands: listener intervals)")
    return fig


def _drops_figure(drops: pl.DataFrame, rank: pl.DataFrame, best: pl.DataFrame) -> Figure | None:
    human = drops.filter(pl.col("side") == "human").select(
        pl.col("from_language").str.to_lowercase().alias("_from"),
        pl.col("language").str.to_lowercase().alias("_to"),
        pl.col("drop").alias("human_drop"),
    )
    fig = Figure(figsize=(5.2, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for i, row in enumerate(best.iter_rows(named=True)):
        key = (
            (pl.col("source") == row["source"])
            & (pl.col("model") == row["model"])
            & (pl.col("probe") == row["probe"])
            & (pl.col("layer") == row["layer"])
        )
        model = drops.filter((pl.col("side") == "model") & key).with_columns(
            pl.col("from_language").str.to_lowercase().alias("_from"),
            pl.col("language").str.to_lowercase().alias("_to"),
        )
        pairs = model.join(human, on=["_from", "_to"], how="inner")
        if pairs.is_empty():
            continue
        rho = rank.filter(key)["spearman"]
        rho_text = f"{rho[0]:.2f}" if rho.len() and rho[0] is not None else "n/a"
        colour = _LINES[i % len(_LINES)]
        ax.scatter(
            pairs["human_drop"],
            pairs["drop"],
            color=colour,
            label=f"{row['model']}/{row['probe']} layer {row['layer']} (Spearman {rho_text})",
        )
        for h, m, a, b in pairs.select("human_drop", "drop", "_from", "_to").iter_rows():
            ax.annotate(f"{a}→{b}", (h, m), fontsize=7, xytext=(3, 3), textcoords="offset points")
        drawn = True
    if not drawn:
        return None
    ax.axhline(0, color="#999", linewidth=0.8)
    ax.axvline(0, color="#999", linewidth=0.8)
    ax.set_xlabel("listener drop (native − non-native L1 → stimulus)")
    ax.set_ylabel("model drop (monolingual − trained on L1)")
    ax.legend(fontsize="small")
    ax.set_title("Cross-lingual drops at the best layer")
    return fig


def _table(df: pl.DataFrame) -> str:
    # the report's own table helper keeps the look of the rest of the page
    from cltm.report.html import table

    return table(df)


def human_section(
    comparison: HumanComparison | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    runs: pl.DataFrame | None = None,
    settings: HumanReportSettings = HumanReportSettings(),
) -> str:
    """Draw the humans-vs-models figures into ``out_dir/figures`` and return the section's HTML fragment.

    ``comparison`` is a :class:`HumanComparison` or a ``cltm human compare --out`` directory; ``runs`` an
    optional runs table (per-layer monolingual / zero-shot results of the probes or fine-tuning). Image
    paths in the fragment are relative to ``out_dir`` (where the report's ``index.html`` lives).
    """
    if not isinstance(comparison, HumanComparison):
        comparison = read_comparison(comparison)
    out = Path(out_dir)
    metric = settings.metric
    scores = comparison.scores.filter(pl.col("metric") == metric)
    if scores.is_empty():
        return (
            '<section id="humans-vs-models"><h2>Humans vs models</h2>'
            '<p class="note">(no listener scores)</p></section>'
        )
    groups = scores.filter(pl.col("level") == "group")
    nativeness = scores.filter(pl.col("level") == "nativeness")
    languages = sorted(scores["language"].unique().to_list())
    curves = model_layer_curves(comparison, runs, metric)
    best = best_layers(curves, metric)

    parts = [
        '<section id="humans-vs-models"><h2>Humans vs models</h2>',
        '<p class="note">Listener panels scored on the stimuli they heard; intervals are two-way bootstrap '
        "intervals over listeners and utterances. A listener is native for a stimulus when the listener "
        "group equals the stimulus language. Best layer = highest mean monolingual score of the model. "
        + (
            "Model curves come from the runs table (full test sets)."
            if runs is not None
            else "Model numbers come from its predictions on the listeners' utterances."
        )
        + "</p>",
    ]
    src = _save(_group_figure(groups, curves, best, languages, metric), out, "human_groups", settings)
    parts.append(
        f'<figure><img src="{escape(src)}" alt="listener groups vs models"><figcaption>Listener groups '
        f"({metric}, dark = native) with each model's monolingual (solid), cross-lingual (dashed) and "
        "transfer (dotted) score at its best layer.</figcaption></figure>"
    )
    if curves.height:
        src = _save(_layer_figure(nativeness, curves, languages, metric), out, "human_layers", settings)
        parts.append(
            f'<figure><img src="{escape(src)}" alt="models per layer vs listeners"><figcaption>Model '
            f"{metric} per layer (solid: monolingual, dashed: cross-lingual, dotted: transfer) against "
            "native and non-native listener intervals.</figcaption></figure>"
        )
    drops_fig = _drops_figure(comparison.drops, comparison.rank_correlation, best)
    if drops_fig is not None:
        src = _save(drops_fig, out, "human_drops", settings)
        parts.append(
            f'<figure><img src="{escape(src)}" alt="human vs model drops"><figcaption>Cross-lingual drops '
            "per (listener L1 / training language → stimulus language) pair.</figcaption></figure>"
        )

    shown = ["group", "language", "native", "n_listeners", "n_utts", "value", "ci_low", "ci_high"]
    parts.append(f"<h3>Native and non-native listeners ({escape(metric)})</h3>")
    parts.append(_table(nativeness.select(shown)))
    parts.append(f"<h3>Listener groups ({escape(metric)})</h3>")
    parts.append(_table(groups.select(shown)))
    if not best.is_empty() and not comparison.agreement.is_empty():
        at_best = comparison.agreement.join(
            best.select("source", "model", "probe", "layer"), on=["source", "model", "probe", "layer"]
        ).filter(pl.col("rater") == "majority")
        parts.append("<h3>Majority vote vs model at the best layer</h3>")
        parts.append(
            _table(
                at_best.select(
                    "group",
                    "language",
                    "model",
                    "probe",
                    "layer",
                    "condition",
                    "train_languages",
                    "n_utts",
                    "kappa",
                    "agreement",
                ).sort("group", "language", "model", "probe", "condition", "train_languages")
            )
        )
    if not comparison.rank_correlation.is_empty():
        parts.append("<h3>Rank correlation of human and model cross-lingual drops, per layer</h3>")
        parts.append(_table(comparison.rank_correlation.drop("task")))
    parts.append("</section>")
    return "\n".join(parts)
