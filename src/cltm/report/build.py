"""``build_report``: a results directory in, one HTML page with its figures and table exports out."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from joblib import Parallel, delayed
from matplotlib.figure import Figure

import cltm
from cltm.layers import parse_layers
from cltm.report import html
from cltm.report.confusion import confusion_counts, confusion_csv, confusion_panels, draw_confusion_grid
from cltm.report.export import heatmap_marks, matrix_wide, write_matrix_csv, write_matrix_latex
from cltm.report.heatmap import DEFAULT_FADE_RANGE, HeatmapData, draw_heatmap, family_colors, heatmap_data
from cltm.report.layers import (
    best_layer,
    draw_layer_curves,
    draw_small_multiples,
    layer_summary,
    single_performance,
)
from cltm.report.results import (
    UNKNOWN_FAMILY,
    ReportInputError,
    family_lookup,
    layer_text,
    load_results,
    resolve_families,
)
from cltm.report.summaries import (
    draw_donor_receiver,
    draw_finetune_scatter,
    draw_zero_shot,
    finetune_pairs,
    spearman_by_layer,
    split_finetune,
    top_pairs,
    zero_shot_matrix,
)
from cltm.transfer.tables import MatrixResult

FIGURE_FORMATS = ("png", "svg", "pdf")
PAGE_FORMATS = ("png", "svg")
"""Formats an <img> can show; the page uses the first one asked for, and adds PNG when only PDF is."""
DPI = 110
LARGE_DPI = 120
"""Heatmaps past 25 languages get more pixels so that their small annotations stay legible."""
TOP_PAIRS = 10
IGNORED_JSON = frozenset({"results-set.json"})
"""JSON files of a results directory that are not configuration (the results set's manifest)."""


@dataclass
class GroupReport:
    """What the page shows for one (task, model, probe): figure paths (relative to the page) and tables."""

    task: str
    model: str
    probe: str
    finetune: bool
    layers: list[int]
    best: int | None
    criterion: str
    heatmaps: dict[int, HeatmapData]
    figures: dict[str, dict[str, str]] = field(default_factory=dict)
    """figure name -> {format: relative path}; heatmaps are named ``heatmap_L<layer>``."""
    exports: dict[int, dict[str, str]] = field(default_factory=dict)
    summary: pl.DataFrame = field(default_factory=pl.DataFrame)
    properties: pl.DataFrame = field(default_factory=pl.DataFrame)
    config: dict[str, str] = field(default_factory=dict)
    positive: pl.DataFrame = field(default_factory=pl.DataFrame)
    negative: pl.DataFrame = field(default_factory=pl.DataFrame)
    scores_source: str = ""
    zero_shot_csv: str = ""
    confusion_csv: dict[str, str] = field(default_factory=dict)
    """``single`` / ``zero_shot`` -> CSV of the confusion panels at the focus layer."""

    @property
    def anchor(self) -> str:
        return slug(f"{self.task}-{self.model}-{self.probe}")


def slug(text: str) -> str:
    """A file/anchor-safe name: letters, digits, dot, dash and underscore only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def normalise_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"png,svg"`` or an iterable -> validated lower-case tuple (order kept, duplicates dropped)."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    cleaned = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in items if f.strip()))
    unknown = [f for f in cleaned if f not in FIGURE_FORMATS]
    if unknown or not cleaned:
        raise ValueError(
            f"figure format(s) {unknown or formats!r} not supported; choose from {FIGURE_FORMATS}"
        )
    return cleaned


def save_figure(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str], dpi: int) -> dict[str, str]:
    """Write ``fig`` as ``out_dir/figures/<stem>.<fmt>`` for every format; returns {format: relative path}."""
    paths = {}
    for fmt in formats:
        relative = f"figures/{stem}.{fmt}"
        # metadata without dates keeps reruns byte-identical where the backend allows it
        metadata = {"Software": None} if fmt == "png" else ({"Date": None} if fmt == "svg" else None)
        # no bbox_inches="tight": every figure lays itself out (fixed inches or constrained layout), and
        # the tight pass would draw each figure twice
        fig.savefig(out_dir / relative, dpi=dpi, metadata=metadata)
        paths[fmt] = relative
    fig.clear()
    return paths


def _render_heatmap(data: HeatmapData, out_dir: Path, stem: str, formats: Sequence[str], dpi: int) -> str:
    save_figure(draw_heatmap(data), out_dir, stem, formats, dpi)
    return data.title


class _Saver:
    """Saves figures in every requested format under ``out_dir/figures`` and remembers relative paths.

    Heatmaps (most of the work) are queued and drawn at the end by :meth:`flush`, in parallel processes
    when ``n_jobs`` > 1: each is independent and matplotlib is single-threaded.
    """

    def __init__(self, out_dir: Path, formats: tuple[str, ...]) -> None:
        self.out_dir = out_dir
        self.page_format = next((f for f in formats if f in PAGE_FORMATS), "png")
        self.formats = tuple(dict.fromkeys((*formats, self.page_format)))
        self.pending: list[tuple[HeatmapData, str, int]] = []
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)

    def save(self, fig: Figure, stem: str, *, dpi: int = DPI) -> dict[str, str]:
        return save_figure(fig, self.out_dir, stem, self.formats, dpi)

    def queue_heatmap(self, data: HeatmapData, stem: str, *, dpi: int) -> dict[str, str]:
        self.pending.append((data, stem, dpi))
        return {fmt: f"figures/{stem}.{fmt}" for fmt in self.formats}

    def flush(self, n_jobs: int, progress: Callable[[str], None] | None = None) -> None:
        jobs = [
            delayed(_render_heatmap)(data, self.out_dir, stem, self.formats, dpi)
            for data, stem, dpi in self.pending
        ]
        self.pending = []
        if n_jobs == 1:
            results = (job[0](*job[1], **job[2]) for job in jobs)
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
        for title in results:
            if progress is not None:
                progress(title)


def _layer_stem(layer: int | None) -> str:
    return slug(layer_text(layer))


def _config(runs: pl.DataFrame, matrices: pl.DataFrame, layers: list[int | None]) -> dict[str, str]:
    """The configuration that produced one group's results, as the runs table records it."""
    config: dict[str, str] = {}

    def values(df: pl.DataFrame, column: str) -> list:
        return (
            sorted(df[column].drop_nulls().unique().to_list()) if column in df.columns and df.height else []
        )

    config["model"] = ", ".join(map(str, values(matrices, "model")))
    config["config hash"] = ", ".join(map(str, values(runs, "config_hash"))) or "(no runs table)"
    single = runs.filter(pl.col("condition") == "single") if "condition" in runs.columns else runs
    config["N (train size, single condition)"] = ", ".join(map(str, values(single, "n_train"))) or "–"
    seeds = values(runs, "seed")
    if seeds:
        config["seeds"] = (
            f"{len(seeds)} ({', '.join(map(str, seeds[:12]))}{', …' if len(seeds) > 12 else ''})"
        )
    elif "n_seeds" in matrices.columns and matrices["n_seeds"].drop_nulls().len():
        config["seeds"] = str(int(matrices["n_seeds"].drop_nulls().max()))
    config["Perf metric"] = ", ".join(values(matrices, "metric")) or "–"
    config["conditions"] = ", ".join(values(runs, "condition")) or "–"
    config["source"] = ", ".join(values(runs, "source")) or "–"
    languages = sorted(set(matrices["target"].to_list()) | set(matrices["donor"].to_list()))
    config["languages"] = f"{len(languages)}: {', '.join(languages)}"
    config["layers"] = ", ".join(map(layer_text, layers))
    return config


def _scores(scores: pl.DataFrame, data: HeatmapData) -> pl.DataFrame:
    """The engine's receiver/donor scores (``language_scores``) of one matrix, with the report's families."""
    chosen = scores.filter(
        (pl.col("task") == data.task)
        & (pl.col("model") == data.model)
        & (pl.col("probe") == data.probe)
        & pl.col("layer").eq_missing(data.layer)
    )
    family = dict(zip(data.rows + data.cols, data.row_families + data.col_families, strict=True))
    return chosen.select(
        "language",
        pl.col("language")
        .replace_strict(family, default=UNKNOWN_FAMILY, return_dtype=pl.String)
        .alias("family"),
        pl.col("receiver_score").alias("receiver"),
        pl.col("donor_score").alias("donor"),
    )


def _resolve_layers(spec: str | Sequence[int] | None, present: list[int]) -> list[int] | None:
    """``--layers`` against the layers in the results (negative = from the deepest one present)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    return parse_layers(spec, max(present) + 1 if present else 0)


@dataclass(frozen=True)
class ReportSettings:
    """What :func:`build_report` draws and how (the options of ``cltm report``).

    ``families``: a language -> family mapping, a TSV/JSON file merged with the shipped Common Voice map (as
    ``cltm matrix --families``), or None for the shipped map. ``formats``: figure formats written (png, svg,
    pdf; the page shows PNG or SVG). ``layers``: only these layers, in the one ``--layers`` grammar
    (:func:`cltm.layers.parse_layers`; negative numbers count from the deepest layer in the results; default
    all). ``clip``: the heatmaps' colour range is [-clip, clip]; ``fade_range``: the standard errors over
    which a cell fades. ``finetune_dirs``: ``cltm finetune --out`` directories whose runs are compared with
    the probe matrices. ``human_dirs``: ``cltm human compare --out`` directories, each drawn as a
    humans-vs-models section next to this directory's runs (:func:`cltm.human.report.human_section`).
    ``n_jobs``: processes drawing the heatmaps (joblib; -1 = all cores).
    """

    clip: float = 1.5
    families: Mapping[str, str] | str | Path | None = None
    formats: str | Sequence[str] = ("png",)
    layers: str | Sequence[int] | None = None
    fade_range: tuple[float, float] = DEFAULT_FADE_RANGE
    finetune_dirs: Sequence[str | Path] = ()
    human_dirs: Sequence[str | Path] = ()
    n_jobs: int = 1


def build_report(
    results_dir: str | Path,
    out_dir: str | Path,
    settings: ReportSettings | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> Path:
    """Render the report of a results directory into ``out_dir``; returns ``out_dir/index.html``.

    ``settings``: a :class:`ReportSettings`; its fields can also be given as keywords
    (``build_report(d, out, layers="-1")``), which override ``settings``. Everything shown comes from the
    engine's results object (:class:`cltm.transfer.tables.MatrixResult`); what a directory lacks (matrices of
    fine-tune runs, properties) is computed by the engine's functions, never by the report.
    ``progress(step, done, total)`` is called after each (task, model, probe) group and each heatmap.
    """
    settings = replace(settings or ReportSettings(), **options)
    clip, families, formats, layers = settings.clip, settings.families, settings.formats, settings.layers
    fade_range, finetune_dirs, human_dirs = settings.fade_range, settings.finetune_dirs, settings.human_dirs
    n_jobs = settings.n_jobs
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tables").mkdir(exist_ok=True)
    results_dir = Path(results_dir)
    family_map = resolve_families(families)
    tables = load_results(results_dir, list(finetune_dirs), family_map)
    if tables.matrices.is_empty():
        raise ReportInputError(
            f"{results_dir}: no matrix rows: the sweep produced no matrix "
            "(see its skipped.parquet for the languages left out and why)."
        )
    saver = _Saver(out_dir, normalise_formats(formats))
    probe_matrices, finetune_matrices = split_finetune(tables)
    all_matrices = (
        pl.concat(
            [
                probe_matrices.with_columns(pl.lit(False).alias("__ft")),
                finetune_matrices.with_columns(pl.lit(True).alias("__ft")),
            ],
            how="diagonal_relaxed",
        )
        if finetune_matrices.height
        else probe_matrices.with_columns(pl.lit(False).alias("__ft"))
    )
    all_matrices = all_matrices.with_columns(pl.col("layer").cast(pl.Int64))
    present = sorted(x for x in all_matrices["layer"].unique().to_list() if x is not None)
    wanted = _resolve_layers(layers, present)
    if wanted is not None:
        if not set(present) & set(wanted):
            raise ValueError(f"none of the layers {wanted} is in {results_dir}; layers present: {present}")
        # fine-tune matrices live at their own (last) layer and are kept whatever the selection
        all_matrices = all_matrices.filter(pl.col("layer").is_in(wanted) | pl.col("__ft"))
    groups = sorted(
        all_matrices.partition_by(["task", "model", "probe"], as_dict=True, maintain_order=True).items(),
        key=lambda item: (str(item[0][0]), str(item[0][1]), bool(item[1]["__ft"][0]), str(item[0][2])),
    )
    reports: list[GroupReport] = []
    # one colour per family for the whole report, so that a family looks the same in every figure
    every_language = set(all_matrices["target"].to_list()) | set(all_matrices["donor"].to_list())
    palette = family_colors(
        sorted(
            {family_lookup(lang, family_map) for lang in every_language},
            key=lambda f: (f == UNKNOWN_FAMILY, f),
        )
    )
    total = len(groups) + all_matrices.select("task", "model", "probe", "layer").unique().height
    if not groups:
        raise ReportInputError(f"{results_dir}: no matrix at the layers asked for")
    done = 0
    for (task, model, probe), group in groups:
        reports.append(
            _render_group(
                tables,
                group.drop("__ft"),
                bool(group["__ft"][0]),
                task,
                model,
                probe,
                clip=clip,
                families=family_map,
                fade_range=fade_range,
                saver=saver,
                palette=palette,
            )
        )
        done += 1
        if progress is not None:
            progress(f"{task} · {model} · {probe}", done, total)
    best_layers = {(r.task, r.model, r.probe): r.best for r in reports}
    comparisons = _render_finetune(
        probe_matrices.filter(
            pl.col("layer").is_in(all_matrices["layer"].unique().to_list(), nulls_equal=True)
        ),
        finetune_matrices,
        clip=clip,
        saver=saver,
        best_layers=best_layers,
    )

    def heatmap_done(title: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"heatmap {title}", done, total)

    saver.flush(n_jobs, heatmap_done)
    human_html = []
    if human_dirs:
        from cltm.human.report import human_section

        human_html = [human_section(d, out_dir, runs=tables.runs) for d in human_dirs]
    page = _page(
        tables,
        results_dir,
        reports,
        comparisons,
        clip=clip,
        fade_range=fade_range,
        saver=saver,
        families_source=_families_source(families),
        extra_sections=human_html,
    )
    index_path = out_dir / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path


def _families_source(families: Mapping[str, str] | str | Path | None) -> str:
    if families is None:
        return "shipped Common Voice map (cltm.transfer.families)"
    if isinstance(families, (str, Path)):
        return f"file {families}"
    return "mapping given by the caller"


def _render_group(
    tables: MatrixResult,
    matrices: pl.DataFrame,
    finetune: bool,
    task: str,
    model: str,
    probe: str,
    *,
    clip: float,
    families: Mapping[str, str],
    fade_range: tuple[float, float],
    saver: _Saver,
    palette: Mapping[str, tuple[float, float, float, float]],
) -> GroupReport:
    layer_list = sorted(matrices["layer"].unique().to_list(), key=lambda x: (x is None, x or 0))
    runs = tables.runs.filter(
        (pl.col("task") == task)
        & (pl.col("model") == model)
        & (pl.col("probe") == probe)
        & pl.col("layer").is_in(layer_list, nulls_equal=True)
    )
    rows = sorted(set(matrices["target"].to_list()))
    cols = sorted(set(matrices["donor"].to_list()))
    heatmaps = {
        layer: heatmap_data(
            matrices.filter(pl.col("layer").eq_missing(layer)),
            clip=clip,
            families=families,
            fade_range=fade_range,
            rows=rows,
            cols=cols,
            palette=palette,
        )
        for layer in layer_list
    }
    properties = tables.properties.filter(
        (pl.col("task") == task)
        & (pl.col("model") == model)
        & (pl.col("probe") == probe)
        & pl.col("layer").is_in(layer_list, nulls_equal=True)
    ).sort("layer", nulls_last=True)
    summary = layer_summary(properties)
    performance = single_performance(matrices)
    best, criterion = best_layer(performance, summary)
    report = GroupReport(
        task=task,
        model=model,
        probe=probe,
        finetune=finetune,
        layers=layer_list,
        best=best,
        criterion=criterion,
        heatmaps=heatmaps,
        summary=summary,
        properties=properties,
        config=_config(runs, matrices, layer_list),
    )
    stem = report.anchor
    for layer, data in heatmaps.items():
        dpi = LARGE_DPI if max(data.values.shape) > 25 else DPI
        layer_stem = f"{stem}_L{_layer_stem(layer)}"
        report.figures[f"heatmap_L{layer}"] = saver.queue_heatmap(data, layer_stem, dpi=dpi)
        base = saver.out_dir / "tables" / layer_stem
        write_matrix_csv(data, base.with_suffix(".csv"))
        write_matrix_latex(data, base.with_suffix(".tex"))
        matrix_wide(data, values="cltm_se").write_csv(f"{base}_se.csv", float_precision=6)
        heatmap_marks(data).write_csv(f"{base}_marks.csv", float_precision=6)
        report.exports[layer] = {
            "CSV": f"tables/{layer_stem}.csv",
            "SE CSV": f"tables/{layer_stem}_se.csv",
            "LaTeX": f"tables/{layer_stem}.tex",
            "marks CSV": f"tables/{layer_stem}_marks.csv",
        }
    summary.write_csv(saver.out_dir / "tables" / f"{stem}_layers.csv")
    title = f"{task} · {model} · {probe}"
    if len(layer_list) > 1:
        report.figures["small_multiples"] = saver.save(
            draw_small_multiples(list(heatmaps.values()), title=title, best=best), f"{stem}_layers_grid"
        )
        metric = matrices["metric"].drop_nulls().unique().to_list() if "metric" in matrices.columns else []
        report.figures["layer_curves"] = saver.save(
            draw_layer_curves(
                performance,
                summary,
                best=best,
                criterion=criterion,
                families=families,
                title=title,
                metric=(metric[0] if metric else "Perf").upper(),
                palette=palette,
            ),
            f"{stem}_layer_curves",
        )
    focus = heatmaps[best if best in heatmaps else layer_list[-1]]
    focus_text = layer_text(focus.layer)
    report.scores_source = "language_scores.parquet (the CLTM engine's definition)"
    report.figures["donor_receiver"] = saver.save(
        draw_donor_receiver(
            _scores(tables.language_scores, focus),
            focus,
            title=f"{title} · layer {focus_text}",
            source=report.scores_source,
        ),
        f"{stem}_donor_receiver",
    )
    report.positive, report.negative = top_pairs(focus, TOP_PAIRS)
    _render_confusion(report, tables.confusion, focus, title, saver)
    zero_shot = zero_shot_matrix(matrices.filter(pl.col("layer").eq_missing(focus.layer)), focus)
    if zero_shot is not None:
        metric = matrices["metric"].drop_nulls().unique().to_list()
        report.figures["zero_shot"] = saver.save(
            draw_zero_shot(
                zero_shot,
                focus,
                metric=(metric[0] if metric else "Perf").upper(),
                title=f"{title} · layer {focus_text}: zero-shot (trained on j only, tested on i)",
            ),
            f"{stem}_zero_shot",
        )
        base = saver.out_dir / "tables" / f"{stem}_zero_shot"
        zero_frame = pl.DataFrame(
            {"target": focus.rows}
            | {
                d: [None if np.isnan(v) else float(v) for v in zero_shot[:, j]]
                for j, d in enumerate(focus.cols)
            },
            schema={"target": pl.Utf8} | {d: pl.Float64 for d in focus.cols},
        )
        zero_frame.write_csv(f"{base}.csv", float_precision=6)
        report.zero_shot_csv = f"tables/{stem}_zero_shot.csv"
    return report


CONFUSION_VIEWS = {
    "single": "per language (trained and tested on i)",
    "zero_shot": "zero-shot pairs (trained on donor j only, tested on target i)",
}


def _render_confusion(
    report: GroupReport, confusion: pl.DataFrame, focus: HeatmapData, title: str, saver: _Saver
) -> None:
    """Confusion matrices at the focus layer from the engine's ``confusion`` table (classification only)."""
    for condition, what in CONFUSION_VIEWS.items():
        counts = confusion_counts(
            confusion,
            task=report.task,
            model=report.model,
            probe=report.probe,
            layer=focus.layer,
            condition=condition,
        )
        if condition == "single":
            counts = counts.filter(pl.col("target") == pl.col("donor"))
        panels = confusion_panels(counts, order=focus.rows)
        if not panels:
            continue
        stem = f"{report.anchor}_confusion_{condition}"
        report.figures[f"confusion_{condition}"] = saver.save(
            draw_confusion_grid(panels, title=f"{title} · layer {layer_text(focus.layer)}: {what}"), stem
        )
        confusion_csv(panels).write_csv(saver.out_dir / "tables" / f"{stem}.csv", float_precision=6)
        report.confusion_csv[condition] = f"tables/{stem}.csv"


