"""Listener judgements: the column contract, import from a user's table, validation against a corpus manifest.

A listening test gives one row per (listener, stimulus): who answered, which listener group (usually the
listener's L1, as a language code of the manifest), which utterance, the answer, and optionally a confidence
and a response time. ``--map`` names the user's columns for these fields; the import checks every row against
the corpus manifest (which knows each utterance's language and true label) and writes a table with the
columns of :data:`LISTENER_COLUMNS`.

Validation collects *every* problem before raising, as the manifest validation does, and names each bad row
(0-based data row, header excluded), its value and the fix: unknown utt_ids, responses outside the task's
classes (after the task's label normalisation, so ``Anger`` counts as ``angry``), duplicate answers (same
listener and utterance), a listener listed in two groups, missing values, non-numeric confidence / response
time.

A listener is **native** for a stimulus when the listener's group equals the stimulus language (compared
case-insensitively, e.g. group ``de`` for a ``de`` utterance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import polars as pl

from cltm.corpus.manifest import Problem, read_table
from cltm.fileio import write_parquet_atomic
from cltm.human.labels import normalise_labels
from cltm.transfer.tables import conform

__all__ = [
    "LISTENER_COLUMNS",
    "ListenerColumnMap",
    "ListenerImport",
    "ListenerTableError",
    "import_listeners",
    "read_listener_table",
    "read_listeners",
    "task_classes",
    "validate_listeners",
    "write_listeners",
]

#: The validated listener table (one row per answer). ``true`` is the manifest's label and ``response`` the
#: listener's answer, both normalised with the task's rules; ``language`` is the stimulus language from the
#: manifest; ``native`` = group equals language; ``confidence`` / ``rt`` are null when not mapped; ``row`` is
#: the answer's 0-based data row in the imported table.
LISTENER_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "listener": pl.String(),
    "group": pl.String(),
    "utt_id": pl.String(),
    "language": pl.String(),
    "true": pl.String(),
    "response": pl.String(),
    "correct": pl.Boolean(),
    "native": pl.Boolean(),
    "confidence": pl.Float64(),
    "rt": pl.Float64(),
    "row": pl.Int64(),
}

_TEXT_FIELDS = ("listener", "group", "utt_id", "response")
_NUMBER_FIELDS = ("confidence", "rt")
_MAX_LINES_IN_MESSAGE = 200


@dataclass(frozen=True)
class ListenerColumnMap:
    """Which column of the user's table holds each field (``None``: the optional field is absent)."""

    listener: str = "listener"
    group: str = "group"
    utt_id: str = "utt_id"
    response: str = "response"
    confidence: str | None = None
    rt: str | None = None

    @classmethod
    def parse(cls, text: str) -> ListenerColumnMap:
        """``"listener=subject,group=L1,utt_id=stimulus,response=answer,rt=RT"`` (unnamed fields keep their
        defaults: a column named like the field)."""
        known = [f.name for f in fields(cls)]
        given: dict[str, str] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"--map entry {part!r} is not FIELD=COLUMN (e.g. listener=subject)")
            name, column = (x.strip() for x in part.split("=", 1))
            if name not in known:
                raise ValueError(f"--map field {name!r} is unknown; fields are {', '.join(known)}")
            if not column:
                raise ValueError(f"--map entry {part!r} names no column")
            if name in given:
                raise ValueError(f"--map names field {name!r} twice")
            given[name] = column
        return cls(**given)

    def mapped(self) -> dict[str, str]:
        """field -> the user's column, for every field that is mapped."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ListenerImport:
    """How to read and check a listener table: its column map, the task, and the task's classes.

    ``classes`` default to the (normalised) labels of the manifest's task column.
    """

    columns: ListenerColumnMap = ListenerColumnMap()
    task: str = "emotion"
    classes: tuple[str, ...] | None = None


class ListenerTableError(ValueError):
    """A listener table failed validation. ``problems`` lists every problem found, each with its row."""

    def __init__(self, problems: list[Problem], source: str | os.PathLike[str] | None = None):
        self.problems = list(problems)
        self.source = None if source is None else str(source)
        n = len(self.problems)
        where = f"{self.source}: " if self.source else ""
        head = (
            f"{where}invalid listener table, {n} problem{'s' if n != 1 else ''} "
            "(rows count from 0 in data order, header excluded):"
        )
        lines = [f"  - {p}" for p in self.problems[:_MAX_LINES_IN_MESSAGE]]
        if n > _MAX_LINES_IN_MESSAGE:
            lines.append(f"  ... and {n - _MAX_LINES_IN_MESSAGE} more (all in ListenerTableError.problems)")
        super().__init__("\n".join([head, *lines]))


def task_classes(
    manifest: pl.DataFrame, task: str, classes: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """The task's classes: ``classes`` normalised, or the sorted distinct normalised manifest labels."""
    if classes is not None:
        values = normalise_labels(task, pl.Series("c", list(classes), dtype=pl.String))
        return tuple(dict.fromkeys(v for v in values.to_list() if v is not None))
    if task not in manifest.columns:
        raise ValueError(f"the manifest has no {task!r} column (columns: {', '.join(manifest.columns)})")
    labels = normalise_labels(task, manifest[task]).drop_nulls().unique().sort()
    return tuple(labels.to_list())


