"""What the report reads: the engine's results object, completed by the engine's own functions.

There is one results reader, :meth:`cltm.transfer.tables.MatrixResult.read`; this module only gathers the
directories a report is built from (a results directory plus ``--finetune`` directories) into one
``MatrixResult`` and fills what a directory may lack with the engine's functions: matrices of runs that have
none (``cltm finetune`` writes only runs) by :func:`cltm.transfer.stats.matrix_from_runs`, properties and
language scores of matrices that have none by :func:`cltm.transfer.properties.matrix_properties`. The
report never computes a property itself. Also here: the language -> family map the report orders by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from cltm.transfer.tables import MATRIX_KEYS, MatrixResult

UNKNOWN_FAMILY = "other"


class ReportInputError(ValueError):
    """A results directory or families file the report cannot use; the message names the file and the fix."""


def layer_text(layer: int | None) -> str:
    """A layer for titles and file names: its number, or ``n/a`` (a reference CSV has no layer)."""
    return "n/a" if layer is None else str(layer)


def _missing_keys(frame: pl.DataFrame, present: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``frame`` whose (task, model, layer, probe) does not occur in ``present``."""
    if present.height == 0:
        return frame
    keys = present.select(MATRIX_KEYS).unique()
    return frame.join(keys, on=list(MATRIX_KEYS), how="anti", nulls_equal=True)


def complete_results(result: MatrixResult, families: Mapping[str, str] | None) -> MatrixResult:
    """Add, through the engine's functions, the matrices of runs without matrix rows and the properties and
    language scores of matrices without property rows (``families`` as the engine takes them)."""
    from cltm.transfer.properties import matrix_properties
    from cltm.transfer.stats import matrix_from_runs

    matrices = result.matrices
    orphan_runs = _missing_keys(result.runs, matrices)
    if orphan_runs.height:
        matrices = pl.concat([matrices, matrix_from_runs(orphan_runs)], how="diagonal_relaxed")
    properties, scores = result.properties, result.language_scores
    orphan_matrices = _missing_keys(matrices, properties)
    if orphan_matrices.height:
        extra_properties, extra_scores = matrix_properties(
            orphan_matrices, families=dict(families) if families is not None else None
        )
        properties = pl.concat([properties, extra_properties], how="diagonal_relaxed")
        scores = pl.concat([scores, extra_scores], how="diagonal_relaxed")
    return MatrixResult(
        runs=result.runs,
        matrices=matrices,
        properties=properties,
        skipped=result.skipped,
        language_scores=scores,
        confusion=result.confusion,
        predictions=result.predictions,
    ).validated()


def load_results(
    results_dir: str | Path,
    finetune_dirs: Sequence[str | Path] = (),
    families: Mapping[str, str] | None = None,
) -> MatrixResult:
    """The results of ``results_dir`` and every ``finetune_dirs`` directory as one completed result."""
    results = [MatrixResult.read(results_dir)]
    for directory in finetune_dirs:
        tuned = MatrixResult.read(directory)
        runs = tuned.runs
        sources = set(runs["source"].drop_nulls().unique().to_list()) if "source" in runs.columns else set()
        if "finetune" not in sources:  # a probe sweep given as --finetune would be compared with itself
            raise ReportInputError(
                f"{directory}: no fine-tuned runs (run sources: {sorted(sources) or 'none'}); --finetune "
                "takes a `cltm finetune --out` directory, the probe sweep goes first"
            )
        results.append(tuned)
    merged = MatrixResult.concat(results)
    for name in ("matrices", "properties", "language_scores"):
        # a fine-tune directory may hold matrices already present in the results directory
        setattr(merged, name, getattr(merged, name).unique(maintain_order=True))
    return complete_results(merged, families)


def resolve_families(families: Mapping[str, str] | str | Path | None) -> dict[str, str]:
    """The language -> family map to order by: the same meaning as ``cltm matrix --families``.

    ``None``: the shipped Common Voice map (:func:`cltm.transfer.families.default_families`). A path: a TSV
    (``language<TAB>family`` or ``language<TAB>name<TAB>family``) or JSON object *merged* with the shipped
    map by :func:`~cltm.transfer.families.load_families` (its entries win). A mapping: used as given.
    """
    from cltm.transfer.families import load_families

    if families is None:
        return load_families()
    if isinstance(families, (str, Path)):
        try:
            return load_families(families)
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
