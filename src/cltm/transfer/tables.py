"""Result tables of a CLTM sweep: column contracts, the results directory, and readers for runs tables.

Three long-form tables (DESIGN §3.3), each with a fixed column list and polars dtype:

* ``runs``: one row per (task, model, layer, probe, condition, target, donor, seed) with the metric values.
  ``condition`` is one of ``single`` (N of the target), ``self`` (2N of the target), ``pair`` (N of the
  target + N of the donor) and ``zero_shot`` (N of the donor only, tested on the target). For ``single``
  and ``self`` the donor is the target itself, as in the published reference CSV. Metric columns that do
  not apply to a task are null.
* ``matrices``: one row per (task, model, layer, probe, target, donor) with the CLTM cell, its delta-method
  standard error, the unnormalised ``m``, ``p_positive``, ``unstable`` and the mean performance of every
  condition.
* ``properties``: one row per (task, model, layer, probe) with the matrix properties of DESIGN §4.1.

Runs can also be *aggregated*: a table that carries ``seed_count`` and ``<metric>_var`` columns holds, per
row, the mean over seeds in the metric column and the between-seed variance (ddof=1) next to it; ``seed`` is
then null. This is how the published reference implementation's CSV is read (``read_runs``), and
``matrix_from_runs`` accepts both forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

#: Metric columns of ``runs``. Higher is better for all but the ones in ``LOWER_IS_BETTER``.
METRIC_COLUMNS: tuple[str, ...] = (
    "f1",
    "accuracy",
    "uar",
    "auc",
    "eer",
    "min_dcf_01",
    "min_dcf_05",
    "one_minus_wer",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"eer", "min_dcf_01", "min_dcf_05"})
CONDITIONS: tuple[str, ...] = ("single", "self", "pair", "zero_shot")
#: Columns that identify one matrix (one heatmap).
MATRIX_KEYS: tuple[str, ...] = ("task", "model", "layer", "probe")

RUNS_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "condition": pl.String(),
    "target": pl.String(),
    "donor": pl.String(),
    "seed": pl.Int64(),
    "fold": pl.Int64(),
    "n_train": pl.Int64(),
    **{name: pl.Float64() for name in METRIC_COLUMNS},
    "source": pl.String(),
    "config_hash": pl.String(),
}

#: Extra columns of an aggregated runs table (means over seeds in the metric columns).
AGGREGATE_COLUMNS: dict[str, pl.DataType] = {
    "seed_count": pl.Int64(),
    **{f"{name}_var": pl.Float64() for name in METRIC_COLUMNS},
}

MATRICES_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "metric": pl.String(),
    "target": pl.String(),
    "donor": pl.String(),
    "cltm": pl.Float64(),
    "cltm_se": pl.Float64(),
    "m": pl.Float64(),
    "p_positive": pl.Float64(),
    "unstable": pl.Boolean(),
    "perf_single": pl.Float64(),
    "perf_self": pl.Float64(),
    "perf_pair": pl.Float64(),
    "perf_zero_shot": pl.Float64(),
    "n_seeds": pl.Int64(),
}

PROPERTIES_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "metric": pl.String(),
    "n_languages": pl.Int64(),
    "n_cells": pl.Int64(),
    "n_unstable": pl.Int64(),
    "mean_perf_single": pl.Float64(),
    "mean_offdiag": pl.Float64(),
    "share_positive": pl.Float64(),
    "share_negative": pl.Float64(),
    "share_above_one": pl.Float64(),
    "reciprocity": pl.Float64(),
    "asymmetry": pl.Float64(),
    "deviation_from_ones": pl.Float64(),
    "mean_within_family": pl.Float64(),
    "mean_across_family": pl.Float64(),
    "top_receiver": pl.String(),
    "top_donor": pl.String(),
}

#: Per-language receiver / donor scores (row / column sums of the positive off-diagonal parts).
LANGUAGE_SCORES_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "language": pl.String(),
    "family": pl.String(),
    "receiver_score": pl.Float64(),
    "donor_score": pl.Float64(),
}

#: Confusion counts of classification runs: one row per (run, true class, predicted class), count > 0.
#: ``fold`` is null unless the plan is K-fold.
CONFUSION_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "condition": pl.String(),
    "target": pl.String(),
    "donor": pl.String(),
    "seed": pl.Int64(),
    "fold": pl.Int64(),
    "true": pl.String(),
    "pred": pl.String(),
    "count": pl.Int64(),
}

#: Per-utterance predictions (on request): one row per (test utterance, run). ``train_languages`` lists the
#: languages the model was trained on, joined with "+" in training order (e.g. "de+en" for a pair, "de" then
#: "en" for sequential transfer: "de>en"); ``scores`` holds one score per class in the order of ``classes``
#: (probabilities for probes, softmax outputs for fine-tuned models). ``source`` is "probe", "finetune" or
#: "human" (listener panels compared on the same utterances).
PREDICTIONS_COLUMNS: dict[str, pl.DataType] = {
    "utt_id": pl.String(),
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "condition": pl.String(),
    "target": pl.String(),
    "donor": pl.String(),
    "train_languages": pl.String(),
    "seed": pl.Int64(),
    "fold": pl.Int64(),
    "true": pl.String(),
    "pred": pl.String(),
    "classes": pl.List(pl.String()),
    "scores": pl.List(pl.Float64()),
    "source": pl.String(),
}

#: Languages left out of a sweep and why.
SKIPPED_COLUMNS: dict[str, pl.DataType] = {"language": pl.String(), "reason": pl.String()}

RESULT_FILES: dict[str, str] = {
    "runs": "runs.parquet",
    "matrices": "matrices.parquet",
    "properties": "properties.parquet",
    "language_scores": "language_scores.parquet",
    "skipped": "skipped.parquet",
}


def empty_frame(columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with exactly these columns and dtypes."""
    return pl.DataFrame(schema=columns)


