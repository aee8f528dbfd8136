"""`cltm probe`: per-layer probe scores (per language and pooled), no transfer: the layer-selection view."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import fail

ORDER = 40

HELP = (
    "Per-layer probe scores without transfer: for every layer and language (and all languages pooled), "
    "train a probe on the language's training rows and score it on its held-out test rows.\n\n"
    "TASK 'gender' (female/male) or any label column of the manifest: a classifier (--probe), scored by "
    "macro-F1, accuracy and UAR. TASK 'speaker': a verification back-end (--backend) scored by AUC, EER and "
    "minDCF on same-gender trials drawn from the test speakers.\n\n"
    "Train/test: the manifest's split column, else a seeded speaker-disjoint split. Writes OUT/probe.parquet "
    "(one row per layer x language), OUT/layer_curve.png, and for --probe wsum OUT/layer_weights.parquet."
)



def probe_command(
    cache_path: Path = typer.Option(..., "--cache", help="Embedding cache directory from `cltm extract`."),
    task: str = typer.Option(
        ...,
        "--task",
        help="'gender', 'speaker', or the name of any label column of the manifest (e.g. emotion).",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    layers: str = typer.Option(
        "all", "--layers", help="'all' or comma-separated layer indices, e.g. 0,3,6 or -1."
    ),
    probe: str = typer.Option(
        "logreg",
        "--probe",
        help="Classifier for label tasks: logreg | lda | mlp | wsum (weighted layer sum).",
    ),
    backend: str = typer.Option(
        "plda",
        "--backend",
        help="Back-end for --task speaker: cosine | lda-cosine | plda | plda-snorm | cosine-asnorm.",
    ),
    n: int | None = typer.Option(
        None,
        "--n",
        min=1,
        help="Training size per language: N per class (label tasks) or N utterances (speaker). Default: all.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for subsets, the split (if the manifest has none), trials."
    ),
    test_fraction: float = typer.Option(
        0.25,
        "--test-fraction",
        min=0.01,
        max=0.99,
        help="Share of speakers held out when the manifest has no split.",
    ),
) -> None:
    """Per-layer probe scores (per language and pooled) for layer selection."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from cltm.probes import layerwise
    from cltm.progress import counting_progress

    if probe not in layerwise.PROBES:
        raise typer.BadParameter(
            f"unknown probe {probe!r}; choose from {sorted(layerwise.PROBES)}", param_hint="--probe"
        )
    if backend not in layerwise.BACKENDS:
        raise typer.BadParameter(
            f"unknown backend {backend!r}; choose from {sorted(layerwise.BACKENDS)}", param_hint="--backend"
        )
    from cltm.store import Cache, CacheError

    try:
        cache = Cache.open(cache_path)
    except (CacheError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err), param_hint="--cache") from None
    try:
        layer_list = layerwise.parse_layers(layers, cache.n_layers)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--layers") from None
    manifest = cache.manifest
    done = cache.done
    console = Console()
    if not done.all():
        console.print(
            f"[yellow]note:[/yellow] {int((~done).sum())} of {len(done)} rows are not in the cache; skipped"
        )
    n_languages = manifest.filter(pl.Series(done))["language"].n_unique()
    total = layerwise.n_units(len(layer_list), n_languages, probe, task == layerwise.SPEAKER_TASK)
    progress = counting_progress(console=console, transient=True)
    try:
        with progress:
            bar = progress.add_task(f"probing {task}", total=total)
            result = layerwise.probe_layers(
                cache,
                manifest,
                task,
                layers=layer_list,
                probe=probe,
                backend=backend,
                n=n,
                seed=seed,
                test_fraction=test_fraction,
                done=done,
                progress=lambda k: progress.advance(bar, k),
            )
    except ValueError as err:
        raise fail(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    result.scores.write_parquet(out / "probe.parquet")
    if result.layer_weights is not None:
        result.layer_weights.write_parquet(out / "layer_weights.parquet")
    model = cache.attrs.get("model_id", "?")
    curve = layerwise.plot_layer_curve(result, out / "layer_curve.png", title=f"{task} | {model}")

    for language, why in result.skipped:
        console.print(f"[yellow]skipped[/yellow] {language}: {why}")
    data = result.layer_weights if result.layer_weights is not None else result.scores
    value = "weight" if result.layer_weights is not None else result.main_metric
    languages = sorted(data["language"].unique().to_list(), key=lambda lang: (lang == layerwise.POOLED, lang))
    table = Table(
        title=f"{task}: {value} per layer ({'wsum' if value == 'weight' else result.scores['probe'][0]})"
    )
    table.add_column("layer", justify="right")
    for language in languages:
        table.add_column(language, justify="right")
    for layer in sorted(data["layer"].unique().to_list()):
        row = data.filter(pl.col("layer") == layer)
        cells = {r["language"]: r[value] for r in row.iter_rows(named=True)}
        table.add_row(str(layer), *(f"{cells[lang]:.3f}" if lang in cells else "-" for lang in languages))
    console.print(table)
    if value == "weight":
        for r in result.scores.iter_rows(named=True):
            console.print(f"wsum {r['language']}: f1 {r['f1']:.3f}  accuracy {r['accuracy']:.3f}")
    console.print(f"wrote {out / 'probe.parquet'} and {curve}")


def register(app: typer.Typer) -> None:
    app.command("probe", help=HELP)(probe_command)