@dataclass
class FinetuneComparison:
    task: str
    model: str
    probe: str
    finetune: str
    correlations: pl.DataFrame
    figure: dict[str, str]
    pairs_csv: str

    @property
    def anchor(self) -> str:
        return slug(f"{self.task}-{self.model}-{self.probe}-vs-{self.finetune}")


def _render_finetune(
    probe_matrices: pl.DataFrame,
    finetune_matrices: pl.DataFrame,
    *,
    clip: float,
    saver: _Saver,
    best_layers: Mapping[tuple[str, str, str], int | None],
) -> list[FinetuneComparison]:
    pairs = finetune_pairs(probe_matrices, finetune_matrices)
    if pairs.is_empty():
        return []
    comparisons = []
    for (task, model, probe, finetune), group in pairs.partition_by(
        ["task", "model", "probe", "finetune"], as_dict=True, maintain_order=True
    ).items():
        correlations = spearman_by_layer(group)
        stem = slug(f"{task}-{model}-{probe}-vs-{finetune}")
        figure = saver.save(
            draw_finetune_scatter(
                group,
                correlations,
                clip=clip,
                title=f"{task} · {model}: {probe} CLTM per layer vs {finetune} CLTM",
                highlight=best_layers.get((task, model, probe)),
            ),
            stem,
        )
        group.write_csv(saver.out_dir / "tables" / f"{stem}.csv", float_precision=6)
        comparisons.append(
            FinetuneComparison(task, model, probe, finetune, correlations, figure, f"tables/{stem}.csv")
        )
    return comparisons