def read_listener_table(path: str | os.PathLike[str], columns: ListenerColumnMap) -> pl.DataFrame:
    """Read a CSV / TSV / Parquet listening-test table; the mapped text columns are read as text."""
    text_columns = [getattr(columns, f) for f in _TEXT_FIELDS]
    return read_table(path, string_columns=text_columns)


def _indices(mask: pl.Series) -> list[int]:
    return mask.fill_null(False).arg_true().to_list()


def _as_text(series: pl.Series) -> pl.Series | None:
    dtype = series.dtype
    if dtype == pl.Null or dtype == pl.String or dtype == pl.Categorical or dtype.is_integer():
        return series.cast(pl.String)
    if isinstance(dtype, pl.Enum):
        return series.cast(pl.String)
    return None


def _as_number(series: pl.Series) -> tuple[pl.Series | None, pl.Series | None]:
    """(values as Float64, mask of text that is not a number) or (None, None) for an unusable type."""
    dtype = series.dtype
    if dtype.is_numeric() or dtype == pl.Null:
        return series.cast(pl.Float64), pl.Series([False] * len(series))
    if dtype == pl.String:
        stripped = series.str.strip_chars()
        parsed = stripped.cast(pl.Float64, strict=False)
        bad = series.is_not_null() & (stripped.str.len_chars() > 0) & parsed.is_null()
        return parsed, bad
    return None, None


