"""The corpus manifest: schema (DESIGN §3.1), validation at the boundary, Parquet/CSV/TSV I/O, hashing.

A manifest is a polars DataFrame with one row per utterance. Only ``utt_id``, ``path`` and ``language`` are
required; ``speaker`` / ``gender`` are needed by the tasks that use them; any other column is a task label.

Validation collects *every* problem before raising, so one run tells a person everything to fix. Rows are
named by their 0-based position in the DataFrame (for a CSV/TSV file that is the data line number, header
excluded) together with the row's ``utt_id`` when it has one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cltm.fileio import atomic_write
from cltm.tasks import GENDER_ALIASES, normalize_gender, normalize_genders

__all__ = [
    "COLUMNS",
    "ColumnSpec",
    "GENDER_ALIASES",
    "ManifestError",
    "NUMERIC_COLUMNS",
    "OPTIONAL_COLUMNS",
    "Problem",
    "REQUIRED_COLUMNS",
    "SPLIT_VALUES",
    "STRING_COLUMNS",
    "conform",
    "manifest_hash",
    "normalize_gender",
    "normalize_genders",
    "read_manifest",
    "resolve_paths",
    "validate",
    "write_manifest",
]


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the manifest schema."""

    name: str
    dtype: type[pl.DataType]
    required: bool
    meaning: str


#: The manifest schema, in the column order that ``conform`` puts first.
COLUMNS: dict[str, ColumnSpec] = {
    spec.name: spec
    for spec in (
        ColumnSpec("utt_id", pl.String, True, "unique, stable utterance id"),
        ColumnSpec("path", pl.String, True, "audio file: absolute, or relative to the manifest's directory"),
        ColumnSpec("language", pl.String, True, "language code as the corpus gives it (e.g. 'ca', 'zh-HK')"),
        ColumnSpec("speaker", pl.String, False, "speaker id (Common Voice client_id)"),
        ColumnSpec("gender", pl.String, False, "'female' / 'male' (other values kept)"),
        ColumnSpec("split", pl.String, False, "'train' / 'dev' / 'test'; null when the corpus has none"),
        ColumnSpec("duration", pl.Float64, False, "seconds; filled in by extraction when missing"),
        ColumnSpec("start", pl.Float64, False, "segment start inside a longer file, seconds"),
        ColumnSpec("end", pl.Float64, False, "segment end inside a longer file, seconds"),
    )
}
REQUIRED_COLUMNS: tuple[str, ...] = tuple(name for name, spec in COLUMNS.items() if spec.required)
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(name for name, spec in COLUMNS.items() if not spec.required)
STRING_COLUMNS: tuple[str, ...] = tuple(name for name, spec in COLUMNS.items() if spec.dtype is pl.String)
NUMERIC_COLUMNS: tuple[str, ...] = tuple(name for name, spec in COLUMNS.items() if spec.dtype is pl.Float64)
SPLIT_VALUES: tuple[str, ...] = ("train", "dev", "test")

# Columns that may never be null or blank, and those where blank text is a mistake (null means unknown).
_NON_EMPTY_COLUMNS = REQUIRED_COLUMNS
_NO_BLANK_COLUMNS = ("speaker", "gender", "split")

# How many problem lines the exception message shows; ManifestError.problems always holds all of them.
_MAX_LINES_IN_MESSAGE = 200


@dataclass(frozen=True)
class Problem:
    """One validation problem. ``row`` is the 0-based row index, or None for a whole-frame problem."""

    message: str
    row: int | None = None
    column: str | None = None
    utt_id: str | None = None

    def __str__(self) -> str:
        if self.row is None:
            return self.message
        where = f"row {self.row}"
        if self.utt_id is not None:
            where += f" (utt_id {self.utt_id!r})"
        return f"{where}: {self.message}"


class ManifestError(ValueError):
    """A manifest failed validation. ``problems`` lists every problem found, each with its row."""

    def __init__(self, problems: list[Problem], source: str | os.PathLike[str] | None = None):
        self.problems = list(problems)
        self.source = None if source is None else str(source)
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.source}: " if self.source else ""
        n = len(self.problems)
        head = (
            f"{where}invalid manifest, {n} problem{'s' if n != 1 else ''} "
            "(rows count from 0 in data order, header excluded):"
        )
        lines = [f"  - {p}" for p in self.problems[:_MAX_LINES_IN_MESSAGE]]
        if n > _MAX_LINES_IN_MESSAGE:
            rest = n - _MAX_LINES_IN_MESSAGE
            lines.append(f"  ... and {rest} more (all of them are in ManifestError.problems)")
        return "\n".join([head, *lines])