def _page(
    tables: MatrixResult,
    results_dir: Path,
    reports: list[GroupReport],
    comparisons: list[FinetuneComparison],
    *,
    clip: float,
    fade_range: tuple[float, float],
    saver: _Saver,
    families_source: str,
    extra_sections: Sequence[str] = (),
) -> str:
    fmt = saver.page_format
    tasks = list(dict.fromkeys(r.task for r in reports))
    parts = [
        "<h1>Cross-Lingual Transfer Matrices</h1>",
        f'<p class="note">Results: <code>{escape(str(results_dir.resolve()))}</code> · cltm '
        f"{escape(cltm.__version__)} · colours clipped at ±{clip:g} · families: "
        f"{escape(families_source)}</p>",
        "<p>CLTM[i, j] = (Perf(i+j) − Perf(i)) / (Perf(i+i) − Perf(i)): rows are target languages i, columns "
        "donor languages j; 1 = the donor is worth as much as the same amount of own-language data, 0 = no "
        "effect, &lt; 0 = harmful. Heatmaps: red = negative, blue = positive, grey diagonal "
        f"(1 by definition); ▲/▼ = beyond ±{clip:g}; pale = the sign is not decisive "
        f"({fade_range[0]:g} &lt; P(cell &gt; 0) &lt; "
        f"{fade_range[1]:g}); hatched = unstable (own-data gain Perf(i+i) − Perf(i) not clearly positive, so "
        "the ratio is noise). Family blocks are outlined.</p>",
    ]
    if tables.skipped.height:
        parts.append(
            '<p class="note"><strong>Languages left out of the sweep</strong> (from skipped.parquet):</p>'
            + html.table(tables.skipped)
        )
    parts.append("<nav><h2>Contents</h2><ul>")
    for task in tasks:
        parts.append(f'<li><a href="#task-{slug(task)}">{escape(task)}</a><ul>')
        parts += [
            f'<li><a href="#{r.anchor}">{escape(r.model)} · {escape(r.probe)}</a></li>'
            for r in reports
            if r.task == task
        ]
        parts.append("</ul></li>")
    if comparisons:
        parts.append('<li><a href="#finetune">probe vs fine-tune</a></li>')
    if extra_sections:
        parts.append('<li><a href="#humans-vs-models">humans vs models</a></li>')
    parts.append("</ul></nav>")
    for task in tasks:
        parts.append(f'<section id="task-{slug(task)}"><h2>Task: {escape(task)}</h2>')
        for report in (r for r in reports if r.task == task):
            parts.append(_group_html(report, fmt))
        for comparison in (c for c in comparisons if c.task == task):
            parts.append(_comparison_html(comparison, fmt))
        parts.append("</section>")
    if comparisons:
        parts.append('<section id="finetune"><h2>Probe vs fine-tune: Spearman per layer</h2>')
        every = pl.concat([c.correlations for c in comparisons])
        every.write_csv(saver.out_dir / "tables" / "finetune_spearman.csv", float_precision=6)
        parts.append(html.table(every))
        parts.append(html.links([("CSV", "tables/finetune_spearman.csv")]))
        parts.append("</section>")
    parts += extra_sections
    extra = sorted(p.name for p in results_dir.glob("*.json") if p.name not in IGNORED_JSON)
    if extra:
        parts.append("<section><h2>Configuration files in the results directory</h2>")
        for name in extra:
            try:
                text = json.dumps(json.loads((results_dir / name).read_text()), indent=2)
            except (OSError, ValueError):
                continue
            parts.append(f"<h3>{escape(name)}</h3><pre>{escape(text)}</pre>")
        parts.append("</section>")
    return html.page("CLTM report", "\n".join(parts))