def validate_listeners(
    table: pl.DataFrame,
    manifest: pl.DataFrame,
    settings: ListenerImport = ListenerImport(),
    *,
    source: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Check a listening-test table against the manifest and return it in the :data:`LISTENER_COLUMNS` form.

    Raises :class:`ListenerTableError` listing every bad row (row number, value, fix). ``manifest`` needs
    ``utt_id``, ``language`` and the task's label column.
    """
    task = settings.task
    mapped = settings.columns.mapped()
    frame_problems: list[Problem] = []
    missing = [f"{name}={column}" for name, column in mapped.items() if column not in table.columns]
    if missing:
        frame_problems.append(
            Problem(
                f"column(s) named in --map not in the table: {', '.join(missing)}; the table has: "
                f"{', '.join(table.columns) or '(no columns)'}. Fix --map FIELD=COLUMN"
            )
        )
    absent = [c for c in ("utt_id", "language", task) if c not in manifest.columns]
    if absent:
        frame_problems.append(
            Problem(
                f"the manifest lacks column(s) {', '.join(absent)}: it must give each utterance's language "
                f"and its {task!r} label"
            )
        )
    if table.height == 0:
        frame_problems.append(Problem("the table has no answers (no data rows)"))
    if frame_problems:
        raise ListenerTableError(frame_problems, source)
    classes = task_classes(manifest, task, settings.classes)
    if not classes:
        raise ListenerTableError(
            [Problem(f"the manifest has no {task!r} labels: no classes to score")], source
        )

    problems: list[Problem] = []
    n = table.height
    text: dict[str, pl.Series] = {}
    for name in _TEXT_FIELDS:
        column = mapped[name]
        values = _as_text(table[column])
        if values is None:
            problems.append(
                Problem(f"column {column!r} ({name}) has type {table[column].dtype}, expected text")
            )
            continue
        values = values.str.strip_chars()
        text[name] = pl.select(pl.when(values.str.len_chars() == 0).then(None).otherwise(values)).to_series()
    numbers: dict[str, pl.Series] = {}
    for name in _NUMBER_FIELDS:
        if name not in mapped:
            continue
        column = mapped[name]
        values, bad = _as_number(table[column])
        if values is None:
            problems.append(
                Problem(f"column {column!r} ({name}) has type {table[column].dtype}, expected numbers")
            )
            continue
        for r in _indices(bad):
            problems.append(
                Problem(
                    f"{name} {table[column][r]!r} is not a number; write a number or leave it empty",
                    r,
                    column,
                )
            )
        for r in _indices(values.is_not_null() & ~values.is_finite()):
            problems.append(
                Problem(f"{name} {values[r]} is not finite; write a number or leave it empty", r, column)
            )
        if name == "rt":
            for r in _indices(values.is_not_null() & values.is_finite() & (values < 0)):
                problems.append(Problem(f"response time {values[r]} is negative", r, column))
        numbers[name] = values
    if len(text) < len(_TEXT_FIELDS):
        raise ListenerTableError(problems, source)

    utt = text["utt_id"]
    for name in _TEXT_FIELDS:
        column = mapped[name]
        for r in _indices(text[name].is_null()):
            problems.append(
                Problem(
                    f"{name} is missing (column {column!r}); fill it in or drop the row", r, column, utt[r]
                )
            )

    manifest_labels = pl.DataFrame(
        {
            "utt_id": manifest["utt_id"].cast(pl.String),
            "language": manifest["language"].cast(pl.String),
            "true": normalise_labels(task, manifest[task]),
        }
    ).unique("utt_id", keep="first")
    rows = pl.DataFrame(
        {
            "row": pl.int_range(n, eager=True, dtype=pl.Int64),
            **text,
            "response_norm": normalise_labels(task, text["response"]),
        }
    ).join(manifest_labels, on="utt_id", how="left", maintain_order="left")
    known = rows["utt_id"].is_in(manifest_labels["utt_id"].implode())
    for r in _indices(rows["utt_id"].is_not_null() & ~known):
        problems.append(
            Problem(
                f"unknown utt_id {utt[r]!r}: not in the manifest; fix the id or pass the manifest the "
                "stimuli came from",
                r,
                mapped["utt_id"],
                utt[r],
            )
        )
    for r in _indices(known & rows["true"].is_null()):
        problems.append(
            Problem(
                f"utt_id {utt[r]!r} has no {task!r} label in the manifest, so the answer cannot be scored; "
                "label the utterance or drop the row",
                r,
                mapped["utt_id"],
                utt[r],
            )
        )
    class_list = pl.Series(list(classes), dtype=pl.String).implode()
    for r in _indices(rows["true"].is_not_null() & ~rows["true"].is_in(class_list)):
        problems.append(
            Problem(
                f"the manifest labels utt_id {utt[r]!r} {rows['true'][r]!r}, not one of the classes "
                f"{', '.join(classes)}; drop the row or add the class (--classes)",
                r,
                mapped["utt_id"],
                utt[r],
            )
        )
    bad_response = rows["response_norm"].is_not_null() & ~rows["response_norm"].is_in(class_list)
    for r in _indices(bad_response):
        problems.append(
            Problem(
                f"response {text['response'][r]!r} is not one of the task's classes {', '.join(classes)} "
                f"(after normalisation: {rows['response_norm'][r]!r}); correct it or drop the row",
                r,
                mapped["response"],
                utt[r],
            )
        )

    # every repeat of a (listener, utt_id) answer names the row of the first one
    keyed = rows.select("row", "listener", "utt_id").drop_nulls()
    first = keyed.group_by("listener", "utt_id").agg(pl.col("row").min().alias("first_row"))
    repeats = keyed.join(first, on=["listener", "utt_id"]).filter(pl.col("row") != pl.col("first_row"))
    for r, listener, utt_id, first_row in repeats.sort("row").iter_rows():
        problems.append(
            Problem(
                f"listener {listener!r} answered utt_id {utt_id!r} again (first answer in row {first_row}); "
                "keep one answer per listener and utterance",
                r,
                mapped["listener"],
                utt_id,
            )
        )
    grouped = rows.select("row", "listener", "group").drop_nulls()
    first_group = grouped.group_by("listener").agg(
        pl.col("group").sort_by("row").first().alias("first_group"),
        pl.col("row").min().alias("first_row"),
    )
    moved = grouped.join(first_group, on="listener").filter(pl.col("group") != pl.col("first_group"))
    for r, listener, group, first_group_value, first_row in moved.sort("row").iter_rows():
        problems.append(
            Problem(
                f"listener {listener!r} is in group {group!r} here but {first_group_value!r} in row "
                f"{first_row}; a listener belongs to one group",
                r,
                mapped["group"],
                utt[r],
            )
        )

    if problems:
        problems.sort(key=lambda p: -1 if p.row is None else p.row)
        raise ListenerTableError(problems, source)

    out = rows.select(
        pl.lit(task).alias("task"),
        "listener",
        "group",
        "utt_id",
        "language",
        "true",
        pl.col("response_norm").alias("response"),
        (pl.col("response_norm") == pl.col("true")).alias("correct"),
        (pl.col("group").str.to_lowercase() == pl.col("language").str.to_lowercase()).alias("native"),
        "row",
    ).with_columns(**{name: values for name, values in numbers.items()})
    return conform(out, LISTENER_COLUMNS)


def import_listeners(
    table_path: str | os.PathLike[str],
    manifest: pl.DataFrame,
    settings: ListenerImport = ListenerImport(),
) -> pl.DataFrame:
    """Read a listening-test table (CSV / TSV / Parquet) and validate it against ``manifest``."""
    table = read_listener_table(table_path, settings.columns)
    return validate_listeners(table, manifest, settings, source=table_path)


def write_listeners(df: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a validated listener table as Parquet (atomically)."""
    return write_parquet_atomic(conform(df, LISTENER_COLUMNS), path)


def read_listeners(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read a table written by :func:`write_listeners` (or by ``cltm human import``), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it with `cltm human import`")
    df = pl.read_parquet(path)
    missing = [c for c in LISTENER_COLUMNS if c not in df.columns and c not in ("confidence", "rt")]
    if missing:
        raise ValueError(
            f"{path}: not a listener table (missing column(s) {', '.join(missing)}); "
            "make it with `cltm human import TABLE --map ... --manifest ... --out FILE`"
        )
    return conform(df, LISTENER_COLUMNS)
