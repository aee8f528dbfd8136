"""Result tables of a CLTM sweep: column contracts, the results directory, and readers for runs tables.

Three long-form tables (DESIGN §3.3), each with a fixed column list and polars dtype:

* ``runs``: one row per (task, model, layer, probe, condition, target, donor, seed) with the metric values.
  ``condition`` is one of ``single`` (N of the target), ``self`` (2N of the target), ``pair`` (N of the
  target + N of the donor), ``zero_shot`` (N of the donor only, tested on the target) and, from
  fine-tuning, ``sequential`` (trained on N of the donor, then adapted on N of the target). For ``single``
  and ``self`` the donor is the target itself, as in the published reference CSV. Metric columns that do
  not apply to a task are null.
* ``matrices``: one row per (task, model, layer, probe, target, donor) with the CLTM cell, its delta-method
  standard error, the unnormalised ``m``, ``p_positive``, ``unstable`` and the mean performance of every
  condition.
* ``properties``: one row per (task, model, layer, probe) with the matrix properties of DESIGN §4.1 and
  those of the published reference implementation (``cltm.transfer.properties`` defines every column).

Runs can also be *aggregated*: a table that carries ``seed_count`` and ``<metric>_var`` columns holds, per
row, the mean over seeds in the metric column and the between-seed variance (ddof=1) next to it; ``seed`` is
then null. This is how the published reference implementation's CSV is read (``read_runs``), and
``matrix_from_runs`` accepts both forms.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cltm.fileio import atomic_write, write_text_atomic

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
CONDITIONS: tuple[str, ...] = ("single", "self", "pair", "zero_shot", "sequential")

#: The columns that identify one matrix, and one run (``fold`` is null unless the plan is K-fold): every table
#: keyed by matrix or run starts with them.
MATRIX_KEY_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
}
RUN_KEY_COLUMNS: dict[str, pl.DataType] = {
    **MATRIX_KEY_COLUMNS,
    "condition": pl.String(),
    "target": pl.String(),
    "donor": pl.String(),
    "seed": pl.Int64(),
    "fold": pl.Int64(),
}

#: Columns that identify one matrix (one heatmap).
MATRIX_KEYS: tuple[str, ...] = tuple(MATRIX_KEY_COLUMNS)

RUNS_COLUMNS: dict[str, pl.DataType] = {
    **RUN_KEY_COLUMNS,
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
    **MATRIX_KEY_COLUMNS,
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
    **MATRIX_KEY_COLUMNS,
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
    "n_stable": pl.Int64(),
    "mean_offdiag_stable": pl.Float64(),
    "median_offdiag_stable": pl.Float64(),
    "mean_target_cosine": pl.Float64(),
    "n_complete_languages": pl.Int64(),
    "pca_explained_1": pl.Float64(),
    "pca_explained_2": pl.Float64(),
    "pca_explained_3": pl.Float64(),
    "pca_components_80": pl.Int64(),
    "spectral_radius": pl.Float64(),
    "condition_number": pl.Float64(),
    "receiver_entropy": pl.Float64(),
    "receiver_gini": pl.Float64(),
    "donor_entropy": pl.Float64(),
    "donor_gini": pl.Float64(),
    "within_family_positive_share": pl.Float64(),
}

#: Per-language receiver / donor scores (row / column sums of the positive off-diagonal parts) and how
#: concentrated each row / column is (entropy in nats and Gini of its positive off-diagonal parts).
LANGUAGE_SCORES_COLUMNS: dict[str, pl.DataType] = {
    **MATRIX_KEY_COLUMNS,
    "language": pl.String(),
    "family": pl.String(),
    "receiver_score": pl.Float64(),
    "donor_score": pl.Float64(),
    "receiver_entropy": pl.Float64(),
    "receiver_gini": pl.Float64(),
    "donor_entropy": pl.Float64(),
    "donor_gini": pl.Float64(),
}

#: Confusion counts of classification runs: one row per (run, true class, predicted class), count > 0.
CONFUSION_COLUMNS: dict[str, pl.DataType] = {
    **RUN_KEY_COLUMNS,
    "true": pl.String(),
    "pred": pl.String(),
    "count": pl.Int64(),
}

#: Per-utterance predictions (on request): one row per (test utterance, run). ``train_languages`` lists the
#: languages the model was trained on, target first: "en+de" for the pair of target en and donor de, and
#: "de>en" for sequential transfer (trained on de, then adapted on en); ``scores`` holds one score per class
#: in the order of ``classes`` (probabilities for probes, softmax outputs for fine-tuned models).
#: ``source`` is "probe", "finetune" or "human" (listener panels compared on the same utterances).
PREDICTIONS_COLUMNS: dict[str, pl.DataType] = {
    "utt_id": pl.String(),
    **RUN_KEY_COLUMNS,
    "train_languages": pl.String(),
    "true": pl.String(),
    "pred": pl.String(),
    "classes": pl.List(pl.String()),
    "scores": pl.List(pl.Float64()),
    "source": pl.String(),
}

#: Languages left out of a sweep and why.
SKIPPED_COLUMNS: dict[str, pl.DataType] = {"language": pl.String(), "reason": pl.String()}

#: The tables of one results directory: name -> (file, column contract, columns a file must have).
#: Other contract columns missing from a file (an older cltm, another pipeline) are added as nulls.
RESULT_TABLES: dict[str, tuple[str, dict[str, pl.DataType], tuple[str, ...]]] = {
    "runs": (
        "runs.parquet",
        RUNS_COLUMNS,
        ("task", "model", "layer", "probe", "condition", "target", "donor"),
    ),
    "matrices": ("matrices.parquet", MATRICES_COLUMNS, (*MATRIX_KEYS, "target", "donor", "cltm")),
    "properties": ("properties.parquet", PROPERTIES_COLUMNS, MATRIX_KEYS),
    "language_scores": ("language_scores.parquet", LANGUAGE_SCORES_COLUMNS, (*MATRIX_KEYS, "language")),
    "skipped": ("skipped.parquet", SKIPPED_COLUMNS, ("language", "reason")),
    "confusion": (
        "confusion.parquet",
        CONFUSION_COLUMNS,
        (*MATRIX_KEYS, "condition", "target", "donor", "true", "pred", "count"),
    ),
    "predictions": (
        "predictions.parquet",
        PREDICTIONS_COLUMNS,
        ("utt_id", *MATRIX_KEYS, "condition", "target", "true", "pred"),
    ),
}
RESULT_FILES: dict[str, str] = {name: spec[0] for name, spec in RESULT_TABLES.items()}
#: Tables whose extra columns are kept (runs may carry ``seed_count`` and ``<metric>_var``, properties and
#: matrices the columns of a newer cltm).
_KEEP_EXTRA = frozenset({"runs", "matrices", "properties"})
#: Written last by ``MatrixResult.write``: the files of the set with their SHA-256; readers check it.
SET_MANIFEST = "results-set.json"
#: Written between staging and renaming; a reader or writer that finds it completes the renames.
SET_JOURNAL = ".results-set.commit.json"
SET_FORMAT = 1


class ResultsError(ValueError):
    """A results directory or table that does not meet its contract; the message names file, column, fix."""


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


def validate_table(df: pl.DataFrame, name: str, where: str) -> pl.DataFrame:
    """Check ``df`` against the contract of result table ``name`` and cast it; ``where`` names it in errors.

    Required columns must be present; every contract column present must cast to its dtype (strictly: a
    value that does not fit is an error, not a null). Missing optional columns come back as nulls.
    """
    _file, columns, required = RESULT_TABLES[name]
    missing = [c for c in required if c not in df.columns]
    if missing and df.height == 0:  # an empty table (``pl.DataFrame()``) stands for "none"
        return conform(df, columns)
    if missing:
        raise ResultsError(
            f"{where}: missing column(s) {', '.join(missing)}; the {name} table needs at least "
            f"{', '.join(required)} (DESIGN §3.3)"
        )
    for column, dtype in columns.items():
        if column not in df.columns or df.schema[column] == dtype:
            continue
        try:
            df.select(pl.col(column).cast(dtype, strict=True))
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            raise ResultsError(
                f"{where}: column {column!r} is {df.schema[column]}, the {name} contract says {dtype} "
                f"and its values do not convert ({str(exc).splitlines()[0]})"
            ) from None
    return conform(df, columns, keep_extra=name in _KEEP_EXTRA)


@dataclass
class MatrixResult:
    """The one results object: every table of a CLTM sweep, read and written as one set.

    Tables (column contracts in this module): ``runs``, ``matrices``, ``properties``, ``language_scores``,
    ``skipped``, ``confusion``, ``predictions``. The engine (``run_matrix``), ``cltm matrix --from-runs``,
    ``cltm finetune`` and ``cltm report`` all write and read through :meth:`write` / :meth:`read`.
    """

    runs: pl.DataFrame = field(default_factory=lambda: empty_frame(RUNS_COLUMNS))
    matrices: pl.DataFrame = field(default_factory=lambda: empty_frame(MATRICES_COLUMNS))
    properties: pl.DataFrame = field(default_factory=lambda: empty_frame(PROPERTIES_COLUMNS))
    skipped: pl.DataFrame = field(default_factory=lambda: empty_frame(SKIPPED_COLUMNS))
    language_scores: pl.DataFrame = field(default_factory=lambda: empty_frame(LANGUAGE_SCORES_COLUMNS))
    confusion: pl.DataFrame = field(default_factory=lambda: empty_frame(CONFUSION_COLUMNS))
    predictions: pl.DataFrame = field(default_factory=lambda: empty_frame(PREDICTIONS_COLUMNS))
    #: what the sweep itself reports beside the tables (not part of the written set): the weighted-layer-sum
    #: probe's layer weights, and notes such as rows excluded for non-finite embeddings
    layer_weights: pl.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pl.DataFrame]:
        """name -> table, in the order of ``RESULT_TABLES``."""
        return {name: getattr(self, name) for name in RESULT_TABLES}

    def validated(self) -> MatrixResult:
        """A copy with every table checked against and cast to its contract (raises ``ResultsError``)."""
        return MatrixResult(
            **{
                name: validate_table(df, name, f"results table {name!r}")
                for name, df in self.tables().items()
            }
        )

    @classmethod
    def concat(cls, results: list[MatrixResult]) -> MatrixResult:
        """Several results (e.g. one per task or model) as one set."""
        merged = {
            name: pl.concat(
                [validate_table(getattr(r, name), name, name) for r in results], how="diagonal_relaxed"
            )
            if results
            else empty_frame(RESULT_TABLES[name][1])
            for name in RESULT_TABLES
        }
        return cls(**merged)

    def write(self, out_dir: str | Path) -> Path:
        """Write every table into ``out_dir`` as one set; returns the directory.

        Guarantee (atomic as a set): every table is first written completely to a staged file beside its
        destination and flushed; a journal naming the staged files is then written (atomically), the staged
        files are renamed over the destinations, ``results-set.json`` (each file's SHA-256) is written and
        the journal removed. A failure before the journal leaves the previous set untouched (staged files
        are removed); a crash after it is completed by the next ``read`` or ``write`` (roll forward), so a
        reader never sees half of the old set and half of the new one. Files are written without
        environment-dependent statistics, so the same tables give the same bytes.
        """
        checked = self.validated()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _recover(out)
        for stale in out.glob(".*.staged"):
            stale.unlink(missing_ok=True)
        token = uuid.uuid4().hex[:8]
        staged: list[tuple[str, str]] = []
        entries: dict[str, dict] = {}
        try:
            for name, table in checked.tables().items():
                final = RESULT_TABLES[name][0]
                temp = f".{final}.{token}.staged"
                atomic_write(out / temp, lambda path, t=table: t.write_parquet(path, statistics=False))
                staged.append((temp, final))
                entries[name] = {"file": final, "rows": table.height, "sha256": _sha256(out / temp)}
        except BaseException:
            for temp, _final in staged:
                (out / temp).unlink(missing_ok=True)
            raise
        manifest = {"format": SET_FORMAT, "tables": entries}
        write_text_atomic(json.dumps({"moves": staged, "manifest": manifest}, indent=1), out / SET_JOURNAL)
        _commit(out)
        return out

    @classmethod
    def read(cls, results_dir: str | Path) -> MatrixResult:
        """Read a results directory: every table present, validated against its contract.

        A directory needs at least one table (``runs.parquet`` alone, as ``cltm finetune`` writes, is a
        results directory). Missing tables come back empty. When ``results-set.json`` is present every file
        must match it (a torn or hand-edited set is refused); an interrupted write is completed first.
        """
        root = Path(results_dir)
        if not root.is_dir():
            raise ResultsError(
                f"{root}: not a directory. Pass the --out DIR of `cltm matrix` or `cltm finetune`."
            )
        _recover(root)
        expected = _read_manifest(root)
        present = {name for name, spec in RESULT_TABLES.items() if (root / spec[0]).exists()}
        if not present:
            raise ResultsError(
                f"{root}: no results tables; a results directory holds runs.parquet, matrices.parquet, "
                "properties.parquet, ... as written by `cltm matrix --out DIR` or `cltm finetune --out DIR`"
            )
        lost = sorted(set(expected or {}) - present)
        if lost:
            raise ResultsError(
                f"{root}: {', '.join(RESULT_TABLES[n][0] for n in lost)} listed in {SET_MANIFEST} but "
                "missing: the results set is incomplete; re-run the command that wrote it"
            )
        tables = {}
        for name, (file, columns, _required) in RESULT_TABLES.items():
            path = root / file
            if name not in present:
                tables[name] = empty_frame(columns)
                continue
            if expected is not None and name in expected and _sha256(path) != expected[name]["sha256"]:
                raise ResultsError(
                    f"{path}: does not match {root / SET_MANIFEST} (written by another run, or edited): the "
                    "results set is torn. Re-run the command that wrote it, or delete results-set.json to "
                    "accept the files as they are"
                )
            try:
                df = pl.read_parquet(path)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise ResultsError(
                    f"{path}: cannot be read as Parquet ({str(exc).splitlines()[0]}); re-run the "
                    "command that wrote it"
                ) from None
            tables[name] = validate_table(df, name, str(path))
        return cls(**tables)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(root: Path) -> dict | None:
    path = root / SET_MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return {name: entry for name, entry in manifest["tables"].items() if name in RESULT_TABLES}
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsError(
            f"{path}: not a results-set manifest ({exc}); delete it to read the files as they are"
        ) from None


def _commit(root: Path) -> None:
    """Rename the staged files of the journal into place, write the manifest, drop the journal."""
    journal = json.loads((root / SET_JOURNAL).read_text(encoding="utf-8"))
    for temp, final in journal["moves"]:
        if (root / temp).exists():  # absent: renamed before an interruption
            os.replace(root / temp, root / final)
    try:  # make the renames durable before the manifest says they happened
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # directories cannot be opened or synced on every platform
        pass
    write_text_atomic(json.dumps(journal["manifest"], indent=1, sort_keys=True), root / SET_MANIFEST)
    (root / SET_JOURNAL).unlink()


def _recover(root: Path) -> None:
    """Complete a write that was interrupted after its journal (roll forward)."""
    if not (root / SET_JOURNAL).exists():
        return
    try:
        _commit(root)
    except (OSError, ValueError, KeyError) as exc:
        raise ResultsError(
            f"{root}: an interrupted write ({SET_JOURNAL}) could not be completed ({exc}); re-run the "
            "command that wrote the directory"
        ) from None


def write_results(
    out_dir: str | Path,
    runs: pl.DataFrame,
    matrices: pl.DataFrame,
    properties: pl.DataFrame,
    *,
    skipped: pl.DataFrame | None = None,
    language_scores: pl.DataFrame | None = None,
    confusion: pl.DataFrame | None = None,
    predictions: pl.DataFrame | None = None,
) -> Path:
    """``MatrixResult(...).write(out_dir)`` for callers holding loose tables (None = empty table)."""
    given = {
        "skipped": skipped,
        "language_scores": language_scores,
        "confusion": confusion,
        "predictions": predictions,
    }
    extra = {name: df for name, df in given.items() if df is not None}
    return MatrixResult(runs=runs, matrices=matrices, properties=properties, **extra).write(out_dir)


def read_results(results_dir: str | Path) -> MatrixResult:
    """``MatrixResult.read(results_dir)``."""
    return MatrixResult.read(results_dir)


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
        rows = bad[_ROW].to_list() if _ROW in bad.columns else []
        raise RunsTableError(
            f"reference CSV: {_rows_text(rows) + ': ' if rows else ''}`type` must be single or dual; "
            f"found {bad['type'].unique().to_list()}"
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
        *([pl.col(_ROW)] if _ROW in df.columns else []),
    )
    return conform(out, {**RUNS_COLUMNS, **AGGREGATE_COLUMNS}, keep_extra=True)


class RunsTableError(ValueError):
    """A runs table that cannot be trusted; the message names the file, the row(s) and the fix."""


#: Columns that must hold numbers when present (checked before any conversion, with the offending row).
_NUMERIC_INPUT = re.compile(
    r"^(layer|seed|fold|n_train|seed_count|" + "|".join(METRIC_COLUMNS) + r"|\w+_mean|\w+_var)$"
)
_ROW = "__row"
_MAX_LISTED = 5


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:_MAX_LISTED]))
    return (
        f"row {shown}"
        if len(rows) == 1
        else f"rows {shown}" + (f" (+{len(rows) - _MAX_LISTED} more)" if len(rows) > _MAX_LISTED else "")
    )


def _check_csv_shape(path: Path, separator: str) -> None:
    """A CSV whose lines do not all have the header's number of fields is refused with the first such line."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=separator)
        header = next(reader, None)
        if header is None:
            raise RunsTableError(f"{path}: the file has no header line; write the column names first")
        for line, fields in enumerate(reader, start=2):
            if fields and len(fields) != len(header):
                raise RunsTableError(
                    f"{path}: line {line} has {len(fields)} field(s), the header has {len(header)}; "
                    "fix or remove that line"
                )


def _load_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise RunsTableError(f"{path}: unknown runs file type {suffix!r}; use .parquet, .csv or .tsv")
    if path.stat().st_size == 0:
        raise RunsTableError(f"{path}: the file is empty (0 bytes); a runs table needs a header and rows")
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        separator = "\t" if suffix == ".tsv" else ","
        _check_csv_shape(path, separator)
        return pl.read_csv(path, separator=separator, infer_schema_length=None)
    except RunsTableError:
        raise
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise RunsTableError(
            f"{path}: cannot be read as a {suffix.lstrip('.')} table ({str(exc).splitlines()[0]})"
        ) from None


def _check_numbers(df: pl.DataFrame, source: str) -> None:
    """Numeric columns read as text (a stray word in a CSV) are refused with the first offending rows."""
    for column in df.columns:
        if not _NUMERIC_INPUT.match(column) or df.schema[column] != pl.String:
            continue
        text = pl.col(column).str.strip_chars()
        bad = df.filter(text.is_not_null() & (text != "") & text.cast(pl.Float64, strict=False).is_null())
        if bad.height:
            values = ", ".join(repr(v) for v in bad[column].head(3).to_list())
            raise RunsTableError(
                f"{source}: {_rows_text(bad[_ROW].to_list())}: column {column!r} holds {values}, not a number"
            )


def validate_runs(runs: pl.DataFrame, source: str = "runs table", *, require_conditions: bool = True) -> None:
    """Refuse a runs table that would give a silently wrong matrix; the message names the rows.

    Checks: known ``condition`` values; no duplicated condition row (per seed and fold for per-seed runs;
    per condition for aggregated ones); ``seed_count`` > 0 and variances >= 0 (aggregated runs); every
    target with ``pair`` or ``zero_shot`` rows has its ``single`` and ``self`` rows (unless
    ``require_conditions`` is False). Row numbers count data rows from 1 (a ``__row`` column, added by
    ``read_runs``, is used when present).
    """
    if runs.height == 0:
        raise RunsTableError(f"{source}: no rows")
    df = runs if _ROW in runs.columns else runs.with_row_index(_ROW, offset=1)
    unknown = df.filter(~pl.col("condition").is_in(list(CONDITIONS)) | pl.col("condition").is_null())
    if unknown.height:
        raise RunsTableError(
            f"{source}: {_rows_text(unknown[_ROW].to_list())}: condition "
            f"{unknown['condition'].unique().to_list()} is not one of {', '.join(CONDITIONS)}"
        )
    aggregated = "seed_count" in df.columns
    keys = [*MATRIX_KEYS, "condition", "target", "donor"] + ([] if aggregated else ["seed", "fold"])
    keys = [k for k in keys if k in df.columns]
    dups = (
        df.group_by(keys)
        .agg(pl.col(_ROW).sort())
        .filter(pl.col(_ROW).list.len() > 1)
        .sort(pl.col(_ROW).list.first())
    )
    if dups.height:
        first = dups.row(0, named=True)
        raise RunsTableError(
            f"{source}: {_rows_text(first[_ROW])} repeat condition {first['condition']!r} of target "
            f"{first['target']!r}, donor {first['donor']!r}"
            + ("" if aggregated else f", seed {first.get('seed')}")
            + f" ({dups.height} repeated key(s) in all); keep one row per condition"
            + ("" if aggregated else ", seed and fold")
        )
    if aggregated:
        bad = df.filter(pl.col("seed_count").is_null() | (pl.col("seed_count") <= 0))
        if bad.height:
            raise RunsTableError(
                f"{source}: {_rows_text(bad[_ROW].to_list())}: seed_count must be a positive number of seeds "
                f"(found {bad['seed_count'].head(3).to_list()})"
            )
        for column in [c for c in df.columns if c.endswith("_var")]:
            bad = df.filter(pl.col(column).cast(pl.Float64) < 0)
            if bad.height:
                raise RunsTableError(
                    f"{source}: {_rows_text(bad[_ROW].to_list())}: {column} is negative "
                    f"({bad[column].head(3).to_list()}); a between-seed variance is >= 0"
                )
    if not require_conditions:
        return
    for key, group in df.partition_by(list(MATRIX_KEYS), as_dict=True, maintain_order=True).items():
        conditions = group.group_by("target").agg(pl.col("condition").unique())
        for target, present in conditions.iter_rows():
            lacking = [c for c in ("single", "self") if c not in present]
            if lacking and set(present) & {"pair", "zero_shot"}:
                rows = group.filter(pl.col("target") == target)[_ROW].to_list()
                where = "/".join("–" if k is None else str(k) for k in key)
                raise RunsTableError(
                    f"{source}: target {target!r} ({where}) has no "
                    f"{' or '.join(repr(c) for c in lacking)} row, needed by its {_rows_text(rows)}: add the "
                    "missing condition(s) or remove the target's rows"
                )


def read_runs(
    path: str | Path,
    *,
    format: str | None = None,
    task: str | None = None,
    model: str | None = None,
    probe: str | None = None,
    layer: int | None = None,
) -> pl.DataFrame:
    """Read and validate a runs table: our long ``runs`` (Parquet/CSV) or the published reference CSV.

    ``format`` names a registered format (see ``runs_formats()``); by default it is sniffed from the columns.
    The keyword options fill the identifying columns a reference CSV lacks (task defaults from the metric: AUC
    -> speaker, F1 -> gender, WER -> asr; model "reference"; probe "finetune"; layer null). Nothing is
    trusted: an empty or ragged file, text in a numeric column, duplicated condition rows, a non-positive
    ``seed_count``, a negative variance or a target without its ``single``/``self`` rows raise
    ``RunsTableError`` naming the rows (see :func:`validate_runs`).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"runs file not found: {p}")
    df = _load_table(p)
    if format is None:
        format = next((name for name, (sniff, _) in _RUNS_FORMATS.items() if sniff(df.columns)), None)
        if format is None:
            raise RunsTableError(
                f"{p}: not a recognised runs table (columns {df.columns}). Expected our runs columns "
                "(condition, target, donor, ...) or the reference CSV (type, lang_src, lang_tgt, "
                "f1_mean|auc_mean|wer_mean, ...)"
            )
    if format not in _RUNS_FORMATS:
        raise ValueError(f"unknown runs format {format!r}; known: {runs_formats()}")
    df = df.with_row_index(_ROW, offset=1)
    _check_numbers(df, str(p))
    options = {"task": task, "model": model, "probe": probe, "layer": layer}
    try:
        runs = _RUNS_FORMATS[format][1](df, options)
    except pl.exceptions.PolarsError as exc:
        raise RunsTableError(f"{p}: {str(exc).splitlines()[0]}") from None
    validate_runs(runs, str(p))
    return runs.drop(_ROW) if _ROW in runs.columns else runs


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
