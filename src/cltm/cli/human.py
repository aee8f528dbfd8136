"""`cltm human import|compare`: listener judgements, validated, and compared with model predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail

ORDER = 65

human_app = typer.Typer(
    help="Listening-test judgements: import and validate them against the corpus manifest, then compare "
    "listener groups (native / non-native) with model predictions on the same utterances.",
    no_args_is_help=True,
)

MAP_HELP = (
    "Your table's column for each field, as FIELD=COLUMN pairs separated by commas. Fields: listener, group "
    "(the listener's L1 as a language code of the manifest, or any group name), utt_id, response; optional "
    "confidence and rt (response time). Unnamed fields use a column of the same name. "
    "Example: --map listener=subject,group=L1,utt_id=stimulus,response=answer,rt=RT"
)

# one logical line per paragraph: the rich help keeps the line breaks of a docstring
IMPORT_HELP = (
    "Validate a listening-test table against the corpus manifest and write it in cltm's listener format."
    "\n\n"
    "Every bad row is reported with its row number, value and fix: unknown utt_ids, answers outside the "
    "task's classes (after normalisation: anger -> angry), duplicate answers of one listener to one "
    "utterance, a listener in two groups, missing values, non-numeric confidence or response time. "
    "Nothing is written unless the whole table is valid."
)
COMPARE_HELP = (
    "Score listener groups and compare them with models on the same utterances."
    "\n\n"
    "Per listener group x stimulus language (and native / non-native pooled): accuracy, UAR and macro-F1 "
    "with two-way bootstrap intervals over listeners and utterances, per-emotion recall and confusion; "
    "listener-vs-model Cohen's kappa and agreement; Spearman correlation of human and model cross-lingual "
    "drops. Writes Parquet tables to OUT and prints a summary (docs/human.md)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(human_app, name="human")


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    return items or None


@human_app.command("import", help=IMPORT_HELP)
def import_command(
    table: Path = typer.Argument(
        ..., help="Listening-test table: .csv, .tsv or .parquet, one row per answer."
    ),
    column_map: str = typer.Option("", "--map", help=MAP_HELP),
    manifest: Path = typer.Option(
        ...,
        "--manifest",
        "-m",
        help="Corpus manifest of the stimuli: gives each utt_id's language and label.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Validated listener table to write (.parquet)."),
    task: str = typer.Option(
        "emotion", "--task", help="The label column the listeners judged (its labels are the true answers)."
    ),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Allowed answers, comma-separated (e.g. angry,happy,neutral,sad). Default: the labels of the "
        "manifest's task column. Answers and labels are normalised first (anger -> angry).",
    ),
) -> None:
    """`cltm human import` (its help text: IMPORT_HELP)."""
    import polars as pl
    from rich.console import Console

    from cltm.corpus.manifest import ManifestError, read_manifest
    from cltm.human.listeners import (
        ListenerColumnMap,
        ListenerImport,
        ListenerTableError,
        import_listeners,
        write_listeners,
    )

    if out.suffix.lower() not in (".parquet", ".pq"):
        raise typer.BadParameter("write the listener table as .parquet", param_hint="'--out'")
    try:
        columns = ListenerColumnMap.parse(column_map)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="'--map'") from None
    try:
        man = read_manifest(manifest, resolve=False)
    except ManifestError as err:
        raise fail(str(err), EXIT_USAGE) from err
    except (FileNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as err:
        raise fail(f"cannot read manifest {manifest}: {err}", EXIT_USAGE) from err
    settings = ListenerImport(columns=columns, task=task, classes=_split(classes))
    try:
        listeners = import_listeners(table, man, settings)
    except ListenerTableError as err:
        raise fail(str(err), EXIT_USAGE) from err
    except (FileNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as err:
        raise fail(f"cannot read listener table {table}: {err}", EXIT_USAGE) from err
    try:
        path = write_listeners(listeners, out)
    except OSError as err:
        raise fail(f"cannot write {out}: {err}", EXIT_FAILED) from err
    native = listeners["native"].mean()
    Console().print(
        f"[bold]{listeners.height}[/bold] answers from {listeners['listener'].n_unique()} listeners in "
        f"{listeners['group'].n_unique()} group(s) on {listeners['utt_id'].n_unique()} utterances "
        f"({', '.join(sorted(listeners['language'].unique().to_list()))}); {native:.0%} native -> {path}"
    )


@human_app.command("compare", help=COMPARE_HELP)
def compare_command(
    listeners: Path = typer.Option(
        ..., "--listeners", "-l", help="Listener table written by `cltm human import`."
    ),
    predictions: list[Path] = typer.Option(
        [],
        "--predictions",
        "-p",
        help="Model predictions (predictions.parquet, or a results directory holding one) on the same "
        "manifest; repeat for several (e.g. probes and fine-tuning). Without it only listeners are scored.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output directory for the comparison tables (Parquet)."
    ),
    n_boot: int = typer.Option(
        1000, "--boot", min=1, help="Bootstrap replicates (listeners and utterances resampled together)."
    ),
    level: float = typer.Option(
        0.95, "--level", min=0.5, max=0.999, help="Confidence level of the intervals."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    mono_conditions: str = typer.Option(
        "single",
        "--mono-conditions",
        help="Prediction conditions that count as monolingual when trained on the test language.",
    ),
    cross_conditions: str = typer.Option(
        "zero_shot",
        "--cross-conditions",
        help="Prediction conditions that count as cross-lingual when trained on one other language.",
    ),
    transfer_conditions: str = typer.Option(
        "sequential",
        "--transfer-conditions",
        help="Prediction conditions that count as transfer (trained on another language, then adapted).",
    ),
    all_utterances: bool = typer.Option(
        False,
        "--all-utterances",
        help="Score models on every predicted utterance, not only on those the listeners heard.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
) -> None:
    """`cltm human compare` (its help text: COMPARE_HELP)."""
    import polars as pl
    from rich.console import Console

    from cltm.human.compare import CompareSettings, compare, summary_lines
    from cltm.human.listeners import read_listeners
    from cltm.human.stats import BootstrapSettings
    from cltm.human.tables import read_predictions
    from cltm.progress import counting_progress

    try:
        table = read_listeners(listeners)
    except (FileNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as err:
        raise fail(f"cannot read listener table {listeners}: {err}", EXIT_USAGE) from err
    preds = None
    if predictions:
        frames = []
        for path in predictions:
            try:
                frames.append(read_predictions(path))
            except (FileNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as err:
                raise fail(f"cannot read predictions {path}: {err}", EXIT_USAGE) from err
        preds = pl.concat(frames, how="vertical_relaxed")
    settings = CompareSettings(
        bootstrap=BootstrapSettings(n_boot=n_boot, level=level, seed=seed),
        mono_conditions=_split(mono_conditions) or (),
        cross_conditions=_split(cross_conditions) or (),
        transfer_conditions=_split(transfer_conditions) or (),
        same_utterances=not all_utterances,
    )
    console = Console(stderr=True)
    bar = counting_progress("cells", console=console, enabled=not quiet, transient=True)
    try:
        with bar:
            task_id = bar.add_task("bootstrapping listener panels", total=None)
            result = compare(
                table,
                preds,
                settings,
                progress=lambda done, total: bar.update(task_id, completed=done, total=total),
            )
    except ValueError as err:
        raise fail(str(err), EXIT_USAGE) from err
    try:
        result.write(out)
    except OSError as err:
        raise fail(f"cannot write {out}: {err}", EXIT_FAILED) from err
    if not quiet:
        for line in summary_lines(result):
            typer.echo(line)
    typer.echo(f"comparison tables -> {out}")