def _group_html(report: GroupReport, fmt: str) -> str:
    kind = "fine-tune" if report.finetune else "probe"
    best_text = "–" if report.best is None else str(report.best)
    config = pl.DataFrame({"setting": list(report.config), "value": list(report.config.values())})
    parts = [
        f'<section id="{report.anchor}"><h3>{escape(report.model)} · {escape(report.probe)} ({kind})</h3>',
        html.table(
            config.vstack(
                pl.DataFrame({"setting": ["best layer"], "value": [f"{best_text} ({report.criterion})"]})
            )
        ),
    ]
    if "layer_curves" in report.figures:
        parts.append("<h4>Layer views</h4>")
        parts.append(
            html.figure(
                report.figures["layer_curves"][fmt], f"layer curves {report.anchor}", report.criterion
            )
        )
        parts.append(
            html.figure(
                report.figures["small_multiples"][fmt],
                f"matrix per layer {report.anchor}",
                "The matrix at every layer, same order and colours.",
            )
        )
        parts.append(
            html.table(
                report.summary,
                caption="per-layer summary from the engine's properties (mean and median over the "
                "off-diagonal cells of stable rows, n_stable of them)",
            )
        )
        parts.append(html.links([("layer summary CSV", f"tables/{report.anchor}_layers.csv")]))
    focus = report.best if report.best in report.heatmaps else report.layers[-1]
    focus_text = layer_text(focus)
    parts.append(
        f"<h4>Heatmap at layer {focus_text}" + (" (best layer)" if focus == report.best else "") + "</h4>"
    )
    parts.append(html.figure(report.figures[f"heatmap_L{focus}"][fmt], f"CLTM heatmap layer {focus}"))
    parts.append(
        html.links(
            list(report.exports[focus].items()) + _other_formats(report.figures[f"heatmap_L{focus}"], fmt)
        )
    )
    others = [layer for layer in report.layers if layer != focus]
    if others:
        parts.append(f"<details><summary>Heatmaps of the other {len(others)} layer(s)</summary>")
        for layer in others:
            parts.append(f"<h5>layer {layer_text(layer)}</h5>")
            parts.append(
                html.figure(
                    report.figures[f"heatmap_L{layer}"][fmt], f"CLTM heatmap layer {layer}", lazy=True
                )
            )
            parts.append(
                html.links(
                    list(report.exports[layer].items())
                    + _other_formats(report.figures[f"heatmap_L{layer}"], fmt)
                )
            )
        parts.append("</details>")
    if "zero_shot" in report.figures:
        parts.append(f"<h4>Zero-shot (layer {focus_text})</h4>")
        parts.append(
            html.figure(
                report.figures["zero_shot"][fmt],
                "zero-shot performance",
                "Perf when trained on N samples of donor j only and tested on target i; "
                "the diagonal is Perf(i).",
            )
        )
        parts.append(html.links([("zero-shot CSV", report.zero_shot_csv)]))
    for condition, what in CONFUSION_VIEWS.items():
        if f"confusion_{condition}" in report.figures:
            parts.append(f"<h4>Confusion matrices {escape(what)} (layer {focus_text})</h4>")
            parts.append(
                html.figure(
                    report.figures[f"confusion_{condition}"][fmt],
                    f"confusion matrices {condition}",
                    "Counts summed over seeds and folds (confusion.parquet); each row is a true class, "
                    "normalised to 1 (the diagonal is the recall).",
                )
            )
            parts.append(html.links([("confusion CSV", report.confusion_csv[condition])]))
    parts.append(f"<h4>Donors and receivers (layer {focus_text})</h4>")
    parts.append(
        html.figure(
            report.figures["donor_receiver"][fmt],
            "donor and receiver scores",
            f"Scores: {report.scores_source}.",
        )
    )
    parts.append(f'<h4>Top pairs (layer {focus_text}, stable cells)</h4><div class="pairs">')
    parts.append(html.table(report.positive, caption="most positive transfer"))
    parts.append(html.table(report.negative, caption="most negative transfer"))
    parts.append("</div>")
    if report.properties.height:
        parts.append("<h4>Matrix properties (CLTM engine, one column per layer)</h4>")
        parts.append(html.table(properties_by_layer(report.properties)))
    parts.append("</section>")
    return "\n".join(parts)