def conform(df: pl.DataFrame, columns: dict[str, pl.DataType], *, keep_extra: bool = False) -> pl.DataFrame:
    """Cast ``df`` to a column contract: contract columns first (missing ones added as nulls), in order.

    Extra columns are dropped unless ``keep_extra`` (then they follow the contract columns).
    """
    exprs = [
        (pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype=dtype)).alias(name)
        for name, dtype in columns.items()
    ]
    extra = [pl.col(c) for c in df.columns if c not in columns] if keep_extra else []
    return df.select(exprs + extra)


@dataclass
class MatrixResult:
    """What a CLTM sweep produces: the three result tables plus per-language scores and skipped languages."""

    runs: pl.DataFrame
    matrices: pl.DataFrame
    properties: pl.DataFrame
    skipped: pl.DataFrame = field(default_factory=lambda: empty_frame(SKIPPED_COLUMNS))
    language_scores: pl.DataFrame = field(default_factory=lambda: empty_frame(LANGUAGE_SCORES_COLUMNS))
    confusion: pl.DataFrame = field(default_factory=lambda: empty_frame(CONFUSION_COLUMNS))
    predictions: pl.DataFrame = field(default_factory=lambda: empty_frame(PREDICTIONS_COLUMNS))


def write_results(
    out_dir: str | Path,
    runs: pl.DataFrame,
    matrices: pl.DataFrame,
    properties: pl.DataFrame,
    *,
    skipped: pl.DataFrame | None = None,
    language_scores: pl.DataFrame | None = None,
) -> Path:
    """Write the results directory: runs/matrices/properties (+ skipped, language_scores) as Parquet.

    Files are written without statistics that depend on the environment, so the same tables give the same
    bytes. Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "runs": conform(runs, RUNS_COLUMNS, keep_extra=True),
        "matrices": conform(matrices, MATRICES_COLUMNS, keep_extra=True),
        "properties": conform(properties, PROPERTIES_COLUMNS, keep_extra=True),
        "skipped": conform(skipped if skipped is not None else empty_frame(SKIPPED_COLUMNS), SKIPPED_COLUMNS),
        "language_scores": conform(
            language_scores if language_scores is not None else empty_frame(LANGUAGE_SCORES_COLUMNS),
            LANGUAGE_SCORES_COLUMNS,
        ),
    }
    for name, table in tables.items():
        table.write_parquet(out / RESULT_FILES[name], statistics=False)
    return out


def read_results(results_dir: str | Path) -> MatrixResult:
    """Read a results directory written by ``write_results`` (missing optional tables come back empty)."""
    root = Path(results_dir)
    if not (root / RESULT_FILES["matrices"]).exists():
        raise FileNotFoundError(
            f"{root} has no {RESULT_FILES['matrices']}: is it a `cltm matrix --out` directory?"
        )

    def _read(name: str, columns: dict[str, pl.DataType]) -> pl.DataFrame:
        path = root / RESULT_FILES[name]
        return pl.read_parquet(path) if path.exists() else empty_frame(columns)

    return MatrixResult(
        runs=_read("runs", RUNS_COLUMNS),
        matrices=_read("matrices", MATRICES_COLUMNS),
        properties=_read("properties", PROPERTIES_COLUMNS),
        skipped=_read("skipped", SKIPPED_COLUMNS),
        language_scores=_read("language_scores", LANGUAGE_SCORES_COLUMNS),
    )


# ----------------------------------------------------------------------------------------------------
# Runs readers: a small registry keyed by format name, each with a sniffing predicate over the column names.
# ----------------------------------------------------------------------------------------------------

RunsReader = Callable[[pl.DataFrame, dict], pl.DataFrame]
_RUNS_FORMATS: dict[str, tuple[Callable[[list[str]], bool], RunsReader]] = {}


def register_runs_format(name: str, sniff: Callable[[list[str]], bool]) -> Callable[[RunsReader], RunsReader]:
    """Decorator adding a runs-table format: ``sniff(columns)`` says whether a table looks like it."""

    def wrap(fn: RunsReader) -> RunsReader:
        _RUNS_FORMATS[name] = (sniff, fn)
        return fn

    return wrap


def runs_formats() -> list[str]:
    return list(_RUNS_FORMATS)


@register_runs_format("cltm", lambda cols: {"condition", "target", "donor"} <= set(cols))
def _read_cltm_runs(df: pl.DataFrame, options: dict) -> pl.DataFrame:
    aggregated = "seed_count" in df.columns
    out = conform(df, RUNS_COLUMNS, keep_extra=True)
    if aggregated:
        out = conform(out, {**RUNS_COLUMNS, **AGGREGATE_COLUMNS}, keep_extra=True)
    return out


_REFERENCE_METRICS = {
    "auc_mean": ("auc", "speaker"),
    "f1_mean": ("f1", "gender"),
    "wer_mean": ("one_minus_wer", "asr"),
}


@register_runs_format("reference", lambda cols: {"type", "lang_src"} <= set(cols))
def _read_reference_csv(df: pl.DataFrame, options: dict) -> pl.DataFrame:
    """The published reference implementation's aggregated CSV (one row per condition, means over seeds).

    ``type`` single/dual; ``lang_src`` is the target, ``lang_tgt`` the donor (a dual row with lang_tgt ==
    lang_src is the 2N ``self`` condition); ``f1_mean`` | ``auc_mean`` | ``wer_mean`` (WER becomes 1 - WER,
    stored as ``one_minus_wer``) with the matching ``*_var`` between-seed variance, and ``seed_count``
    (default 10).
    """
    source_col = next((c for c in _REFERENCE_METRICS if c in df.columns), None)
    if source_col is None:
        raise ValueError(
            f"reference CSV has none of the metric columns {sorted(_REFERENCE_METRICS)}; "
            f"columns are {df.columns}"
        )
    metric, default_task = _REFERENCE_METRICS[source_col]
    var_col = source_col.replace("_mean", "_var")
    mean = pl.col(source_col).cast(pl.Float64)
    value = (1.0 - mean) if source_col == "wer_mean" else mean
    kind = pl.col("type").cast(pl.String).str.strip_chars().str.to_lowercase()
    bad = df.filter(~kind.is_in(["single", "dual"]))
    if bad.height:
        raise ValueError(
            f"reference CSV: `type` must be single or dual; found {bad['type'].unique().to_list()}"
        )
    src = pl.col("lang_src").cast(pl.String).str.strip_chars()
    tgt = (
        pl.col("lang_tgt").cast(pl.String).str.strip_chars()
        if "lang_tgt" in df.columns
        else pl.lit(None, pl.String)
    )
    condition = (
        pl.when(kind == "single")
        .then(pl.lit("single"))
        .when(tgt == src)
        .then(pl.lit("self"))
        .otherwise(pl.lit("pair"))
    )
    seed_count = (
        pl.col("seed_count").cast(pl.Int64).fill_null(10) if "seed_count" in df.columns else pl.lit(10)
    )
    variance = pl.col(var_col).cast(pl.Float64) if var_col in df.columns else pl.lit(None, pl.Float64)
    out = df.select(
        pl.lit(options.get("task") or default_task).alias("task"),
        pl.lit(options.get("model") or "reference").alias("model"),
        pl.lit(options.get("layer"), dtype=pl.Int64).alias("layer"),
        pl.lit(options.get("probe") or "finetune").alias("probe"),
        condition.alias("condition"),
        src.alias("target"),
        pl.when(kind == "single").then(src).otherwise(tgt).alias("donor"),
        pl.lit(None, pl.Int64).alias("seed"),
        value.alias(metric),
        pl.lit("reference").alias("source"),
        seed_count.cast(pl.Int64).alias("seed_count"),
        variance.alias(f"{metric}_var"),
    )
    return conform(out, {**RUNS_COLUMNS, **AGGREGATE_COLUMNS})


def _load_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10000)
    raise ValueError(f"{path}: unknown runs file type {suffix!r}; use .parquet, .csv or .tsv")


def read_runs(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    model: str | None = None,
    probe: str | None = None,
    layer: int | None = None,
) -> pl.DataFrame:
    """Read a runs table: our long ``runs`` (Parquet/CSV) or the published reference CSV.

    ``format`` names a registered format (see ``runs_formats()``); by default it is sniffed from the columns.
    The keyword options fill the identifying columns a reference CSV lacks (task defaults from the metric: AUC
    -> speaker, F1 -> gender, WER -> asr; model "reference"; probe "finetune"; layer null).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"runs file not found: {p}")
    df = _load_table(p)
    if format is None:
        format = next((name for name, (sniff, _) in _RUNS_FORMATS.items() if sniff(df.columns)), None)
        if format is None:
            raise ValueError(
                f"{p}: not a recognised runs table (columns {df.columns}). Expected our runs columns "
                "(condition, target, donor, ...) or the reference CSV (type, lang_src, lang_tgt, "
                "f1_mean|auc_mean|wer_mean, ...)"
            )
    if format not in _RUNS_FORMATS:
        raise ValueError(f"unknown runs format {format!r}; known: {runs_formats()}")
    options = {"task": task, "model": model, "probe": probe, "layer": layer}
    return _RUNS_FORMATS[format][1](df, options)


