"""Reading a results directory (DESIGN §3.3) and the language -> family map the report orders by.

The report only reads the three Parquet tables the CLTM engine writes; it never recomputes a CLTM cell except
through ``cltm.transfer.matrix_from_runs`` (for fine-tune runs that have no matrix rows yet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

MATRIX_KEY = ("task", "model", "probe", "layer")
"""One heatmap per value of these columns."""

REQUIRED_MATRIX_COLUMNS = ("task", "model", "layer", "probe", "target", "donor", "cltm")
OPTIONAL_MATRIX_COLUMNS = {
    "cltm_se": pl.Float64,
    "m": pl.Float64,
    "p_positive": pl.Float64,
    "unstable": pl.Boolean,
}
UNKNOWN_FAMILY = "other"


class ReportInputError(ValueError):
    """A results directory or families file the report cannot use; the message names the file and the fix."""


@dataclass(frozen=True)
class ResultTables:
    """The three long tables of one results directory (``runs`` and ``properties`` may be empty)."""

    runs: pl.DataFrame
    matrices: pl.DataFrame
    properties: pl.DataFrame
    results_dir: Path
    language_scores: pl.DataFrame = field(default_factory=pl.DataFrame)
    """Per-language receiver/donor scores when the CLTM engine wrote them (``language_scores.parquet``)."""
    skipped: pl.DataFrame = field(default_factory=pl.DataFrame)
    """Languages the sweep left out and why (``skipped.parquet``), shown on the page."""


def _read_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".csv":
            return pl.read_csv(path)
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types for a corrupt file
        raise ReportInputError(f"{path}: cannot be read as a table ({exc}). Re-run `cltm matrix`.") from exc


def read_results(results_dir: str | Path) -> ResultTables:
    """Read ``runs.parquet``, ``matrices.parquet`` and ``properties.parquet`` from ``results_dir``.

    ``matrices`` is required; a missing ``runs`` or ``properties`` table only removes the report sections that
    need it. Missing optional matrix columns are added as nulls so that the drawing code has one schema.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportInputError(f"{results_dir}: not a directory. Pass the --out DIR of `cltm matrix`.")
    matrices_path = results_dir / "matrices.parquet"
    if not matrices_path.exists():
        raise ReportInputError(
            f"{matrices_path}: missing. A results directory holds runs.parquet, matrices.parquet and "
            "properties.parquet as written by `cltm matrix --out DIR`."
        )
    matrices = _read_table(matrices_path)
    missing = [c for c in REQUIRED_MATRIX_COLUMNS if c not in matrices.columns]
    if missing:
        raise ReportInputError(
            f"{matrices_path}: missing column(s) {', '.join(missing)}; expected at least "
            f"{', '.join(REQUIRED_MATRIX_COLUMNS)} (DESIGN §3.3)."
        )
    for column, dtype in OPTIONAL_MATRIX_COLUMNS.items():
        if column not in matrices.columns:
            matrices = matrices.with_columns(pl.lit(None, dtype=dtype).alias(column))
    matrices = matrices.with_columns(
        pl.col("target").cast(pl.Utf8),
        pl.col("donor").cast(pl.Utf8),
        pl.col("task").cast(pl.Utf8),
        pl.col("model").cast(pl.Utf8),
        pl.col("probe").cast(pl.Utf8),
        pl.col("cltm").cast(pl.Float64),
        pl.col("layer").cast(pl.Int64),
    )
    runs_path = results_dir / "runs.parquet"
    runs = _read_table(runs_path) if runs_path.exists() else pl.DataFrame()
    if runs.height and "layer" in runs.columns:
        runs = runs.with_columns(pl.col("layer").cast(pl.Int64))
    properties_path = results_dir / "properties.parquet"
    properties = _read_table(properties_path) if properties_path.exists() else pl.DataFrame()
    scores_path = results_dir / "language_scores.parquet"
    scores = _read_table(scores_path) if scores_path.exists() else pl.DataFrame()
    skipped_path = results_dir / "skipped.parquet"
    skipped = _read_table(skipped_path) if skipped_path.exists() else pl.DataFrame()
    return ResultTables(
        runs=runs,
        matrices=matrices,
        properties=properties,
        results_dir=results_dir,
        language_scores=scores,
        skipped=skipped,
    )


def add_runs(tables: ResultTables, runs_dirs: list[str | Path]) -> ResultTables:
    """Add the runs of other directories (e.g. ``cltm finetune --out DIR``, which writes only runs.parquet).

    Their matrices are computed later by ``cltm.transfer.matrix_from_runs``; a ``matrices.parquet`` beside
    them is taken as well.
    """
    runs, matrices = [tables.runs], [tables.matrices]
    for directory in runs_dirs:
        directory = Path(directory)
        runs_path = directory / "runs.parquet"
        if not runs_path.exists():
            raise ReportInputError(
                f"{runs_path}: missing; pass a directory written by `cltm finetune --out`."
            )
        extra = _read_table(runs_path)
        if "layer" in extra.columns:
            extra = extra.with_columns(pl.col("layer").cast(pl.Int64))
        runs.append(extra)
        if (directory / "matrices.parquet").exists():
            matrices.append(read_results(directory).matrices)
    frames = [r for r in runs if r.width]
    merged_runs = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    merged_matrices = pl.concat(matrices, how="diagonal_relaxed").unique(maintain_order=True)
    return ResultTables(
        runs=merged_runs,
        matrices=merged_matrices,
        properties=tables.properties,
        results_dir=tables.results_dir,
        language_scores=tables.language_scores,
        skipped=tables.skipped,
    )


def resolve_families(families: Mapping[str, str] | str | Path | None) -> dict[str, str]:
    """The language -> family map to order by.

    ``None``: the CLTM engine's shipped Common Voice map (:func:`cltm.transfer.families.default_families`).
    A path: a TSV (``language<TAB>family``, or ``language<TAB>name<TAB>family``) or JSON object read by the
    engine's :func:`~cltm.transfer.families.load_families`; the file *replaces* the shipped map (languages it
    does not list go to the ``other`` family), so a custom grouping is not mixed with the default one.
    A mapping: used as given.
    """
    from cltm.transfer.families import default_families, load_families

    if families is None:
        return default_families()
    if isinstance(families, (str, Path)):
        try:
            return load_families(families, extend_default=False)
        except (OSError, ValueError) as exc:
            raise ReportInputError(
                f"{families}: cannot read the families file ({exc}). Expected `language<TAB>family` lines "
                "or a JSON object {language: family}."
            ) from exc
    return {str(k): str(v) for k, v in families.items()}


def family_lookup(language: str, families: Mapping[str, str] | None) -> str:
    """Family of one language code (exact, case-insensitive, then the base of ``zh-HK``-style locales)."""
    if not families:
        return UNKNOWN_FAMILY
    from cltm.transfer.families import family_of

    return family_of(language, dict(families)) or UNKNOWN_FAMILY


def order_languages(
    languages: list[str] | set[str], families: Mapping[str, str] | None
) -> tuple[list[str], list[str]]:
    """Order languages by family (families alphabetically, unknown family last), then by code.

    Returns ``(languages, families)`` aligned. Without a map every language is its own ``other`` family member
    and the order is alphabetical.
    """
    languages = sorted(set(languages))
    if not families:
        return languages, [UNKNOWN_FAMILY] * len(languages)
    family_of = {lang: family_lookup(lang, families) for lang in languages}
    ordered = sorted(languages, key=lambda lang: (family_of[lang] == UNKNOWN_FAMILY, family_of[lang], lang))
    return ordered, [family_of[lang] for lang in ordered]
