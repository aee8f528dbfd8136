"""What is in a manifest: utterances, speakers, hours per language × gender × split (``cltm corpus info``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

__all__ = ["SUMMARY_BY", "CorpusTotals", "corpus_totals", "summarize"]

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