# ----------------------------------------------------------------------------------------------------------
# Gender normalisation
# ----------------------------------------------------------------------------------------------------------

# The gender vocabularies are task facts: they live in cltm.tasks (re-exported here for old imports).


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _as_polars(df: Any) -> pl.DataFrame:
    if isinstance(df, pl.DataFrame):
        return df
    if type(df).__module__.startswith("pandas"):
        return pl.from_pandas(df)
    raise TypeError(f"a manifest must be a polars (or pandas) DataFrame, got {type(df).__name__}")


class _RowIds:
    """``ids[row]`` -> that row's utt_id as text (or None); read only for rows that have a problem."""

    def __init__(self, df: pl.DataFrame):
        usable = "utt_id" in df.columns and (
            df.schema["utt_id"] in (pl.String, pl.Categorical) or df.schema["utt_id"].is_integer()
        )
        self._values = df["utt_id"] if usable else None

    def __getitem__(self, row: int) -> str | None:
        if self._values is None:
            return None
        value = self._values[row]
        return None if value is None else str(value)


def _row_problems(rows: Iterable[int], message: str, column: str, ids: _RowIds) -> list[Problem]:
    return [Problem(message, row=int(r), column=column, utt_id=ids[r]) for r in rows]


def _indices(mask: pl.Series) -> list[int]:
    return mask.fill_null(False).arg_true().to_list()


def _numeric_values(df: pl.DataFrame, column: str, ids: _RowIds) -> tuple[pl.Series | None, list[Problem]]:
    """The column as Float64 plus problems for values that are not numbers (text that does not parse)."""
    series = df[column]
    dtype = series.dtype
    if dtype.is_numeric():
        return series.cast(pl.Float64), []
    if dtype == pl.Null:
        return series.cast(pl.Float64), []
    if dtype == pl.String:
        parsed = series.str.strip_chars().cast(pl.Float64, strict=False)
        bad = series.is_not_null() & (series.str.strip_chars().str.len_chars() > 0) & parsed.is_null()
        problems = [
            Problem(f"{column} {series[r]!r} is not a number (seconds)", row=r, column=column, utt_id=ids[r])
            for r in _indices(bad)
        ]
        return parsed, problems
    return None, [Problem(f"column {column!r} has type {dtype}, expected numbers (seconds)", column=column)]


