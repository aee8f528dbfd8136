"""`cltm probe`: the per-layer study (the ``single`` condition of the one engine, per language and pooled),
optionally cross-lingual (``--cross``: train on j, test on i, every layer)."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli import _engine_options as _opt
from cltm.cli._errors import EXIT_FAILED, fail
from cltm.cli.matrix import (
    PROBE_HELP,
    _parse_seeds,
    _split_list,
    check_inputs,
    check_out_dir,
    layer_count,
    layer_progress,
    load_features,
    nothing_computed_message,
    print_left_out,
    probe_settings,
    write_engine_results,
)
from cltm.layers import layer_tokens

ORDER = 40

HELP = (
    "Per-layer probe scores: for every layer and language (and all languages pooled), train a probe on the "
    "language's training rows and score it on its held-out test rows, over --seeds with standard errors. "
    "The same engine, probes and tables as `cltm matrix` (its `single` condition).\n\n"
    "TASK 'gender' (female/male) or any label column of the manifest (e.g. emotion): a classifier scored by "
    "macro-F1, accuracy and UAR, with confusion counts. TASK 'speaker': a verification back-end scored by "
    "AUC, EER and minDCF on same-gender trials drawn from the test speakers.\n\n"
    "--cross adds the cross-lingual layer study (train on j, test on i: the zero_shot condition) without the "
    "2N per class a matrix needs. --folds K: speaker-independent K-fold for small corpora.\n\n"
    "Writes OUT/probe.parquet (one row per layer x language: means and SEs over seeds x folds), "
    "OUT/cross.parquet with --cross, OUT/layer_curve.png, the engine tables (runs.parquet, "
    "confusion.parquet, skipped.parquet, ...) and for --probe wsum OUT/layer_weights.parquet."
)


def probe_command(
    cache_path: Path | None = typer.Option(
        None, "--cache", help="Embedding cache directory from `cltm extract`."
    ),
    embeddings: Path | None = typer.Option(
        None, "--embeddings", help="Embeddings file (.h5/.npz/.npy) instead of a cache (see `cltm matrix`)."
    ),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="Manifest with the features' utt_ids (matched by utt_id)."
    ),
    task: str = typer.Option(
        ...,
        "--task",
        help="'gender', 'speaker', or the name of any label column of the manifest (e.g. emotion).",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    layers: str | None = _opt.LAYERS,
    probe: str | None = typer.Option(None, "--probe", help=PROBE_HELP),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Verification back-end for --task speaker (same names as --probe; kept for old scripts).",
    ),
    n: int | None = typer.Option(
        None,
        "--n",
        min=1,
        help="Training size per language: N per class (label tasks) or N utterances (speaker). Default: "
        "every training row.",
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Number of seeds (3 -> 0..2) or a list (0,1,2); default 1 (seed --seed)."
    ),
    seed: int = typer.Option(0, "--seed", help="The seed when --seeds is not given."),
    languages: str | None = typer.Option(
        None, "--languages", help="Comma-separated languages (default all)."
    ),
    cross: bool = typer.Option(
        False, "--cross", help="Also train on each other language j and test on i (zero_shot), every layer."
    ),
    test_fraction: float = _opt.TEST_FRACTION,
    folds: int | None = _opt.FOLDS,
    classes: str | None = _opt.CLASSES,
    predictions: bool = _opt.PREDICTIONS,
    solver: str = typer.Option("shared", "--solver", help="logreg solver: shared, sklearn or batched."),
    hidden: str | None = _opt.HIDDEN,
    patience: int | None = _opt.PATIENCE,
    max_epochs: int | None = _opt.MAX_EPOCHS,
    no_early_stopping: bool = _opt.NO_EARLY_STOPPING,
    no_pooled: bool = typer.Option(False, "--no-pooled", help="Skip the all-languages-pooled probe."),
) -> None:
    """Per-layer probe scores (per language and pooled) for layer selection."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from cltm.tasks import get_task
    from cltm.transfer import ExecutionSettings, PlanSettings, run_matrix
    from cltm.transfer.evaluators import canonical_probe_name, probe_names
    from cltm.transfer.runner import POOLED, NothingToRun, layer_scores

    if (cache_path is None) == (embeddings is None):
        raise fail("give exactly one of --cache or --embeddings")
    check_inputs(cache=cache_path, embeddings=embeddings, manifest=manifest)
    check_out_dir(out)
    try:
        layer_tokens(layers)
    except ValueError as err:
        raise fail(str(err)) from None
    from cltm.tasks import TASKS

    verification = task in TASKS and TASKS[task].is_verification
    name = probe
    if backend is not None:
        if canonical_probe_name(backend) not in probe_names("verification"):
            raise fail(f"unknown backend {backend!r}; choose from {', '.join(probe_names('verification'))}")
        if verification:
            name = backend
    if name is not None and canonical_probe_name(name) not in probe_names():
        raise fail(f"unknown probe {name!r}; choose from {', '.join(probe_names())}")
    settings = probe_settings(name, solver, hidden, patience, max_epochs, no_early_stopping)
    console = Console()
    try:
        features, man = load_features(cache_path, embeddings, manifest)
        done = getattr(features, "done", None)
        if done is not None and not done.all():
            console.print(
                f"[yellow]note:[/yellow] {int((~done).sum())} of {len(done)} rows are not in the cache, "
                "skipped"
            )
        seed_spec = _parse_seeds(seeds) if seeds is not None else (seed,)
        plan = PlanSettings(
            n=n,
            seeds=seed_spec if isinstance(seed_spec, int) else tuple(seed_spec),
            layers=layers,
            languages=tuple(_split_list(languages)) if _split_list(languages) else None,
            conditions=("single", "zero_shot") if cross else ("single",),
            pooled=not no_pooled,
            test_fraction=test_fraction,
            split_seed=seed if seeds is None else 0,
            trial_seed=seed if seeds is None else 0,
            folds=folds,
            classes=tuple(_split_list(classes)) if _split_list(classes) else None,
            predictions=predictions,
        )
        with layer_progress(True, f"probing {task}", layer_count(features, layers, settings)) as advance:
            result = run_matrix(
                features, man, task, plan=plan, probe=settings, execution=ExecutionSettings(progress=advance)
            )
    except typer.Exit:
        raise
    except NothingToRun as err:
        raise fail(f"nothing could be computed: {err}", EXIT_FAILED) from None
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        raise fail(str(err)) from None
    if result.runs.height == 0:
        print_left_out(Console(stderr=True), None, getattr(result, "notes", ()))
        raise fail(nothing_computed_message(result, "probe score"), EXIT_FAILED)

    out.mkdir(parents=True, exist_ok=True)
    write_engine_results(out, result)
    scores = layer_scores(result, ("single",)).rename({"target": "language"}).drop("condition", "donor")
    from cltm.fileio import write_parquet_atomic

    write_parquet_atomic(scores, out / "probe.parquet")
    if cross:
        write_parquet_atomic(layer_scores(result, ("single", "zero_shot")), out / "cross.parquet")
    weights = getattr(result, "layer_weights", None)
    if weights is not None:
        weights = (
            weights.group_by("target", "layer", maintain_order=True)
            .agg(pl.col("weight").mean())
            .rename({"target": "language"})
            .sort("language", "layer")
        )
        write_parquet_atomic(weights, out / "layer_weights.parquet")
    main_metric = "eer" if verification else get_task(task, label=None).default_metric
    model = result.runs["model"][0]
    curve = plot_layer_curve(scores, weights, main_metric, out / "layer_curve.png", title=f"{task} | {model}")

    print_left_out(console, result.skipped, getattr(result, "notes", ()))
    data = weights if weights is not None else scores
    value = "weight" if weights is not None else main_metric
    langs = sorted(data["language"].unique().to_list(), key=lambda lang: (lang == POOLED, lang))
    table = Table(
        title=f"{task}: {value} per layer ({'wsum' if value == 'weight' else result.runs['probe'][0]})"
    )
    table.add_column("layer", justify="right")
    for language in langs:
        table.add_column(language, justify="right")
    for layer in sorted(data["layer"].drop_nulls().unique().to_list()):
        row = data.filter(pl.col("layer") == layer)
        cells = {r["language"]: r[value] for r in row.iter_rows(named=True)}
        table.add_row(str(layer), *(f"{cells[lang]:.3f}" if lang in cells else "-" for lang in langs))
    console.print(table)
    if value == "weight":
        for r in scores.iter_rows(named=True):
            console.print(f"wsum {r['language']}: f1 {r['f1']:.3f}  uar {r['uar']:.3f}")
    console.print(f"wrote {out / 'probe.parquet'} and {curve}")


def plot_layer_curve(scores, weights, metric: str, path: Path, *, title: str | None = None) -> Path:
    """Metric per layer, one line per language (pooled in bold black); wsum results as layer weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    from cltm.transfer.runner import POOLED

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if weights is not None:
        data, value, ylabel = weights, "weight", "learned layer weight (wsum probe)"
    else:
        data, value = scores, metric
        ylabel = {"eer": "EER (lower is better)", "f1": "macro-F1"}.get(metric, metric)
    for language in sorted(data["language"].unique().to_list(), key=lambda lang: (lang == POOLED, lang)):
        part = data.filter(pl.col("language") == language).sort("layer")
        pooled = language == POOLED
        ax.plot(
            part["layer"].to_numpy(),
            part[value].to_numpy(),
            marker="o",
            markersize=3,
            linewidth=2.5 if pooled else 1.0,
            color="black" if pooled else None,
            alpha=1.0 if pooled else 0.7,
            label=language,
        )
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if data["language"].n_unique() > 8 else 1, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def register(app: typer.Typer) -> None:
    app.command("probe", help=HELP)(probe_command)
