"""`cltm report`: render the HTML report (heatmaps, layer views, exports) of a results directory."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 70


def report_command(
    results_dir: Path = typer.Argument(
        ...,
        help="Results directory written by `cltm matrix --out DIR` (also with --from-runs) or `cltm finetune "
        "--out DIR` (runs only: its matrices and properties are computed by the engine).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: index.html, figures/ and tables/."),
    clip: float = typer.Option(
        1.5, "--clip", min=0.01, help="Clip the colour scale at ±CLIP; cells beyond it are marked with ▲/▼."
    ),
    families: Path | None = typer.Option(
        None,
        "--families",
        help="Language -> family map ordering the matrices: TSV `language<TAB>family` or a JSON object, "
        "merged with the shipped Common Voice map (its entries win), as in `cltm matrix --families`.",
    ),
    formats: str = typer.Option(
        "png",
        "--format",
        help="Figure formats, comma-separated from png, svg, pdf (the page shows png or svg).",
    ),
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="Only these layers: `all`, or layers and ranges such as `0,4,8` or `2-6`; negative numbers "
        "count from the deepest layer in the results (-1 = the deepest). Default: every layer.",
    ),
    finetune: list[Path] = typer.Option(
        [],
        "--finetune",
        help="A `cltm finetune --out` directory whose runs are compared with the probe matrices "
        "(repeat the option for several).",
    ),
    human: list[Path] = typer.Option(
        [],
        "--human",
        help="A `cltm human compare --out` directory: adds a humans-vs-models section (listener groups, "
        "native vs non-native, next to this directory's monolingual / cross-lingual runs per layer). "
        "Repeatable.",
    ),
    jobs: int = typer.Option(
        1, "--jobs", "-j", help="Processes drawing the heatmaps in parallel (-1 = every core)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render the CLTM report: one heatmap per (task, model, probe, layer), layer views, donor/receiver
    charts, properties, probe-vs-fine-tune comparison, CSV/LaTeX exports, all linked from OUT/index.html."""
    from rich.console import Console

    from cltm.cli._errors import fail
    from cltm.progress import counting_progress
    from cltm.report import ReportInputError, ReportSettings, build_report, normalise_formats

    console = Console(stderr=True)
    try:
        format_list = normalise_formats(formats)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from exc
    if families is not None and not families.exists():
        raise typer.BadParameter(f"{families}: file not found", param_hint="--families")
    if out.exists() and not out.is_dir():  # checked here: the writer would stop with a FileExistsError
        raise typer.BadParameter(
            f"{out} exists and is not a directory; give a new or report directory", param_hint="--out"
        )
    from cltm.layers import layer_tokens

    try:
        layer_tokens(layers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--layers") from exc
    progress = counting_progress(
        title="[bold]report[/bold] {task.description}", console=console, enabled=not quiet
    )
    with progress:
        task_id = progress.add_task("reading results", total=None)

        def advance(step: str, done: int, total: int) -> None:
            progress.update(task_id, description=step, completed=done, total=total)

        try:
            settings = ReportSettings(
                clip=clip,
                families=families,
                formats=format_list,
                layers=layers,
                finetune_dirs=tuple(finetune),
                human_dirs=tuple(human),
                n_jobs=jobs,
            )
            index = build_report(results_dir, out, settings, progress=advance)
        except (ReportInputError, FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from None
    typer.echo(str(index))


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        help="Render the HTML report of a `cltm matrix` results directory (heatmaps, layer views, exports).",
    )(report_command)