def _problems(df: pl.DataFrame) -> list[Problem]:
    problems: list[Problem] = []
    ids = _RowIds(df)

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.append(
            Problem(
                f"missing required column(s) {', '.join(missing)}; the manifest has: "
                f"{', '.join(df.columns) if df.columns else '(no columns)'}"
            )
        )
    if len(set(df.columns)) != len(df.columns):
        problems.append(Problem("duplicate column names"))

    # Text columns: right type, no null/blank required values, no blank optional values.
    text_ok: dict[str, pl.Series] = {}
    for column in STRING_COLUMNS:
        if column not in df.columns:
            continue
        dtype = df.schema[column]
        if dtype == pl.Null:
            text_ok[column] = pl.Series(column, [None] * df.height, dtype=pl.String)
        elif dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(dtype, pl.Enum):
            text_ok[column] = df[column].cast(pl.String)
        elif dtype.is_integer() and column in ("utt_id", "speaker"):
            # integer ids are common in CSVs; conform() turns them into text losslessly
            text_ok[column] = df[column].cast(pl.String)
        else:
            problems.append(Problem(f"column {column!r} has type {dtype}, expected text", column=column))
    for column in _NON_EMPTY_COLUMNS:
        if column in text_ok:
            values = text_ok[column]
            problems += _row_problems(_indices(values.is_null()), f"{column} is missing (null)", column, ids)
            blank = values.is_not_null() & (values.str.strip_chars().str.len_chars() == 0)
            problems += _row_problems(_indices(blank), f"{column} is empty", column, ids)
    for column in _NO_BLANK_COLUMNS:
        if column in text_ok:
            values = text_ok[column]
            blank = values.is_not_null() & (values.str.strip_chars().str.len_chars() == 0)
            message = f"{column} is blank text; use null for unknown"
            problems += _row_problems(_indices(blank), message, column, ids)

    # distinct 64-bit hashes prove distinct ids: only a collision or a real duplicate pays for the exact check
    if "utt_id" in text_ok and text_ok["utt_id"].drop_nulls().hash().is_duplicated().any():
        utt = text_ok["utt_id"]
        rows_by_id = (
            pl.DataFrame({"utt_id": utt, "row": pl.int_range(df.height, eager=True)})
            .filter(pl.col("utt_id").is_not_null() & pl.col("utt_id").is_duplicated())
            .group_by("utt_id", maintain_order=True)
            .agg("row")
        )
        for utt_id, rows in rows_by_id.iter_rows():
            others = ", ".join(str(r) for r in rows[1:])
            problems.append(
                Problem(
                    f"duplicate utt_id, also in row(s) {others}", row=rows[0], column="utt_id", utt_id=utt_id
                )
            )

    if "split" in text_ok:
        split = text_ok["split"]
        bad = split.is_not_null() & (split.str.strip_chars().str.len_chars() > 0) & ~split.is_in(SPLIT_VALUES)
        for r in _indices(bad):
            problems.append(
                Problem(
                    f"split {split[r]!r} is not one of {', '.join(SPLIT_VALUES)} (or null)",
                    row=r,
                    column="split",
                    utt_id=ids[r],
                )
            )

    numeric: dict[str, pl.Series] = {}
    for column in NUMERIC_COLUMNS:
        if column not in df.columns:
            continue
        values, found = _numeric_values(df, column, ids)
        problems += found
        if values is None:
            continue
        numeric[column] = values
        not_finite = values.is_not_null() & ~values.is_finite()
        problems += _row_problems(_indices(not_finite), f"{column} is not finite", column, ids)
        negative = values.is_not_null() & values.is_finite() & (values < 0)
        for r in _indices(negative):
            problems.append(Problem(f"{column} {values[r]} is negative", row=r, column=column, utt_id=ids[r]))
    if "duration" in numeric:
        zero = numeric["duration"] == 0
        problems += _row_problems(_indices(zero), "duration is 0 seconds", "duration", ids)
    if "start" in numeric and "end" in numeric:
        start, end = numeric["start"], numeric["end"]
        bad = start.is_not_null() & end.is_not_null() & (start >= end)
        for r in _indices(bad):
            problems.append(
                Problem(f"start {start[r]} is not before end {end[r]}", row=r, column="start", utt_id=ids[r])
            )

    problems.sort(key=lambda p: -1 if p.row is None else p.row)
    return problems


