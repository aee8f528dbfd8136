"""Importers: turn a corpus as it is distributed into a validated manifest (DESIGN §3.1).

Each importer is a plain function ``(source, **options) -> pl.DataFrame`` registered in :data:`IMPORTERS`
under a short name (the ``cltm corpus import <name>`` sub-command). They all return absolute audio paths, so
the manifest can be written anywhere, and they validate before returning, so a bad corpus fails here with a
message naming the file and row rather than hours later inside extraction.

Built in: ``commonvoice`` (a Common Voice release directory), ``table`` (any CSV/TSV/Parquet with a column
mapping), ``folder`` (``ROOT/<language>/<speaker>/*.wav``), and ``lhotse`` / ``hf`` when those packages are
installed (``pip install 'cltm[lhotse]'`` / ``'cltm[datasets]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from cltm.corpus.manifest import (
    COLUMNS,
    SPLIT_VALUES,
    conform,
    normalize_genders,
    read_table,
    resolve_paths,
    validate,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "COMMONVOICE_SPLITS",
    "CorpusImportError",
    "IMPORTERS",
    "add_durations",
    "find_commonvoice_locales",
    "import_commonvoice",
    "import_corpus",
    "import_folder",
    "import_hf_dataset",
    "import_lhotse",
    "import_table",
    "missing_files",
    "parse_mapping",
    "register_importer",
]

Importer = Callable[..., pl.DataFrame]

#: name -> importer function; ``register_importer`` adds to it.
IMPORTERS: dict[str, Importer] = {}


class CorpusImportError(ValueError):
    """A corpus that cannot be imported as asked; the message says what was expected and what was found."""


def register_importer(name: str) -> Callable[[Importer], Importer]:
    """Decorator: make an importer available as ``IMPORTERS[name]`` (and ``cltm corpus import name``)."""

    def add(function: Importer) -> Importer:
        IMPORTERS[name] = function
        return function

    return add


def import_corpus(kind: str, source: str | os.PathLike[str], **options: Any) -> pl.DataFrame:
    """Run the importer registered as ``kind`` on ``source``."""
    if kind not in IMPORTERS:
        raise CorpusImportError(f"unknown importer {kind!r}; known: {', '.join(sorted(IMPORTERS))}")
    return IMPORTERS[kind](source, **options)


def _finish(df: pl.DataFrame, source: str | os.PathLike[str]) -> pl.DataFrame:
    """Normalise gender, check the result against the schema, and put the schema columns first."""
    if "gender" in df.columns:
        df = df.with_columns(normalize_genders(df["gender"]))
    validate(df, source=source)
    return conform(df)


# ----------------------------------------------------------------------------------------------------------
# Common Voice
# ----------------------------------------------------------------------------------------------------------

COMMONVOICE_SPLITS: tuple[str, ...] = ("train", "dev", "test")
_COMMONVOICE_TSVS = (*COMMONVOICE_SPLITS, "validated")
_COMMONVOICE_REQUIRED = ("client_id", "path")
# Columns Common Voice releases have carried; kept as label columns (age and accents are task labels).
_COMMONVOICE_INTEGERS = ("up_votes", "down_votes")


def _is_locale_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f"{name}.tsv").is_file() for name in _COMMONVOICE_TSVS)


def find_commonvoice_locales(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Locale name -> locale directory under a Common Voice ``root``.

    ``root`` is either a release directory holding one sub-directory per locale (``root/ca/train.tsv`` …)
    or a single locale directory (``root/train.tsv``), whose name is then the locale.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusImportError(
            f"{root}: not a directory (expected a Common Voice release or locale directory)"
        )
    if _is_locale_dir(root):
        return {Path(os.path.abspath(root)).name: root}
    return {child.name: child for child in sorted(root.iterdir()) if _is_locale_dir(child)}


def _read_commonvoice_tsv(path: Path) -> pl.DataFrame:
    # Sentences contain quote characters that are not CSV quoting: read every field as raw text.
    try:
        df = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise CorpusImportError(f"{path}: cannot read as a TSV ({exc})") from exc
    missing = [c for c in _COMMONVOICE_REQUIRED if c not in df.columns]
    if missing:
        raise CorpusImportError(
            f"{path}: not a Common Voice TSV, missing column(s) {', '.join(missing)}; "
            f"it has: {', '.join(df.columns) or '(no columns)'}"
        )
    return df


def _commonvoice_rows(tsv: Path, locale: str, locale_dir: Path, split: str | None) -> pl.DataFrame:
    df = _read_commonvoice_tsv(tsv)
    # abspath, not resolve(): keep the user's symlinked layout in the paths
    clips = os.path.join(os.path.abspath(locale_dir), "clips")
    df = df.rename({"accent": "accents"}) if "accent" in df.columns and "accents" not in df.columns else df
    language = pl.lit(locale)
    if "locale" in df.columns:
        language = pl.col("locale").fill_null(language)
    columns = [
        # the clip name without its extension: unique within a release (it already carries the locale)
        pl.col("path").str.replace(r"\.[^./]*$", "").alias("utt_id"),
        (pl.lit(clips + os.sep) + pl.col("path")).alias("path"),
        language.alias("language"),
        pl.col("client_id").alias("speaker"),
        (pl.col("gender") if "gender" in df.columns else pl.lit(None, dtype=pl.String)).alias("gender"),
        pl.lit(split, dtype=pl.String).alias("split"),
    ]
    produced = {"utt_id", "path", "language", "speaker", "gender", "split"}
    rest = [c for c in df.columns if c not in produced and c not in ("client_id", "locale")]
    integers = [pl.col(c).cast(pl.Int64, strict=False) for c in rest if c in _COMMONVOICE_INTEGERS]
    return df.select(*columns, *rest).with_columns(integers)


@register_importer("commonvoice")
def import_commonvoice(
    root: str | os.PathLike[str],
    *,
    locales: Sequence[str] | None = None,
    splits: Sequence[str] = COMMONVOICE_SPLITS,
    include_validated: bool = False,
) -> pl.DataFrame:
    """Import a Common Voice release: each locale's ``train/dev/test.tsv`` (and optionally ``validated.tsv``).

    ``client_id`` becomes ``speaker``; ``path`` becomes ``<locale dir>/clips/<path>``; ``locale`` (or the
    directory name) becomes ``language``; gender is normalised over the old and new vocabularies; ``split``
    comes from the file name (``dev`` stays ``dev``); ``utt_id`` is the clip name without its extension.
    Other columns (``sentence``, ``age``, ``accents``, votes, …) are kept as label columns; ``duration``
    comes from the locale's ``clip_durations.tsv`` when the release has one (v14 and later).
    ``include_validated`` adds the rows of ``validated.tsv`` that are in none of the split files, with a null
    split (the sampling code can split them speaker-disjointly); ``"validated"`` among ``splits`` means the
    same, so ``splits=["validated"]`` imports a locale shared as only ``validated.tsv`` + ``clips/``.
    ``locales=None`` imports every locale found.
    """
    root = Path(root)
    # a comma-separated string ("ca,es") is accepted too: iterating it character by character would be a trap
    if isinstance(locales, str):
        locales = [loc.strip() for loc in locales.split(",") if loc.strip()]
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    if "validated" in splits:  # a split source like the others; its rows get an empty split
        splits = [s for s in splits if s != "validated"]
        include_validated = True
    found = find_commonvoice_locales(root)
    if not found:
        raise CorpusImportError(
            f"{root}: no Common Voice locale found; expected {root}/<locale>/train.tsv (a release directory) "
            f"or {root}/train.tsv (one locale's directory)"
        )
    if locales:
        unknown = [loc for loc in locales if loc not in found]
        if unknown:
            raise CorpusImportError(
                f"{root}: unknown locale(s) {', '.join(unknown)}; locales found: {', '.join(sorted(found))}"
            )
        chosen = {loc: found[loc] for loc in locales}
    else:
        chosen = found
    if not splits and not include_validated:
        raise CorpusImportError("nothing to import: give at least one split (train, dev, test, validated)")
    bad_splits = [s for s in splits if s not in COMMONVOICE_SPLITS]
    if bad_splits:
        raise CorpusImportError(
            f"unknown split(s) {', '.join(bad_splits)}; use {', '.join(_COMMONVOICE_TSVS)}"
        )

    wanted = [*splits, "validated"] if include_validated else list(splits)
    missing = [
        str(d / f"{name}.tsv")
        for d in chosen.values()
        for name in wanted
        if not (d / f"{name}.tsv").is_file()
    ]
    if missing:
        only_validated = [
            loc for loc, d in chosen.items() if (d / "validated.tsv").is_file() and "validated" not in wanted
        ]
        fix = (
            f"; {', '.join(only_validated)}: validated.tsv is there: import it with "
            "--splits validated (its rows get an empty split, which the CLTM sampling splits "
            "speaker-disjointly)"
            if only_validated
            else ""
        )
        raise CorpusImportError("missing Common Voice TSV file(s): " + ", ".join(missing) + fix)

    frames = []
    for locale, locale_dir in chosen.items():
        parts = [_commonvoice_rows(locale_dir / f"{s}.tsv", locale, locale_dir, s) for s in splits]
        if include_validated:
            validated = _commonvoice_rows(locale_dir / "validated.tsv", locale, locale_dir, None)
            in_splits = pl.concat([p.select("utt_id") for p in parts]) if parts else pl.DataFrame()
            if in_splits.height:
                validated = validated.join(in_splits, on="utt_id", how="anti")
            parts.append(validated)
        locale_rows = pl.concat(parts, how="diagonal_relaxed")
        frames.append(_with_clip_durations(locale_rows, locale_dir))
    df = pl.concat(frames, how="diagonal_relaxed")
    return _finish(df, root)


def _with_clip_durations(df: pl.DataFrame, locale_dir: Path) -> pl.DataFrame:
    """Add ``duration`` from ``clip_durations.tsv`` (releases since v14: clip, duration[ms]) when present."""
    table = locale_dir / "clip_durations.tsv"
    if not table.is_file() or "duration" in df.columns:
        return df
    durations = pl.read_csv(table, separator="\t", quote_char=None, infer_schema=False)
    ms_column = next((c for c in durations.columns if c.startswith("duration")), None)
    if "clip" not in durations.columns or ms_column is None:
        return df  # an unknown layout is not worth failing the import for: extraction measures durations
    durations = durations.select(
        pl.col("clip").str.replace(r"\.[^./]*$", "").alias("utt_id"),
        (pl.col(ms_column).cast(pl.Float64, strict=False) / 1000.0).alias("duration"),
    ).unique("utt_id", keep="first")
    # a zero or unparsable entry stays unknown rather than failing validation
    durations = durations.with_columns(pl.when(pl.col("duration") > 0).then(pl.col("duration")))
    return df.join(durations, on="utt_id", how="left", maintain_order="left")


# ----------------------------------------------------------------------------------------------------------
# Any table with a column mapping
# ----------------------------------------------------------------------------------------------------------


def parse_mapping(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"speaker=client_id,path=file"`` -> ``{"speaker": "client_id", "path": "file"}`` (manifest=table)."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, sep, source = (s.strip() for s in item.partition("="))
        if not sep or not target or not source:
            raise CorpusImportError(
                f"bad mapping item {item!r}; write MANIFEST_COLUMN=TABLE_COLUMN, e.g. speaker=client_id"
            )
        if target in mapping:
            raise CorpusImportError(f"manifest column {target!r} is mapped twice")
        mapping[target] = source
    return mapping


@register_importer("table")
def import_table(
    path: str | os.PathLike[str],
    *,
    mapping: Mapping[str, str] | str | None = None,
    language: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Import any CSV/TSV/Parquet table, renaming columns with ``mapping`` (manifest column -> table column).

    Unmapped columns are kept under their own names (a table column named like a mapped manifest column is
    replaced by the mapped one). ``language`` is a constant for a table without a language column. Without
    ``utt_id`` the audio file name without extension is used. Relative audio paths are resolved against
    ``base_dir`` (default: the table's directory).
    """
    path = Path(path)
    mapping = parse_mapping(mapping)
    text_targets = {t for t in mapping if t in COLUMNS and COLUMNS[t].dtype is pl.String}
    try:
        table = read_table(path, string_columns=[mapping[t] for t in text_targets])
    except FileNotFoundError as exc:
        raise CorpusImportError(str(exc)) from exc
    absent = {t: s for t, s in mapping.items() if s not in table.columns}
    if absent:
        listed = ", ".join(f"{t}={s}" for t, s in absent.items())
        raise CorpusImportError(
            f"{path}: mapping {listed} names column(s) the table does not have; "
            f"available columns: {', '.join(table.columns)}"
        )
    kept = [c for c in table.columns if c not in mapping and c not in mapping.values()]
    df = table.select(*(pl.col(s).alias(t) for t, s in mapping.items()), *kept)

    if language is not None:
        if "language" in df.columns:
            raise CorpusImportError(
                f"{path}: the table already has a language column; drop --language, or map the column away"
            )
        df = df.with_columns(language=pl.lit(language))
    if "path" not in df.columns:
        raise CorpusImportError(
            f"{path}: no audio path column; map one with path=COLUMN (available: {', '.join(table.columns)})"
        )
    if "language" not in df.columns:
        raise CorpusImportError(
            f"{path}: no language column; map one with language=COLUMN or give a constant --language "
            f"(available: {', '.join(table.columns)})"
        )
    df = df.with_columns(pl.col("path").cast(pl.String))
    if "utt_id" not in df.columns:
        stem = pl.col("path").str.replace(r"^.*[/\\]", "").str.replace(r"\.[^.]*$", "")
        df = df.with_columns(stem.alias("utt_id"))
    base = Path(base_dir) if base_dir is not None else path.parent
    # validate before resolving so that an empty path is reported as empty, not as the base directory
    return _finish(resolve_paths(_finish(df, path), base), path)


