"""What is in a manifest: utterances, speakers, hours per language × gender × split (``cltm corpus info``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

__all__ = [
    "SUMMARY_BY",
    "ClassShortfall",
    "CorpusTotals",
    "class_balance",
    "class_shortfalls",
    "corpus_totals",
    "summarize",
    "task_classes",
]

#: The default grouping of :func:`summarize`.
SUMMARY_BY: tuple[str, ...] = ("language", "gender", "split")


def _with_group_columns(df: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    # a manifest without gender/split still gets a summary: the missing grouping column is all null (unknown)
    missing = [pl.lit(None, dtype=pl.String).alias(c) for c in by if c not in df.columns]
    return df.with_columns(missing) if missing else df


def _aggregates(df: pl.DataFrame) -> list[pl.Expr]:
    has_speaker = "speaker" in df.columns
    has_duration = "duration" in df.columns
    return [
        pl.len().alias("utterances"),
        (pl.col("speaker").drop_nulls().n_unique() if has_speaker else pl.lit(None, dtype=pl.UInt32)).alias(
            "speakers"
        ),
        ((pl.col("duration").sum() / 3600.0) if has_duration else pl.lit(0.0)).alias("hours"),
        (pl.col("duration").is_not_null().sum() if has_duration else pl.lit(0, dtype=pl.UInt32)).alias(
            "with_duration"
        ),
    ]


def summarize(df: pl.DataFrame, *, by: Sequence[str] = SUMMARY_BY) -> pl.DataFrame:
    """One row per combination of ``by`` values present in the manifest.

    Columns: the ``by`` columns, ``utterances``, ``speakers`` (distinct non-null speakers in the group, null
    when the manifest has no speaker column), ``hours`` (sum of the known durations, in hours) and
    ``with_duration`` (how many rows of the group have a known duration: ``hours`` covers only those, so
    ``with_duration < utterances`` means the hours are a lower bound). Rows are sorted by ``by``, nulls last.
    A ``by`` column the manifest lacks is reported as null.
    """
    by = list(by)
    df = _with_group_columns(df, by)
    out = df.group_by(by).agg(_aggregates(df))
    return out.sort(by, nulls_last=True).with_columns(pl.col("utterances").cast(pl.UInt32))


@dataclass(frozen=True)
class CorpusTotals:
    """Whole-manifest totals (speakers counted once even when they appear in several groups)."""

    utterances: int
    speakers: int | None
    languages: int
    hours: float
    with_duration: int

    @property
    def duration_known(self) -> bool:
        """True when every row has a duration, so ``hours`` is exact rather than a lower bound."""
        return self.with_duration == self.utterances


def corpus_totals(df: pl.DataFrame) -> CorpusTotals:
    """Totals over the whole manifest; see :func:`summarize` for the meaning of the fields."""
    row = df.select(_aggregates(df)).row(0, named=True)
    return CorpusTotals(
        utterances=df.height,
        speakers=row["speakers"],
        languages=df["language"].n_unique() if "language" in df.columns else 0,
        hours=float(row["hours"] or 0.0),
        with_duration=int(row["with_duration"]),
    )


# ----------------------------------------------------------------------------------------------------------
# Class balance for a classification task (``cltm corpus info --task``)
# ----------------------------------------------------------------------------------------------------------

def task_classes(df: pl.DataFrame, task: str) -> tuple[pl.DataFrame, str, list[str]]:
    """``(manifest with normalised labels, label column, classes)`` of a classification task, from the one
    task registry (:mod:`cltm.tasks`): its label normalisation (gender vocabularies; '' and nulls are missing
    labels) and its classes. A verification task has no classes and is refused (``TaskError``), as are a
    column the manifest lacks, an id column and a column of floats."""
    from cltm.tasks import TaskError, check_task_column, get_task

    spec = get_task(task)
    if spec.is_verification:
        raise TaskError(f"{task} is a verification task: it has no classes to balance (use --by speaker)")
    check_task_column(spec, df)
    return df.with_columns(spec.labels(df).alias(spec.label)), spec.label, spec.class_list(df)


def class_balance(
    df: pl.DataFrame, label: str, *, by: Sequence[str] = SUMMARY_BY, classes: Sequence[str] | None = None
) -> pl.DataFrame:
    """Utterances per class of ``label`` for every combination of ``by`` values: one row per group, one
    column per class (in ``classes`` order; default: the sorted non-null values), then ``total``.

    Rows whose label is null or not one of ``classes`` are counted in an ``(other)`` column when there are
    any, so the counts always add up to the group's utterances. A ``by`` column the manifest lacks is null.
    """
    by = [c for c in by if c != label]
    df = _with_group_columns(df, by)
    classes = list(classes) if classes is not None else sorted(map(str, df[label].drop_nulls().unique()))
    value = pl.col(label).cast(pl.String)
    counts = [(value == c).fill_null(False).sum().cast(pl.UInt32).alias(c) for c in classes]
    other = (~value.is_in(classes)).fill_null(True).sum().cast(pl.UInt32).alias("(other)")
    if by:
        out = df.group_by(by).agg(*counts, other, pl.len().cast(pl.UInt32).alias("total"))
        out = out.sort(by, nulls_last=True)
    else:
        out = df.select(*counts, other, pl.len().cast(pl.UInt32).alias("total"))
    if out["(other)"].sum() == 0:
        out = out.drop("(other)")
    return out


@dataclass(frozen=True)
class ClassShortfall:
    """A language that cannot supply ``n`` per class: per short class, the rows it has."""

    language: str
    pool: str  # "train split", "all rows (no split)" or "all rows (split incomplete)"
    have: dict[str, int]  # class -> training rows available, only the classes that are short
    test_missing: tuple[str, ...]  # classes with no test row (only when the manifest has a split)

    def message(self, n: int) -> str:
        parts = []
        if self.have:
            short = ", ".join(f"{c} {k}" for c, k in self.have.items())
            parts.append(
                f"needs {2 * n} training rows per class (2N for the matrix's own-language condition, N={n}); "
                f"{self.pool} has only {short}"
            )
        if self.test_missing:
            parts.append(f"no test rows of {', '.join(self.test_missing)}")
        return f"{self.language}: " + "; ".join(parts)


def class_shortfalls(
    df: pl.DataFrame, label: str, n: int, *, classes: Sequence[str] | None = None
) -> list[ClassShortfall]:
    """Languages that cannot supply ``n`` utterances per class, as the CLTM plan needs them.

    The plan draws 2N per class (the own-language ``i+i`` condition) from a language's ``train`` split and
    tests on its ``test`` split, which must hold every class. With a complete ``split`` column those are
    counted; without one, or with rows that have none (cltm then splits the speakers itself, holding out
    about a quarter for testing), every row counts as training data, so the check is a necessary condition
    only. Classes default to the non-null values
    of ``label`` over the whole manifest: a language that lacks a class has 0 of it.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    classes = list(classes) if classes is not None else sorted(map(str, df[label].drop_nulls().unique()))
    has_split = "split" in df.columns and df.height > 0 and df["split"].null_count() == 0
    if has_split:
        pool = "train split"
    elif "split" in df.columns and df["split"].null_count() < df.height:
        pool = "all rows (split incomplete)"
    else:
        pool = "all rows (no split)"
    out = []
    for language in sorted(map(str, df["language"].unique())):
        rows = df.filter(pl.col("language") == language)
        train = rows.filter(pl.col("split") == "train") if has_split else rows
        counts = dict(train.group_by(pl.col(label).cast(pl.String)).len().iter_rows())
        short = {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < 2 * n}
        test_missing: tuple[str, ...] = ()
        if has_split:
            in_test = set(rows.filter(pl.col("split") == "test")[label].cast(pl.String).drop_nulls())
            test_missing = tuple(c for c in classes if c not in in_test)
        if short or test_missing:
            out.append(ClassShortfall(language, pool, short, test_missing))
    return out
