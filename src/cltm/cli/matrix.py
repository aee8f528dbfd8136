"""`cltm matrix`: per-layer Cross-Lingual Transfer Matrices from a cache, any embeddings, or existing runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from cltm.cli import _engine_options as _opt
from cltm.cli._errors import EXIT_FAILED, fail
from cltm.layers import layer_tokens

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


def _parse_seeds(text: str) -> int | list[int]:
    try:
        if "," in text:
            return [int(x) for x in text.split(",") if x.strip()]
        return int(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected a count (10 -> seeds 0..9) or a list (0,1,2); got {text!r}", param_hint="--seeds"
        ) from None


def print_summary(properties, skipped=None, notes=()) -> None:
    """A compact per-layer table: mean Perf(i), mean and median CLTM over the stable off-diagonal cells (with
    their count: the engine's properties ``mean_offdiag_stable``, ``median_offdiag_stable``, ``n_stable``),
    share positive."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    many = properties.select("task", "model", "probe").unique().height > 1
    table = Table(title="CLTM per layer (off-diagonal means over stable cells)", show_lines=False)
    if many:
        for col in ("task", "model", "probe"):
            table.add_column(col)
    for col, just in (
        ("layer", "right"),
        ("metric", "left"),
        ("langs", "right"),
        ("mean Perf(i)", "right"),
        ("mean CLTM", "right"),
        ("median CLTM", "right"),
        ("stable cells", "right"),
        ("share > 0", "right"),
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
            fmt(row.get("mean_offdiag_stable")),
            fmt(row.get("median_offdiag_stable")),
            f"{row.get('n_stable', '-')}/{row['n_cells']}",
            fmt(row["share_positive"], ".0%") if row["share_positive"] is not None else "-",
        ]
        table.add_row(*cells)
    console.print(table)
    print_left_out(console, skipped, notes)


def print_left_out(console, skipped, notes=()) -> None:
    """The languages left out (and why, with the numbers they would need) and any notes on excluded rows."""
    if skipped is not None and skipped.height:
        console.print(f"[yellow]{skipped.height} language(s) left out:[/yellow]")
        for lang, reason in skipped.iter_rows():
            console.print(f"  {lang}: {reason}")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")


PROBE_HELP = (
    "Probe from the one registry (also `cltm probe`). Classifiers: logreg (default), lda, mlp, wsum "
    "(weighted layer sum over the selected layers). Verification back-ends: plda (default; PCA to 200 "
    "dims), plda_full (no PCA), cosine, lda_cosine, each optionally with score normalisation: "
    "BACKEND+snorm or BACKEND+asnorm (e.g. plda+snorm). Old spellings (lda-cosine, plda-snorm) are accepted."
)


def probe_settings(probe, solver, hidden, patience, max_epochs, no_early_stopping):
    """``ProbeSettings`` from the shared CLI options (matrix and probe), usage errors as BadParameter."""
    from cltm.transfer import ProbeSettings
    from cltm.transfer.evaluators import LOGISTIC_SOLVERS

    if solver not in LOGISTIC_SOLVERS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LOGISTIC_SOLVERS)}, not {solver!r}", param_hint="--solver"
        )
    sizes = None
    if hidden is not None:
        try:
            sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
        except ValueError:
            raise typer.BadParameter(
                f"expected sizes such as 128,16; got {hidden!r}", param_hint="--hidden"
            ) from None
        if any(h < 1 for h in sizes):
            raise typer.BadParameter(f"hidden sizes must be >= 1, got {hidden!r}", param_hint="--hidden")
    return ProbeSettings(
        name=probe,
        solver=solver,
        hidden=sizes,
        patience=patience,
        max_epochs=max_epochs,
        early_stopping=not no_early_stopping,
    )