# ----------------------------------------------------------------------------------------------------------
# Folder tree
# ----------------------------------------------------------------------------------------------------------

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def _read_gender_table(genders: str | os.PathLike[str] | pl.DataFrame | Mapping[str, str]) -> pl.DataFrame:
    if isinstance(genders, Mapping):
        return pl.DataFrame(
            {"speaker": list(genders), "gender": list(genders.values())},
            schema=[("speaker", pl.String), ("gender", pl.String)],
        )
    table = genders if isinstance(genders, pl.DataFrame) else read_table(genders, string_columns=["speaker"])
    missing = [c for c in ("speaker", "gender") if c not in table.columns]
    if missing:
        where = "" if isinstance(genders, pl.DataFrame) else f"{genders}: "
        raise CorpusImportError(
            f"{where}the gender table needs columns speaker and gender (and optionally language); "
            f"missing {', '.join(missing)}; it has: {', '.join(table.columns)}"
        )
    keys = ["language", "speaker"] if "language" in table.columns else ["speaker"]
    table = table.select(*(pl.col(k).cast(pl.String) for k in keys), pl.col("gender").cast(pl.String))
    duplicated = table.filter(pl.struct(keys).is_duplicated())
    if duplicated.height:
        raise CorpusImportError(
            f"the gender table lists {' / '.join(keys)} more than once: "
            + ", ".join(sorted({" / ".join(map(str, r)) for r in duplicated.select(keys).iter_rows()}))
        )
    return table