def validate(df: pl.DataFrame, *, source: str | os.PathLike[str] | None = None) -> pl.DataFrame:
    """Check a manifest against the schema; raise :class:`ManifestError` listing every problem with its row.

    Checks: required columns present; schema columns of the right kind (text / numbers); utt_id, path and
    language neither null nor empty; utt_id unique (each duplicate names all the rows that share it);
    speaker/gender/split not blank text; split in ``train``/``dev``/``test`` or null; duration, start and end
    numeric, finite and non-negative, duration non-zero, start before end. Returns ``df`` unchanged, so it
    chains. ``source`` (a file name) is only used in the message.
    """
    df = _as_polars(df)
    problems = _problems(df)
    if problems:
        raise ManifestError(problems, source=source)
    return df


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Cast schema columns to their schema types and put them first, in schema order (other columns follow).

    Text ids given as integers become text, numbers given as text become Float64. Call on a frame that
    validates; it does not check anything itself.
    """
    df = _as_polars(df)
    casts = []
    for name, spec in COLUMNS.items():
        if name not in df.columns:
            continue
        column = pl.col(name)
        if spec.dtype is pl.Float64 and df.schema[name] == pl.String:
            column = column.str.strip_chars()
        casts.append(column.cast(spec.dtype, strict=False).alias(name))
    df = df.with_columns(casts) if casts else df
    ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df.select(ordered)


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------

_CSV_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


def _is_remote(path: str) -> bool:
    return "://" in path


def resolve_paths(df: pl.DataFrame, base_dir: str | os.PathLike[str]) -> pl.DataFrame:
    """Make relative ``path`` values absolute against ``base_dir``; absolute paths and URLs stay as is.

    Plain relative paths are joined in one vectorised step; only the rare ones that need normalising
    (``./``, ``../``, ``//``, ``~``) or look like Windows paths go through ``os.path`` one by one.
    """
    base = os.path.abspath(os.fspath(base_dir))
    path = pl.col("path")
    relative = (
        path.is_not_null()
        & (path.str.strip_chars() != "")
        & ~path.str.starts_with("/")
        & ~path.str.contains("://", literal=True)
    )
    if not df.select(relative.any()).item():
        return df  # the common case (importers write absolute paths)
    unusual = relative & path.str.contains(r"(^|[/\\])\.\.?([/\\]|$)|//|/$|^~|\\|^[A-Za-z]:")
    joined = df.with_columns(
        pl.when(relative).then(pl.lit(base + os.sep) + path).otherwise(path).alias("path")
    )
    rows = df.select(pl.arg_where(unusual)).to_series().to_list()
    if not rows:
        return joined
    originals = df["path"].gather(rows).to_list()
    fixed = [
        p if os.path.isabs(p) else os.path.normpath(os.path.join(base, os.path.expanduser(p)))
        for p in originals
    ]
    return joined.with_columns(joined["path"].scatter(rows, fixed))


def read_table(path: str | os.PathLike[str], *, string_columns: Iterable[str] = ()) -> pl.DataFrame:
    """Read a Parquet / CSV / TSV table (by extension); ``string_columns`` are read as text, not inferred."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return pl.read_parquet(path)
    if suffix in _CSV_SEPARATORS:
        separator = _CSV_SEPARATORS[suffix]
        header = pl.read_csv(path, separator=separator, n_rows=0, quote_char='"')
        wanted = set(string_columns) | set(STRING_COLUMNS)
        overrides = {c: pl.String for c in header.columns if c in wanted}
        # keep the whole file in memory typed: infer from every row, so a late non-number is not an error
        return pl.read_csv(path, separator=separator, schema_overrides=overrides, infer_schema_length=None)
    raise ValueError(
        f"{path}: unknown table format {suffix!r}; use .parquet, .csv or .tsv "
        f"(known: {', '.join(sorted(_PARQUET_SUFFIXES | set(_CSV_SEPARATORS)))})"
    )


def read_manifest(path: str | os.PathLike[str], *, resolve: bool = True) -> pl.DataFrame:
    """Read and validate a manifest (Parquet, or CSV/TSV by extension).

    Relative ``path`` values are resolved against the manifest file's directory (``resolve=False`` keeps them
    as written). Raises :class:`ManifestError` naming the file and every bad row.
    """
    path = Path(path)
    df = read_table(path)
    validate(df, source=path)
    df = conform(df)
    if resolve:
        df = resolve_paths(df, path.parent)
    return df


def write_manifest(df: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate and write a manifest: Parquet (``.parquet``/``.pq``, the default) or CSV/TSV by extension.

    Paths are written as given (make them relative to the output directory yourself if the corpus moves with
    the manifest). The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    df = conform(validate(df, source=path))
    suffix = path.suffix.lower()
    if suffix not in _PARQUET_SUFFIXES and suffix not in _CSV_SEPARATORS:
        raise ValueError(f"{path}: unknown manifest format {suffix!r}; use .parquet, .csv or .tsv")
    if suffix in _PARQUET_SUFFIXES:
        return atomic_write(path, df.write_parquet)
    return atomic_write(path, lambda tmp: df.write_csv(tmp, separator=_CSV_SEPARATORS[suffix]))


# ----------------------------------------------------------------------------------------------------------
# Hash
# ----------------------------------------------------------------------------------------------------------

#: The columns that define what gets extracted and in which order (the cache order).
HASH_COLUMNS: tuple[str, ...] = ("utt_id", "path", "start", "end")
_HASH_VERSION = b"cltm-manifest-hash-v1"
_NULL = "\x01"  # stands for a null value; cannot collide with the separator


def manifest_hash(df: pl.DataFrame) -> str:
    """SHA-256 (hex) of utt_id, path, start, end in row order; stable across processes and library versions.

    A missing start/end column hashes like an all-null one. Numbers are hashed through ``float.hex`` so the
    result does not depend on how a library formats floats. Paths are hashed as they are in ``df`` (after
    :func:`read_manifest` that is the resolved absolute path).
    """
    df = _as_polars(df)
    digest = hashlib.sha256(_HASH_VERSION)
    digest.update(str(df.height).encode())
    for column in HASH_COLUMNS:
        digest.update(b"\x00" + column.encode() + b"\x00")
        if column not in df.columns:
            values: list[Any] = [None] * df.height
        else:
            values = df[column].to_list()
        if column in NUMERIC_COLUMNS:
            text = [_NULL if v is None else float(v).hex() for v in values]
        else:
            text = [_NULL if v is None else str(v) for v in values]
        digest.update("\x00".join(text).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