def _with_device(settings, device: str, task: str | None):
    """``settings`` with the lockstep PLDA fits on ``device``; refused where it would be ignored or fail."""
    from dataclasses import replace

    from cltm.tasks import TASKS
    from cltm.transfer.evaluators import DEFAULT_PROBE, canonical_probe_name, fits_in_lockstep

    kind = TASKS[task].kind if task in TASKS else "classification"
    name = canonical_probe_name(settings.name) if settings.name else DEFAULT_PROBE[kind]
    if not fits_in_lockstep(name):
        raise fail(
            f"--device applies to the PLDA back-ends of a speaker sweep (--probe plda or plda_full); "
            f"{name!r} always runs on the CPU: drop --device"
        )
    device = device.strip().lower()
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise fail(
                f"--device {device}: torch {torch.__version__} sees no CUDA device here; use --device cpu"
            )
    elif device != "cpu":
        raise fail(f"--device must be cpu or cuda[:index], got {device!r}")
    return replace(settings, lockstep={**settings.lockstep, "device": device})


def load_features(cache, embeddings, manifest):
    """(features, manifest) for --cache / --embeddings; a --manifest is aligned to the features by utt_id."""
    from cltm.corpus import read_manifest
    from cltm.transfer.embeddings import align_manifest

    man = read_manifest(manifest, resolve=False) if manifest is not None else None
    if cache is not None:
        from cltm.store import Cache

        features = Cache.open(cache)
        if man is not None:
            man = align_manifest(man, features.manifest["utt_id"], what=f"the cache {cache}")
        return features, man
    from cltm.transfer.embeddings import load_embeddings

    return load_embeddings(embeddings, man)


def check_inputs(**paths) -> None:
    for opt, path in paths.items():
        if path is not None and not path.exists():
            raise fail(f"--{opt.replace('_', '-')} {path}: no such file or directory")