@register_importer("folder")
def import_folder(
    root: str | os.PathLike[str],
    *,
    genders: str | os.PathLike[str] | pl.DataFrame | Mapping[str, str] | None = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
) -> pl.DataFrame:
    """Import a folder tree ``ROOT/<language>/<speaker>/**/<file>`` of audio files.

    The first directory level is the language, the second the speaker; files may sit deeper (chapters).
    ``utt_id`` is the file's path under ROOT without extension (unique by construction). ``genders`` is an
    optional table (file, DataFrame or dict) with columns ``speaker``, ``gender`` and optionally
    ``language``; speakers it does not list get a null gender (all null without a table). Rows come sorted
    by ``utt_id``, so the result does not depend on the file system's listing order.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusImportError(f"{root}: not a directory (expected ROOT/<language>/<speaker>/<audio files>)")
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    rows = []
    for language_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for speaker_dir in sorted(
            p for p in language_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for dirpath, dirnames, filenames in os.walk(speaker_dir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if os.path.splitext(name)[1].lower() in suffixes and not name.startswith("."):
                        file = Path(dirpath) / name
                        relative = file.relative_to(root).with_suffix("")
                        rows.append(
                            (relative.as_posix(), os.path.abspath(file), language_dir.name, speaker_dir.name)
                        )
    if not rows:
        raise CorpusImportError(
            f"{root}: no audio files ({', '.join(sorted(suffixes))}) found at ROOT/<language>/<speaker>/…"
        )
    df = pl.DataFrame(rows, schema=["utt_id", "path", "language", "speaker"], orient="row").sort("utt_id")
    if genders is None:
        df = df.with_columns(gender=pl.lit(None, dtype=pl.String))
    else:
        table = _read_gender_table(genders)
        keys = [c for c in ("language", "speaker") if c in table.columns]
        df = df.join(table, on=keys, how="left", maintain_order="left")
    return _finish(df, root)


# ----------------------------------------------------------------------------------------------------------
# Optional: lhotse and Hugging Face datasets
# ----------------------------------------------------------------------------------------------------------


def _require(module: str, extra: str) -> Any:
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise CorpusImportError(f"this importer needs the {module!r} package: pip install 'cltm[{extra}]'")
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # installed, but one of its own dependencies is missing or broken
        raise CorpusImportError(f"{module!r} is installed but cannot be imported: {exc}") from exc


@register_importer("lhotse")
def import_lhotse(
    recordings: str | os.PathLike[str],
    *,
    supervisions: str | os.PathLike[str] | None = None,
    language: str | None = None,
) -> pl.DataFrame:
    """Import lhotse manifests: a RecordingSet and (optionally) a SupervisionSet (needs ``cltm[lhotse]``).

    With supervisions, each supervision segment is one utterance (``start``/``end`` inside the recording,
    speaker, gender and language from the supervision; ``custom`` fields become columns). Without, each
    recording is one utterance. ``language`` fills in where lhotse has none.
    """
    lhotse = _require("lhotse", "lhotse")
    recording_set = lhotse.load_manifest(recordings)
    paths = {}
    for recording in recording_set:
        files = [s.source for s in recording.sources if s.type == "file"]
        if not files:
            raise CorpusImportError(
                f"{recordings}: recording {recording.id} has no file source (URL/command)"
            )
        paths[recording.id] = (files[0], recording.duration)
    rows: list[dict[str, Any]] = []
    if supervisions is None:
        for rec_id, (path, duration) in paths.items():
            rows.append({"utt_id": rec_id, "path": path, "language": language, "duration": duration})
    else:
        for sup in lhotse.load_manifest(supervisions):
            if sup.recording_id not in paths:
                raise CorpusImportError(
                    f"{supervisions}: supervision {sup.id} names unknown recording {sup.recording_id}"
                )
            path, _ = paths[sup.recording_id]
            row = {
                "utt_id": sup.id,
                "path": path,
                "language": sup.language or language,
                "speaker": sup.speaker,
                "gender": sup.gender,
                "duration": sup.duration,
                "start": sup.start,
                "end": sup.start + sup.duration,
                "text": sup.text,
            }
            row.update(sup.custom or {})
            rows.append(row)
    base = Path(recordings).parent
    return _finish(resolve_paths(pl.DataFrame(rows, infer_schema_length=None), base), recordings)


def _audio_paths(audio: pl.Series, audio_dir: Path | None, split_name: str | None, source: str) -> pl.Series:
    """File paths for a ``datasets`` Audio column read with ``decode=False`` ({path, bytes} structs).

    A local file at ``path`` is used as it is. Audio embedded as bytes (what ``save_to_disk`` and Hub
    Parquet files hold; their ``path`` is then only the original file name) is written to ``audio_dir`` once,
    under a name that keeps the row order and the original extension (the decoders sniff the format anyway).
    """
    paths = audio.struct.field("path").to_list()
    data = audio.struct.field("bytes").to_list() if "bytes" in audio.struct.fields else [None] * len(paths)
    out: list[str | None] = []
    embedded = [
        i for i, (p, b) in enumerate(zip(paths, data, strict=True)) if b and not (p and Path(p).is_file())
    ]
    if embedded and audio_dir is None:
        i = embedded[0]
        raise CorpusImportError(
            f"{source}: {len(embedded)} row(s) hold their audio as embedded bytes, not as files "
            f"(row {i}: {paths[i]!r}); pass audio_dir (CLI: --audio-dir DIR) to write them out as files"
        )
    folder = (audio_dir / (split_name or "all")) if audio_dir is not None else None
    todo = set(embedded)
    for i, (path, blob) in enumerate(zip(paths, data, strict=True)):
        if i not in todo:
            out.append(path)
            continue
        name = Path(path).name if path else "audio"
        target = folder / f"{i:07d}_{name}"
        if not (target.is_file() and target.stat().st_size == len(blob)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
        out.append(str(target))
    return pl.Series(audio.name, out, dtype=pl.String)


@register_importer("hf")
def import_hf_dataset(
    name_or_path: Any,
    *,
    mapping: Mapping[str, str] | str | None = None,
    language: str | None = None,
    split: str | None = None,
    config: str | None = None,
    audio_dir: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Import a Hugging Face ``datasets`` dataset (needs ``cltm[datasets]``).

    ``name_or_path``: a directory written by ``save_to_disk``, a local dataset repository (e.g. a Hub repo
    downloaded with ``hf download``: Parquet files under ``data/``), a Hub dataset name (``load_dataset``;
    offline only when cached), or a ``Dataset`` / ``DatasetDict`` object. The audio column (the first
    ``Audio`` feature; the manifest's ``path`` unless ``mapping`` names another) becomes file paths: paths
    to local files are kept; audio embedded as bytes (``save_to_disk`` output, Hub Parquet) is written
    once to ``audio_dir`` (required then; re-imports reuse the files). ``mapping`` renames columns as for
    :func:`import_table`. ``split`` picks one split of a DatasetDict and also fills the manifest's ``split``
    column when it is train/dev/test (``validation`` becomes ``dev``).
    """
    datasets = _require("datasets", "datasets")
    if isinstance(name_or_path, datasets.Dataset | datasets.DatasetDict):
        loaded, label = name_or_path, type(name_or_path).__name__
    else:
        source = Path(name_or_path)
        label = str(name_or_path)
        saved = (source / "dataset_dict.json").is_file() or (source / "state.json").is_file()
        try:
            # save_to_disk output; anything else (a Hub name, a downloaded Hub repo, a folder of Parquet/CSV
            # files) goes through load_dataset, as `datasets` itself would
            loaded = (
                datasets.load_from_disk(str(source)) if saved else datasets.load_dataset(str(source), config)
            )
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise CorpusImportError(
                f"{label}: could not load it as a dataset ({type(err).__name__}: {err}). Give a directory "
                "written by save_to_disk, a local dataset repository (e.g. Parquet files under data/), or a "
                "Hub dataset name (needs network access or the datasets cache)"
            ) from err
    audio_folder = Path(audio_dir) if audio_dir is not None else None
    if isinstance(loaded, datasets.DatasetDict):
        names = [split] if split else list(loaded)
        unknown = [n for n in names if n not in loaded]
        if unknown:
            raise CorpusImportError(f"{label}: no split {unknown[0]!r}; splits: {', '.join(loaded)}")
        parts = [(n, loaded[n]) for n in names]
    else:
        parts = [(split, loaded)]
    frames = []
    audio_column = None
    for split_name, dataset in parts:
        audio_columns = [c for c, f in dataset.features.items() if type(f).__name__ == "Audio"]
        if audio_columns:
            audio_column = audio_column or audio_columns[0]
            dataset = dataset.cast_column(audio_columns[0], datasets.Audio(decode=False))
        frame = pl.from_arrow(
            dataset.with_format("arrow")[:]
        )  # [:] honours an indices mapping (select/shuffle)
        if audio_columns and frame.schema[audio_columns[0]] == pl.Struct:
            frame = frame.with_columns(_audio_paths(frame[audio_columns[0]], audio_folder, split_name, label))
        manifest_split = {"validation": "dev"}.get(split_name or "", split_name)
        if manifest_split in SPLIT_VALUES and "split" not in frame.columns:
            frame = frame.with_columns(split=pl.lit(manifest_split))
        frames.append(frame)
    table = pl.concat(frames, how="diagonal_relaxed")
    mapping = dict(parse_mapping(mapping))
    if "path" not in mapping and "path" not in table.columns and audio_column is not None:
        mapping["path"] = audio_column  # the Audio feature holds the files unless the mapping says otherwise
    absent = {t: s for t, s in mapping.items() if s not in table.columns}
    if absent:
        raise CorpusImportError(
            f"{label}: mapping names column(s) {', '.join(absent.values())} not in the dataset; "
            f"available: {', '.join(table.columns)}"
        )
    kept = [c for c in table.columns if c not in mapping and c not in mapping.values()]
    df = table.select(*(pl.col(s).alias(t) for t, s in mapping.items()), *kept)
    if language is not None and "language" not in df.columns:
        df = df.with_columns(language=pl.lit(language))
    return _finish(df, label)


