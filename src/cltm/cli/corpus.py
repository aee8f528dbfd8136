"""`cltm corpus`: build manifests from real corpora (import), look inside them (info), synthesise the demo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail
from cltm.cli._synth import synth_command

ORDER = 10

corpus_app = typer.Typer(
    name="corpus",
    help=(
        "Corpus manifests: import a corpus (Common Voice, any table, a folder tree, lhotse, HF datasets, the "
        "emotion corpora EmoDB, RAVDESS, CREMA-D, ESD and IEMOCAP) into a validated manifest, combine "
        "several, summarise one, or synthesise the offline demo corpus.\n\n"
        "A manifest is a Parquet (or CSV/TSV) table with one row per utterance: utt_id, path, language "
        "(required), speaker, gender, split, duration, start, end and any label columns (docs/corpus.md)."
    ),
    no_args_is_help=True,
)
import_app = typer.Typer(
    name="import",
    help=(
        "Import a corpus as distributed into a manifest (validated; audio paths made absolute). "
        "Each source format is a sub-command; all of them take --out and print a summary."
    ),
    no_args_is_help=True,
)
corpus_app.add_typer(import_app, name="import")
corpus_app.command(
    "synth",
    help=synth_command.__doc__,
    short_help="Synthesise the offline multilingual demo corpus (espeak-ng).",
)(synth_command)


def register(app: typer.Typer) -> None:
    app.add_typer(corpus_app, name="corpus")


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

OUT_HELP = (
    "Manifest file to write: .parquet (recommended), .csv or .tsv. Parent directories are created; "
    "an existing file is replaced."
)
DURATIONS_HELP = (
    "Read every file's header to fill in `duration` (needed for hours in `cltm corpus info`; otherwise "
    "extraction fills it in). Slow for millions of mp3 files."
)
CHECK_FILES_HELP = "Fail if any audio file named by the manifest does not exist (lists the first ones)."


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    return items or None


def _run_import(
    run: Callable[[], object], out: Path, *, durations: bool, check_files: bool, quiet: bool
) -> None:
    """Call an importer, optionally enrich/check the result, write it, print a one-line summary."""
    import polars as pl
    from rich.console import Console

    from cltm.corpus.importers import CorpusImportError, add_durations, missing_files
    from cltm.corpus.info import corpus_totals
    from cltm.corpus.manifest import ManifestError, write_manifest

    if out.suffix.lower() not in (".parquet", ".pq", ".csv", ".tsv"):
        raise fail(f"--out {out}: use a .parquet, .csv or .tsv file name", EXIT_USAGE)
    console = Console()
    try:
        df = run()
    except (CorpusImportError, ManifestError, FileNotFoundError) as err:
        raise fail(str(err), EXIT_USAGE) from err
    except (OSError, pl.exceptions.PolarsError) as err:  # unreadable or corrupt input files
        raise fail(f"cannot read the corpus: {err}", EXIT_USAGE) from err
    assert isinstance(df, pl.DataFrame)

    if check_files:
        missing = missing_files(df)
        if missing.height:
            shown = "\n  ".join(missing["path"].head(10).to_list())
            more = f"\n  ... and {missing.height - 10} more" if missing.height > 10 else ""
            message = f"{missing.height} of {df.height} audio files do not exist:\n  {shown}{more}"
            raise fail(message, EXIT_USAGE)
    if durations:
        from rich.progress import Progress

        with Progress(console=console, disable=quiet, transient=True) as progress:
            task = progress.add_task("reading durations", total=df.height)
            df = add_durations(df, progress=lambda n: progress.advance(task, n))

    try:
        path = write_manifest(df, out)
    except (ManifestError, ValueError, OSError) as err:
        raise fail(f"cannot write {out}: {err}", EXIT_FAILED) from err
    totals = corpus_totals(df)
    speakers = "unknown" if totals.speakers is None else str(totals.speakers)
    hours = f", {_format_hours(totals.hours)} h" if totals.with_duration else ""
    console.print(
        f"[bold]{totals.utterances}[/bold] utterances, {speakers} speakers, {totals.languages} language(s)"
        f"{hours} -> {path}"
    )
    if not quiet:
        console.print(f"see `cltm corpus info {path}` for the breakdown per language, gender and split")


# ----------------------------------------------------------------------------------------------------------
# import sub-commands
# ----------------------------------------------------------------------------------------------------------


@import_app.command("commonvoice")
def import_commonvoice_command(
    root: Path = typer.Argument(
        ...,
        help="A Common Voice release directory (ROOT/<locale>/train.tsv, clips/, ...) or one locale's "
        "directory.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False),
    locales: str = typer.Option(
        None,
        "--locales",
        "-l",
        help="Comma-separated locales to import, e.g. ca,es,zh-HK. Default: all found.",
    ),
    splits: str = typer.Option(
        "train,dev,test",
        "--splits",
        help="Which TSVs to read (comma-separated): train, dev, test, validated. 'validated' adds the rows "
        "of validated.tsv that are in none of the others, with an empty split (a locale shared as only "
        "validated.tsv + clips/: --splits validated).",
    ),
    include_validated: bool = typer.Option(
        False,
        "--include-validated",
        help="Also add validated.tsv rows that are in none of the split files, with an empty split (the "
        "CLTM code can split them speaker-disjointly).",
    ),
    durations: bool = typer.Option(False, "--durations", help=DURATIONS_HELP),
    check_files: bool = typer.Option(False, "--check-files", help=CHECK_FILES_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the one-line summary."),
) -> None:
    """Import a Common Voice release: client_id -> speaker, clips/<path> -> path, locale -> language.

    Gender values of old (male/female/other) and new releases (male_masculine, female_feminine, ...) are
    normalised to male/female; other values are kept. The split comes from the TSV's name (dev stays dev);
    utt_id is the clip name without extension; sentence, age, accents, votes are kept as columns.
    """
    from cltm.corpus.importers import import_commonvoice

    chosen_splits = _split_list(splits) or []
    _run_import(
        lambda: import_commonvoice(
            root, locales=_split_list(locales), splits=chosen_splits, include_validated=include_validated
        ),
        out,
        durations=durations,
        check_files=check_files,
        quiet=quiet,
    )


@import_app.command("table")
def import_table_command(
    table: Path = typer.Argument(
        ..., help="A CSV, TSV or Parquet file, one row per utterance.", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False),
    mapping: str = typer.Option(
        None,
        "--map",
        "-m",
        help="Column mapping MANIFEST=TABLE, comma-separated, e.g. "
        "speaker=client_id,path=file,language=lang. Unmapped columns are kept under their own names.",
    ),
    language: str = typer.Option(
        None, "--language", help="Language code for every row, when the table has no language column."
    ),
    base_dir: Path = typer.Option(
        None, "--base-dir", help="Directory that relative audio paths are relative to. Default: the table's."
    ),
    durations: bool = typer.Option(False, "--durations", help=DURATIONS_HELP),
    check_files: bool = typer.Option(False, "--check-files", help=CHECK_FILES_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the one-line summary."),
) -> None:
    """Import any CSV/TSV/Parquet table, renaming its columns with --map.

    Needs a path and a language (mapped, or a constant --language); utt_id defaults to the audio file name
    without extension; gender values are normalised to male/female.
    """
    from cltm.corpus.importers import import_table

    _run_import(
        lambda: import_table(table, mapping=mapping, language=language, base_dir=base_dir),
        out,
        durations=durations,
        check_files=check_files,
        quiet=quiet,
    )


@import_app.command("folder")
def import_folder_command(
    root: Path = typer.Argument(
        ..., help="Folder tree ROOT/<language>/<speaker>/**/<audio files>.", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False),
    genders: Path = typer.Option(
        None,
        "--genders",
        help="Optional CSV/TSV/Parquet with columns speaker,gender (and optionally language); "
        "speakers it does not list, or all without it, get an unknown gender.",
    ),
    extensions: str = typer.Option(
        "wav,flac,mp3,ogg,opus", "--extensions", help="Audio file extensions to pick up (comma-separated)."
    ),
    durations: bool = typer.Option(False, "--durations", help=DURATIONS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the one-line summary."),
) -> None:
    """Import a folder tree: the first level is the language, the second the speaker.

    utt_id is the file's path under ROOT without extension; files may sit deeper than the speaker folder.
    """
    from cltm.corpus.importers import import_folder

    _run_import(
        lambda: import_folder(root, genders=genders, extensions=_split_list(extensions) or []),
        out,
        durations=durations,
        check_files=False,
        quiet=quiet,
    )


@import_app.command("lhotse")
def import_lhotse_command(
    recordings: Path = typer.Argument(
        ..., help="lhotse RecordingSet manifest (.jsonl/.jsonl.gz).", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False),
    supervisions: Path = typer.Option(
        None, "--supervisions", help="lhotse SupervisionSet: one utterance per supervision segment."
    ),
    language: str = typer.Option(None, "--language", help="Language code where lhotse gives none."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the one-line summary."),
) -> None:
    """Import lhotse manifests (needs `pip install 'cltm\\[lhotse]'`)."""
    from cltm.corpus.importers import import_lhotse

    _run_import(
        lambda: import_lhotse(recordings, supervisions=supervisions, language=language),
        out,
        durations=False,
        check_files=False,
        quiet=quiet,
    )


@import_app.command("hf")
def import_hf_command(
    dataset: str = typer.Argument(
        ...,
        help="A directory saved with save_to_disk, a local dataset repository (Parquet files under data/, "
        "e.g. from `hf download --repo-type dataset`), or a Hub dataset name (cached, or with network). "
        "The first Audio column becomes `path` unless --map names another.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False),
    mapping: str = typer.Option(
        None, "--map", "-m", help="Column mapping MANIFEST=DATASET, comma-separated."
    ),
    language: str = typer.Option(None, "--language", help="Language code when the dataset has none."),
    split: str = typer.Option(None, "--split", help="One split of a DatasetDict (default: all of them)."),
    config: str = typer.Option(None, "--config", help="Dataset configuration name (for load_dataset)."),
    audio_dir: Path = typer.Option(
        None,
        "--audio-dir",
        help="Where to write audio the dataset embeds as bytes (save_to_disk output, Hub Parquet); "
        "needed only then. Files already there are reused.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the one-line summary."),
) -> None:
    """Import a Hugging Face `datasets` dataset (cltm\\[datasets]); embedded audio goes to --audio-dir."""
    from cltm.corpus.importers import import_hf_dataset

    _run_import(
        lambda: import_hf_dataset(
            dataset, mapping=mapping, language=language, split=split, config=config, audio_dir=audio_dir
        ),
        out,
        durations=False,
        check_files=False,
        quiet=quiet,
    )


# ----------------------------------------------------------------------------------------------------------
# info
# ----------------------------------------------------------------------------------------------------------


def _format_hours(hours: float) -> str:
    # three significant digits for small corpora (a demo is minutes, not hours), two decimals otherwise
    return f"{hours:.2f}" if hours >= 1 else f"{hours:.3g}"


def _hours_cell(hours: float, with_duration: int, utterances: int) -> str:
    if with_duration == 0:
        return "unknown"
    if with_duration < utterances:
        return f">= {_format_hours(hours)} ({with_duration}/{utterances} known)"
    return _format_hours(hours)


def _print_class_balance(
    console, balance, task: str, label: str, classes: list[str], df, n: int | None
) -> None:
    """The class-balance table of `info --task`, then one warning per language short of N per class."""
    from rich.markup import escape
    from rich.table import Table

    from cltm.corpus.info import class_shortfalls

    counts = [c for c in balance.columns if c in classes or c in ("(other)", "total")]
    groups = [c for c in balance.columns if c not in counts]
    table = Table(title=f"task {task}: utterances per {label} class", title_justify="left")
    for column in groups:
        table.add_column(column)
    for column in counts:
        table.add_column(column, justify="right")
    for row in balance.iter_rows(named=True):
        cells = ["-" if row[c] is None else str(row[c]) for c in groups]
        table.add_row(*cells, *(str(row[c]) for c in counts))
    console.print(table)
    if "(other)" in counts:
        console.print(f"(other) = rows whose {label} is missing or not one of the task's classes.")
    if n is None:
        return
    shortfalls = class_shortfalls(df, label, n, classes=classes)
    for shortfall in shortfalls:
        console.print(f"[yellow]warning:[/yellow] {escape(shortfall.message(n))}")
    if not shortfalls:
        console.print(f"every language can supply N={n} per class ({2 * n} training rows per class).")


@corpus_app.command("info")
def info_command(
    manifest: Path = typer.Argument(..., help="Manifest file (.parquet, .csv or .tsv).", show_default=False),
    by: str = typer.Option(
        "language,gender,split", "--by", help="Columns to group by (comma-separated; any manifest column)."
    ),
    check_files: bool = typer.Option(
        False, "--check-files", help="Also count audio files that do not exist."
    ),
    save: Path = typer.Option(
        None,
        "--save",
        help="Also write the summary table to this file (.csv, .tsv or .parquet); with --task, the class "
        "balance table.",
    ),
    task: str = typer.Option(
        None,
        "--task",
        help="A classification task (emotion, gender, or any label column): also show its class balance per "
        "--by group, and check every language against --n.",
    ),
    n: int = typer.Option(
        None,
        "--n",
        min=1,
        help="With --task: warn where a language cannot supply N utterances per class (the matrix draws 2N "
        "per class from the train split and needs every class in the test split).",
    ),
) -> None:
    """Summarise a manifest: utterances, speakers and hours per language x gender x split.

    The manifest is validated first (every problem is listed with its row). Hours need durations: they are
    shown as unknown until extraction (or `cltm corpus import ... --durations`) fills them in. With --task,
    also the utterances per class of the task's label per group, and (with --n) which languages are short.
    """
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from cltm.corpus.importers import missing_files
    from cltm.corpus.info import corpus_totals, summarize
    from cltm.corpus.manifest import ManifestError, read_manifest

    try:
        df = read_manifest(manifest)
    except ManifestError as err:
        raise fail(str(err), EXIT_USAGE) from err
    except (FileNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as err:
        raise fail(f"cannot read manifest {manifest}: {err}", EXIT_USAGE) from err
    group_by = _split_list(by) or []
    unknown = [c for c in group_by if c not in df.columns and c not in ("gender", "split", "speaker")]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(unknown)} not in the manifest; its columns: {', '.join(df.columns)}",
            param_hint="'--by'",
        )
    if n is not None and task is None:
        raise typer.BadParameter("--n needs --task (the label whose classes are counted)", param_hint="'--n'")
    summary = summarize(df, by=group_by)
    totals = corpus_totals(df)
    balance = None
    if task is not None:
        from cltm.corpus.info import class_balance, task_classes

        try:
            labelled, label, classes = task_classes(df, task)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="'--task'") from err
        balance = class_balance(labelled, label, by=group_by, classes=classes)

    table = Table(title=f"{manifest}", title_justify="left")
    for column in group_by:
        table.add_column(column)
    for column in ("utterances", "speakers", "hours"):
        table.add_column(column, justify="right")
    for row in summary.iter_rows(named=True):
        cells = ["-" if row[c] is None else str(row[c]) for c in group_by]
        speakers = "-" if row["speakers"] is None else str(row["speakers"])
        hours = _hours_cell(row["hours"], row["with_duration"], row["utterances"])
        table.add_row(*cells, str(row["utterances"]), speakers, hours)
    table.add_section()
    table.add_row(
        *(["[bold]total[/bold]"] + [""] * (len(group_by) - 1) if group_by else []),
        f"[bold]{totals.utterances}[/bold]",
        "-" if totals.speakers is None else str(totals.speakers),
        _hours_cell(totals.hours, totals.with_duration, totals.utterances),
    )
    console = Console()
    console.print(table)
    has_unknown = any(summary[c].null_count() for c in group_by)
    unknown_note = "; '-' = not given in the manifest" if has_unknown else ""
    console.print(f"{totals.languages} language(s){unknown_note}.")
    if not totals.duration_known:
        console.print(
            "hours are unknown for rows without a duration until extraction fills them in "
            "(or re-import with --durations)."
        )
    if balance is not None:
        _print_class_balance(console, balance, task, label, classes, labelled, n)
        summary = balance
    if check_files:
        missing = missing_files(df)
        console.print(f"missing audio files: {missing.height} of {df.height}")
        for path in missing["path"].head(10).to_list():
            console.print(f"  {path}")
    if save is not None:
        suffix = save.suffix.lower()
        writers = {
            ".csv": lambda: summary.write_csv(save),
            ".tsv": lambda: summary.write_csv(save, separator="\t"),
            ".parquet": lambda: summary.write_parquet(save),
        }
        if suffix not in writers:
            raise typer.BadParameter("use a .csv, .tsv or .parquet file name", param_hint="'--save'")
        save.parent.mkdir(parents=True, exist_ok=True)
        writers[suffix]()
        console.print(f"summary written to {save}")
    if check_files and missing.height:
        raise typer.Exit(1)


# the emotional-speech corpus presets add `import emodb|ravdess|cremad|esd|iemocap` and `combine`
from cltm.cli import _corpus_presets  # noqa: E402, F401
