"""`cltm matrix`: per-layer Cross-Lingual Transfer Matrices from a cache, any embeddings, or existing runs."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import fail

ORDER = 50

HELP = (
    "Per-layer CLTMs: for every target language i and donor j, train on N of i (single), 2N of i (self) and "
    "N of i + N of j (pair), plus N of j only (zero_shot), over several seeds, all tested on i's held-out "
    "speakers; then CLTM\\[i,j] = (Perf(i+j) - Perf(i)) / (Perf(i+i) - Perf(i)) with delta-method SEs, "
    "P(cell > 0), unstable flags and matrix properties.\n\n"
    "Input: --cache (from `cltm extract`), --embeddings (an .h5 from `cltm store export`, or .npy/.npz "
    "\\[layers, utts, dim] with --manifest), or --from-runs (our runs table or the published reference CSV: "
    "recomputes matrices and properties only).\n\n"
    "Writes OUT/runs.parquet, OUT/matrices.parquet, OUT/properties.parquet, OUT/language_scores.parquet and "
    "OUT/skipped.parquet (languages left out and why), and prints a per-layer summary."
)



def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    return items or None


def parse_layers(text: str | None) -> list[int] | None:
    """``all`` / None -> None; ``0,3,6-9`` -> [0, 3, 6, 7, 8, 9]; negative numbers count from the end."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise typer.BadParameter(
            f"expected 'all' or comma-separated layers/ranges such as 0,3,6-9; got {text!r}",
            param_hint="--layers",
        ) from None
    return out


def _parse_seeds(text: str) -> int | list[int]:
    try:
        if "," in text:
            return [int(x) for x in text.split(",") if x.strip()]
        return int(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected a count (10 -> seeds 0..9) or a list (0,1,2); got {text!r}", param_hint="--seeds"
        ) from None