# ----------------------------------------------------------------------------------------------------------
# Checks and enrichment shared by the importers' callers
# ----------------------------------------------------------------------------------------------------------


def missing_files(df: pl.DataFrame) -> pl.DataFrame:
    """The rows whose ``path`` does not exist on the local file system (URLs are not checked)."""
    exists = [("://" in p) or os.path.isfile(p) for p in df["path"].to_list()]
    return df.filter(~pl.Series(exists, dtype=pl.Boolean))


def add_durations(
    df: pl.DataFrame, *, overwrite: bool = False, progress: Callable[[int], None] | None = None
) -> pl.DataFrame:
    """Fill ``duration`` (seconds) from each file's header; unreadable files keep a null duration.

    Segments (``start``/``end``) get ``end - start`` (or file length minus ``start``). ``progress`` is called
    with 1 after each file, for a progress bar.
    """
    from cltm.audio import AudioError, audio_duration

    current = df["duration"].to_list() if "duration" in df.columns else [None] * df.height
    starts = df["start"].to_list() if "start" in df.columns else [None] * df.height
    ends = df["end"].to_list() if "end" in df.columns else [None] * df.height
    durations: list[float | None] = []
    for path, have, start, end in zip(df["path"].to_list(), current, starts, ends, strict=True):
        if have is not None and not overwrite:
            durations.append(have)
        elif start is not None and end is not None:
            durations.append(end - start)
        else:
            try:
                length = audio_duration(path)
            except AudioError:
                durations.append(None)
            else:
                segment = (length if end is None else min(end, length)) - (start or 0.0)
                # a non-positive length is a broken file or segment: leave it to extraction to report
                durations.append(segment if segment > 0 else None)
        if progress is not None:
            progress(1)
    return df.with_columns(pl.Series("duration", durations, dtype=pl.Float64))


# The emotional-speech corpus presets (emodb, ravdess, cremad, esd, iemocap) register themselves here;
# imported last because they build on the helpers above.
from cltm.corpus import presets as _presets  # noqa: E402, F401