def write_reference_csv(matrix_runs: pl.DataFrame, path: str | Path, *, metric: str) -> Path:
    """Write aggregated runs (or per-seed runs, aggregated here) in the published reference CSV layout.

    The inverse of ``read_runs`` for that format: rows ``type``, ``lang_src``, ``lang_tgt``, ``<m>_mean``,
    ``<m>_var``, ``seed_count`` where ``<m>`` is f1, auc or wer (``one_minus_wer`` is written back as WER).
    """
    ref_name = {"f1": "f1", "auc": "auc", "one_minus_wer": "wer"}.get(metric)
    if ref_name is None:
        raise ValueError(f"the reference CSV holds f1, auc or wer; cannot write metric {metric!r}")
    runs = matrix_runs.filter(pl.col("condition").is_in(["single", "self", "pair"]))
    if "seed_count" in runs.columns:
        agg = runs.select(
            "condition",
            "target",
            "donor",
            pl.col(metric).alias("mean"),
            pl.col(f"{metric}_var").alias("var"),
            "seed_count",
        )
    else:
        agg = runs.group_by("condition", "target", "donor", maintain_order=True).agg(
            pl.col(metric).mean().alias("mean"),
            pl.col(metric).var(ddof=1).alias("var"),
            pl.col(metric).count().cast(pl.Int64).alias("seed_count"),
        )
    if ref_name == "wer":
        agg = agg.with_columns((1.0 - pl.col("mean")).alias("mean"))
    out = agg.select(
        pl.when(pl.col("condition") == "single")
        .then(pl.lit("single"))
        .otherwise(pl.lit("dual"))
        .alias("type"),
        pl.col("target").alias("lang_src"),
        pl.col("donor").alias("lang_tgt"),
        pl.col("mean").alias(f"{ref_name}_mean"),
        pl.col("var").alias(f"{ref_name}_var"),
        "seed_count",
    )
    p = Path(path)
    out.write_csv(p)
    return p


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