def properties_by_layer(properties: pl.DataFrame) -> pl.DataFrame:
    """The engine's properties of one (task, model, probe) turned on their side: one row per property, one
    column per layer, values as text (the table mixes numbers and language codes)."""
    skip = {"task", "model", "probe", "layer"}
    names = [c for c in properties.columns if c not in skip]
    columns: dict[str, list[str]] = {"property": names}
    for row in properties.iter_rows(named=True):
        columns[f"layer {layer_text(row['layer'])}"] = [_cell_text(row[name]) for name in names]
    return pl.DataFrame(columns)


def _cell_text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _other_formats(paths: dict[str, str], shown: str) -> list[tuple[str, str]]:
    return [(fmt.upper(), path) for fmt, path in paths.items() if fmt != shown]


def _comparison_html(comparison: FinetuneComparison, fmt: str) -> str:
    return "\n".join(
        [
            f'<section id="{comparison.anchor}">',
            f"<h3>{escape(comparison.model)}: {escape(comparison.probe)} vs "
            f"{escape(comparison.finetune)}</h3>",
            html.figure(
                comparison.figure[fmt],
                "probe vs fine-tune CLTM",
                "Each point is one off-diagonal cell with both a probe and a fine-tune value (axes clipped); "
                "the scatter shows the probe's best layer.",
            ),
            html.table(comparison.correlations.drop("task", "model"), caption="Spearman ρ per probe layer"),
            html.links([("cells CSV", comparison.pairs_csv)]),
            "</section>",
        ]
    )