def print_summary(properties, skipped=None) -> None:
    """A compact per-layer table: mean Perf(i), mean off-diagonal CLTM, share positive, unstable cells."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    many = properties.select("task", "model", "probe").unique().height > 1
    table = Table(title="CLTM per layer", show_lines=False)
    if many:
        for col in ("task", "model", "probe"):
            table.add_column(col)
    for col, just in (
        ("layer", "right"),
        ("metric", "left"),
        ("langs", "right"),
        ("mean Perf(i)", "right"),
        ("mean CLTM (off-diag)", "right"),
        ("share > 0", "right"),
        ("unstable cells", "right"),
    ):
        table.add_column(col, justify=just)

    def fmt(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    for row in properties.iter_rows(named=True):
        cells = [row["task"], row["model"], row["probe"]] if many else []
        layer = "-" if row["layer"] is None else str(row["layer"])
        cells += [
            layer,
            row["metric"] or "-",
            str(row["n_languages"]),
            fmt(row["mean_perf_single"]),
            fmt(row["mean_offdiag"]),
            fmt(row["share_positive"], ".0%") if row["share_positive"] is not None else "-",
            f"{row['n_unstable']}/{row['n_cells']}",
        ]
        table.add_row(*cells)
    console.print(table)
    if skipped is not None and skipped.height:
        console.print(f"[yellow]{skipped.height} language(s) left out:[/yellow]")
        for lang, reason in skipped.iter_rows():
            console.print(f"  {lang}: {reason}")


def matrix_command(
    out: Path = typer.Option(..., "--out", help="Results directory to write (created if missing)."),
    cache: Path | None = typer.Option(None, "--cache", help="Embedding cache directory from `cltm extract`."),
    embeddings: Path | None = typer.Option(
        None,
        "--embeddings",
        help="Embeddings file: .h5 from `cltm store export`, or .npy/.npz \\[layers, utts, dim] "
        "(or \\[utts, dim]) aligned with --manifest's rows.",
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="Manifest the --embeddings rows follow (default: inside the file, or "
        "manifest.parquet next to it). With --cache: a manifest with extra label columns, same rows.",
    ),
    from_runs: Path | None = typer.Option(
        None,
        "--from-runs",
        help="Recompute matrices/properties from a runs table (.parquet/.csv) or the "
        "published reference CSV (type, lang_src, lang_tgt, f1_mean|auc_mean|wer_mean, *_var, seed_count).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="gender | speaker | any label column of the manifest (not needed with --from-runs).",
    ),
    n: int = typer.Option(60, "--n", min=1, help="N: per class for classification, utterances for speaker."),
    seeds: str = typer.Option("10", "--seeds", help="Number of seeds (10 -> 0..9) or a list (0,1,2)."),
    layers: str | None = typer.Option(None, "--layers", help="all (default) or e.g. 0,6,9-12."),
    languages: str | None = typer.Option(
        None, "--languages", help="Comma-separated languages (default all)."
    ),
    donors: str | None = typer.Option(None, "--donors", help="Restrict the donor languages (default all)."),
    probe: str | None = typer.Option(
        None,
        "--probe",
        help="Classifier (logreg, default) or verification back-end: plda (default; PCA to 200 dims, "
        "~0.3 s per model, 1,539 models per layer and seed at 54 languages), cosine (centred cosine; "
        "a 54-language sweep in minutes), lda_cosine, plda_full.",
    ),
    solver: str = typer.Option(
        "shared",
        "--solver",
        help="logreg solver: shared (default: all training sets of a (layer, seed) in one L-BFGS run "
        "sharing the products with the data), sklearn (one scikit-learn fit per distinct set, values "
        "identical to a per-cell loop) or batched (exact kernel Newton).",
    ),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Matrix metric: f1 (default), accuracy, auc (speaker default), eer, min_dcf_01 ...",
    ),
    families: Path | None = typer.Option(
        None,
        "--families",
        help="Language -> family file (TSV `language<TAB>family` or JSON) overriding the "
        "shipped Common Voice map.",
    ),
    trials: Path | None = typer.Option(
        None,
        "--trials",
        help="Speaker task: your trial list (enroll, test, label utt_ids; CSV/TSV/Parquet).",
    ),
    parallel: str = typer.Option("joblib", "--parallel", help="joblib (local processes) | dask | ray."),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="Dask scheduler address (tcp://host:8786) or Ray address; default: local.",
    ),
    n_jobs: int = typer.Option(1, "--n-jobs", help="Parallel workers over layers (-1 = all cores)."),
    no_zero_shot: bool = typer.Option(False, "--no-zero-shot", help="Skip the zero-shot (donor only) runs."),
    model: str | None = typer.Option(
        None, "--model", help="Model name for the tables (default from the cache)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary table."),
) -> None:
    import polars as pl

    from cltm.transfer import load_families, read_runs, result_from_runs, run_matrix, write_results

    sources = [x for x in (cache, embeddings, from_runs) if x is not None]
    if len(sources) != 1:
        raise fail("give exactly one of --cache, --embeddings or --from-runs")
    for path, opt in (
        (cache, "--cache"),
        (embeddings, "--embeddings"),
        (from_runs, "--from-runs"),
        (manifest, "--manifest"),
        (families, "--families"),
        (trials, "--trials"),
    ):
        if path is not None and not path.exists():
            raise fail(f"{opt} {path}: no such file or directory")
    from cltm.transfer.evaluators import LOGISTIC_SOLVERS

    if solver not in LOGISTIC_SOLVERS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LOGISTIC_SOLVERS)}, not {solver!r}", param_hint="--solver"
        )
    if parallel not in ("joblib", "dask", "ray"):
        raise typer.BadParameter(f"must be joblib, dask or ray, not {parallel!r}", param_hint="--parallel")
    try:
        family_map = load_families(families)
    except (OSError, ValueError) as err:
        raise fail(str(err)) from None

    try:
        if from_runs is not None:
            runs = read_runs(from_runs, task=task, model=model)
            result = result_from_runs(runs, metric=metric, families=family_map)
        else:
            if task is None:
                raise fail(
                    "--task is required with --cache or --embeddings (gender, speaker or a label column)"
                )
            from cltm.corpus import read_manifest

            man = read_manifest(manifest, resolve=False) if manifest is not None else None
            if cache is not None:
                from cltm.store import Cache

                features = Cache.open(cache)
                if man is not None and man.height != features.manifest.height:
                    raise fail(f"--manifest has {man.height} rows, the cache {features.manifest.height}")
            else:
                from cltm.transfer.embeddings import load_embeddings

                features, man = load_embeddings(embeddings, man)
            trial_list = None
            if trials is not None:
                from cltm.corpus.manifest import read_table

                trial_list = read_table(trials, string_columns=("enroll", "test"))
                missing = {"enroll", "test", "label"} - set(trial_list.columns)
                if missing:
                    raise fail(
                        f"--trials {trials}: missing column(s) {sorted(missing)}; need enroll, test, label"
                    )
            result = run_matrix(
                features,
                man,
                task,
                n=n,
                seeds=_parse_seeds(seeds),
                probe=probe,
                layers=parse_layers(layers),
                languages=_split_list(languages),
                donors=_split_list(donors),
                metric=metric,
                zero_shot=not no_zero_shot,
                n_jobs=n_jobs,
                parallel=parallel,
                scheduler=scheduler,
                progress=not quiet,
                trials=trial_list,
                families=family_map,
                model=model,
                solver=solver,
            )
    except typer.Exit:
        raise
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        raise fail(str(err)) from None

    write_results(
        out,
        result.runs,
        result.matrices,
        result.properties,
        skipped=result.skipped,
        language_scores=result.language_scores,
    )
    if not quiet:
        if result.properties.height:
            print_summary(result.properties, result.skipped)
        else:
            print_summary(result.properties.clear(), result.skipped)
            typer.echo("no matrix could be computed (see the languages left out above)")
        typer.echo(
            f"wrote {out}/runs.parquet, matrices.parquet, properties.parquet "
            f"({result.matrices.height} cells, {pl.DataFrame(result.properties).height} matrices)"
        )


def register(app: typer.Typer) -> None:
    app.command(
        "matrix", help=HELP, short_help="Per-layer transfer matrices (CLTM) with SEs and properties."
    )(matrix_command)