def check_out_dir(out: Path) -> None:
    """--out must be a directory or not exist yet: said before the work, not by the writer's traceback."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: exists and is not a directory; give a results directory")


def write_engine_results(out: Path, result) -> None:
    """The results directory: runs, matrices, properties, skipped, language scores, confusion (+ predictions
    and wsum layer weights when there are any)."""
    from cltm.fileio import write_parquet_atomic

    result.write(out)  # the one atomic, validated set
    if result.layer_weights is not None:  # beside the set: only the wsum probe has them
        write_parquet_atomic(result.layer_weights, out / "layer_weights.parquet")


def nothing_computed_message(result, what: str) -> str:
    """Why nothing was computed: every language left out with its reason (and any notes on rows)."""
    reasons = [f"{lang}: {why}" for lang, why in result.skipped.iter_rows()]
    reasons += list(getattr(result, "notes", ()))
    return f"no {what} could be computed: " + (
        "; ".join(reasons) or "no language has data for every condition"
    )


def matrix_command(
    out: Path = typer.Option(..., "--out", help="Results directory to write (created if missing)."),
    cache: Path | None = typer.Option(None, "--cache", help="Embedding cache directory from `cltm extract`."),
    embeddings: Path | None = typer.Option(
        None,
        "--embeddings",
        help="Embeddings file: .h5 from `cltm store export`, or .npy/.npz \\[layers, utts, dim] "
        "(or \\[utts, dim]) aligned with --manifest's rows (an .npz `utt_id` array is checked against it).",
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="Manifest the --embeddings rows follow (default: inside the file, or "
        "manifest.parquet next to it). With --cache: a manifest with extra label columns and the same "
        "utt_ids (matched by utt_id; any other set of utterances is refused).",
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
        help="gender | speaker | any label column of the manifest, e.g. emotion (not with --from-runs).",
    ),
    n: int = typer.Option(60, "--n", min=1, help="N: per class for classification, utterances for speaker."),
    seeds: str = typer.Option("10", "--seeds", help="Number of seeds (10 -> 0..9) or a list (0,1,2)."),
    layers: str | None = _opt.LAYERS,
    languages: str | None = typer.Option(
        None, "--languages", help="Comma-separated languages (default all)."
    ),
    donors: str | None = typer.Option(
        None, "--donors", help="Restrict the donor languages (default all); each must be a target language."
    ),
    probe: str | None = typer.Option(None, "--probe", help=PROBE_HELP),
    solver: str = typer.Option(
        "shared",
        "--solver",
        help="logreg solver: shared (default: all training sets of a (layer, seed) in one L-BFGS run "
        "sharing the products with the data), sklearn (one scikit-learn fit per distinct set, values "
        "identical to a per-cell loop) or batched (exact kernel Newton).",
    ),
    hidden: str | None = _opt.HIDDEN,
    patience: int | None = _opt.PATIENCE,
    max_epochs: int | None = _opt.MAX_EPOCHS,
    no_early_stopping: bool = _opt.NO_EARLY_STOPPING,
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Matrix metric: f1 (macro-F1, default), accuracy, uar (unweighted average recall), auc (speaker "
        "default), eer, min_dcf_01, min_dcf_05.",
    ),
    test_fraction: float = _opt.TEST_FRACTION,
    folds: int | None = _opt.FOLDS,
    classes: str | None = _opt.CLASSES,
    predictions: bool = _opt.PREDICTIONS,
    families: Path | None = typer.Option(
        None,
        "--families",
        help="Language -> family file (TSV `language<TAB>family` or JSON), merged over the shipped Common "
        "Voice map (its entries win).",
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
    conditions: str | None = typer.Option(
        None,
        "--conditions",
        help="Run only these conditions, e.g. zero_shot (the zero-shot matrix on its own: N of j, tested on "
        "i, no 2N needed) or single,zero_shot. Default: single,self,pair,zero_shot.",
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model name for the tables (default from the cache)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or summary table."),
    device: str | None = typer.Option(
        None,
        "--device",
        help="Where the speaker sweep's PLDA back-ends (--probe plda / plda_full) are fitted and scored, all "
        "models of a (layer, seed) in one batched run: cpu (default) or a torch device such as cuda or "
        "cuda:1 (the per-speaker statistics stay on the CPU). Other probes run on the CPU.",
    ),
) -> None:
    from cltm.transfer import (
        ExecutionSettings,
        PlanSettings,
        load_families,
        read_runs,
        result_from_runs,
        run_matrix,
    )
    from cltm.transfer.runner import NothingToRun

    sources = [x for x in (cache, embeddings, from_runs) if x is not None]
    if len(sources) != 1:
        raise fail("give exactly one of --cache, --embeddings or --from-runs")
    check_inputs(
        cache=cache,
        embeddings=embeddings,
        from_runs=from_runs,
        manifest=manifest,
        families=families,
        trials=trials,
    )
    check_out_dir(out)
    settings = probe_settings(probe, solver, hidden, patience, max_epochs, no_early_stopping)
    if device is not None:
        settings = _with_device(settings, device, task)
    if parallel not in ("joblib", "dask", "ray"):
        raise typer.BadParameter(f"must be joblib, dask or ray, not {parallel!r}", param_hint="--parallel")
    try:
        layer_tokens(layers)
    except ValueError as err:
        raise fail(str(err)) from None
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
            features, man = load_features(cache, embeddings, manifest)
            trial_list = None
            if trials is not None:
                from cltm.corpus.manifest import read_table

                trial_list = read_table(trials, string_columns=("enroll", "test"))
                missing = {"enroll", "test", "label"} - set(trial_list.columns)
                if missing:
                    raise fail(
                        f"--trials {trials}: missing column(s) {sorted(missing)}; need enroll, test, label"
                    )
            seed_spec = _parse_seeds(seeds)
            plan = PlanSettings(
                n=n,
                seeds=seed_spec if isinstance(seed_spec, int) else tuple(seed_spec),
                layers=layers,
                languages=tuple(_split_list(languages)) if _split_list(languages) else None,
                donors=tuple(_split_list(donors)) if _split_list(donors) else None,
                conditions=chosen_conditions(conditions, no_zero_shot),
                test_fraction=test_fraction,
                trials=trial_list,
                folds=folds,
                classes=tuple(_split_list(classes)) if _split_list(classes) else None,
                metric=metric,
                families=family_map,
                predictions=predictions,
            )
            total = layer_count(features, layers, settings)
            with layer_progress(not quiet, f"CLTM sweep ({task})", total) as advance:
                result = run_matrix(
                    features,
                    man,
                    task,
                    plan=plan,
                    probe=settings,
                    execution=ExecutionSettings(
                        n_jobs=n_jobs, parallel=parallel, scheduler=scheduler, progress=advance, model=model
                    ),
                )
    except typer.Exit:
        raise
    except NothingToRun as err:
        raise fail(f"nothing could be computed: {err}", EXIT_FAILED) from None
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        raise fail(str(err)) from None

    # a plan without self and pair (e.g. --conditions zero_shot) gives runs, not matrices
    matrix_plan = from_runs is not None or {"self", "pair"} <= set(
        chosen_conditions(conditions, no_zero_shot)
    )
    if (result.properties.height if matrix_plan else result.runs.height) == 0:
        # nothing to write over an earlier result: say why, exit 1
        from rich.console import Console

        print_left_out(Console(stderr=True), None, getattr(result, "notes", ()))
        raise fail(nothing_computed_message(result, "matrix"), EXIT_FAILED)
    write_engine_results(out, result)
    if not quiet and not matrix_plan:
        from rich.console import Console

        from cltm.transfer.runner import layer_scores

        conds = sorted(result.runs["condition"].unique().to_list())
        typer.echo(layer_scores(result, conds).drop("task", "model", "probe"))
        print_left_out(Console(), result.skipped, getattr(result, "notes", ()))
        typer.echo(
            f"wrote {out}/runs.parquet, confusion.parquet ({result.runs.height} runs; "
            "no CLTM without self and pair)"
        )
    elif not quiet:
        print_summary(result.properties, result.skipped, result.notes)
        typer.echo(
            f"wrote {out}/runs.parquet, matrices.parquet, properties.parquet, confusion.parquet "
            f"({result.matrices.height} cells, {result.properties.height} matrices)"
        )


def chosen_conditions(text: str | None, no_zero_shot: bool) -> tuple[str, ...]:
    """``--conditions`` (comma list) or the default four, less zero_shot with ``--no-zero-shot``."""
    from cltm.transfer.tables import CONDITIONS

    chosen = tuple(_split_list(text) or CONDITIONS)
    unknown = [c for c in chosen if c not in CONDITIONS]
    if unknown:
        raise typer.BadParameter(f"unknown condition(s) {unknown}; choose from {', '.join(CONDITIONS)}")
    chosen = tuple(c for c in chosen if not (no_zero_shot and c == "zero_shot"))
    if not chosen:
        raise typer.BadParameter("no condition left to run", param_hint="--conditions")
    return chosen


def layer_count(features, layers, settings) -> int | None:
    """How many layer steps the engine will report (1 for a multi-layer probe); None when unknown."""
    from cltm.layers import parse_layers
    from cltm.transfer.evaluators import PROBES, canonical_probe_name

    if settings.name and PROBES.get(canonical_probe_name(settings.name)) is not None:
        if PROBES[canonical_probe_name(settings.name)].multi_layer:
            return 1
    try:
        return len(
            parse_layers(layers, features.n_layers if hasattr(features, "n_layers") else len(features))
        )
    except ValueError:
        return None


@contextlib.contextmanager
def layer_progress(enabled: bool, title: str, total: int | None = None):
    """A counting bar over layers drawn by the CLI; yields the engine's ``progress(k)`` callback."""
    from cltm.progress import counting_progress

    with counting_progress("layers", title=title, enabled=enabled, transient=True) as bar:
        task = bar.add_task("layers", total=total)
        yield lambda k: bar.advance(task, k)


def register(app: typer.Typer) -> None:
    app.command(
        "matrix", help=HELP, short_help="Per-layer transfer matrices (CLTM) with SEs and properties."
    )(matrix_command)
