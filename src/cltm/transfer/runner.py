"""``run_matrix``: the CLTM sweep over layers, seeds, targets and donors from cached (or any) embeddings.

Work is arranged so nothing is computed cell by cell where structure allows (DESIGN §5): one layer is read at
a time, and within it every (seed, target) is one *problem group* handed to the probe's evaluator
(``cltm.transfer.evaluators``), which shares work across the group's conditions. Layers run in parallel with
joblib (``parallel="joblib"``), its Dask back-end (``"dask"``, with a scheduler address or a local cluster) or
Ray (``"ray"``); results are assembled in a fixed order, so the same inputs and seeds give identical tables
whatever the back-end and the number of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cltm.fileio import stable_hash
from cltm.tasks import get_task
from cltm.transfer.conditions import (
    LanguagePlan,
    plan_languages,
    seed_list,
    task_label,
)
from cltm.transfer.evaluators import (
    LOGISTIC_SOLVERS,
    ClassificationGroup,
    Problem,
    VerificationGroup,
    get_probe,
)
from cltm.transfer.properties import matrix_properties
from cltm.transfer.stats import matrix_from_runs
from cltm.transfer.tables import RUNS_COLUMNS, MatrixResult, conform, empty_frame

PARALLEL_BACKENDS = ("joblib", "dask", "ray")


# ------------------------------------------------------------------------------------------------------------
# Features: a Cache, a path to one, or an array [n_layers, n_utts, dim]
# ------------------------------------------------------------------------------------------------------------


def _is_cache(features: Any) -> bool:
    return hasattr(features, "read_layer") and hasattr(features, "n_layers")


def _open_features(features: Any) -> Any:
    if isinstance(features, (str, Path)):
        from cltm.store import Cache

        return Cache.open(features)
    return features


def _n_layers(features: Any) -> int:
    return int(features.n_layers) if _is_cache(features) else len(features)


def _read_layer(features: Any, layer: int) -> np.ndarray:
    """One layer as float32 [n_utts, dim] (the cache's hot path; arrays are sliced)."""
    if _is_cache(features):
        return features.read_layer(layer)
    return np.asarray(features[layer], dtype=np.float32)


config_hash = stable_hash


# ------------------------------------------------------------------------------------------------------------
# One layer: every (seed, target) group through the probe's evaluator
# ------------------------------------------------------------------------------------------------------------


def problem_group_conditions(
    plans: dict[str, LanguagePlan],
    target: str,
    seed: int,
    *,
    donors: Sequence[str] | None,
    zero_shot: bool,
) -> list[Problem]:
    """The problems of one (seed, target): single, self, pair per donor, zero_shot per donor (plan order)."""
    tp = plans[target]
    others = [d for d in plans if d != target and (donors is None or d in donors)]
    problems = [Problem("single", target, tp.rows_n[seed]), Problem("self", target, tp.rows_2n[seed])]
    problems += [Problem("pair", d, np.concatenate([tp.rows_n[seed], plans[d].rows_n[seed]])) for d in others]
    if zero_shot:
        problems += [Problem("zero_shot", d, plans[d].rows_n[seed]) for d in others]
    return problems


def _layer_rows(
    features: Any,
    layer: int,
    labels: np.ndarray,
    plans: dict[str, LanguagePlan],
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """All runs of one layer (a pure function of its inputs: safe to run in any worker).

    ``features`` is a Cache (or its path), read here, or the layer's own 2-D array.
    """
    features = _open_features(features)
    X = np.asarray(features, dtype=np.float32) if np.ndim(features) == 2 else _read_layer(features, layer)
    spec = get_probe(settings["probe"], settings["kind"])
    evaluate = spec.naive if settings.get("naive") else spec.fast
    rows: list[dict[str, Any]] = []
    for seed in settings["seeds"]:
        targets = list(plans)
        problem_lists = [
            problem_group_conditions(
                plans, t, seed, donors=settings["donors"], zero_shot=settings["zero_shot"]
            )
            for t in targets
        ]
        if settings["kind"] == "verification":
            groups: list[Any] = [
                VerificationGroup(p, plans[t].trials, t) for t, p in zip(targets, problem_lists, strict=True)
            ]
        else:
            groups = [
                ClassificationGroup(p, plans[t].test_rows, settings["n_classes"], t)
                for t, p in zip(targets, problem_lists, strict=True)
            ]
        results = evaluate(X, labels, groups, settings["options"])
        for target, problems, metrics in zip(targets, problem_lists, results, strict=True):
            for problem, values in zip(problems, metrics, strict=True):
                rows.append(
                    {
                        "layer": layer,
                        "condition": problem.condition,
                        "target": target,
                        "donor": problem.donor,
                        "seed": seed,
                        "n_train": int(len(problem.train_rows)),
                        **values,
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------------------------
# Parallel back-ends: joblib (loky), joblib's Dask back-end, Ray
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _parallel_context(parallel: str, scheduler: str | None, n_jobs: int) -> Iterator[dict[str, Any]]:
    """Yields joblib.Parallel keyword arguments for the chosen back-end (and owns any cluster it starts)."""
    import joblib

    if parallel == "joblib":
        yield {"n_jobs": n_jobs}
    elif parallel == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - dask is a declared extra
            raise ImportError("parallel='dask' needs dask[distributed]: pip install 'cltm[dask]'") from err
        with contextlib.ExitStack() as stack:
            if scheduler:
                client = stack.enter_context(Client(scheduler))
            else:
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=max(1, n_jobs),
                        threads_per_worker=1,
                        processes=False,
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(Client(cluster))
            with joblib.parallel_config(backend="dask", wait_for_workers_timeout=60):
                yield {"n_jobs": -1, "client": client}
    elif parallel == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as err:
            raise ImportError("parallel='ray' needs ray: pip install 'cltm[ray]'") from err
        started = False
        if not ray.is_initialized():
            ray.init(address=scheduler) if scheduler else ray.init(num_cpus=max(1, n_jobs))
            started = True
        register_ray()
        try:
            with joblib.parallel_config(backend="ray"):
                yield {"n_jobs": -1, "return_as": "list"}  # ray's joblib back-end has no generator mode
        finally:
            if started:
                ray.shutdown()
    else:
        raise ValueError(f"parallel must be one of {PARALLEL_BACKENDS}, got {parallel!r}")


def _run_layers(
    features: Any,
    layers: list[int],
    labels: np.ndarray,
    plans: dict[str, LanguagePlan],
    settings: dict[str, Any],
    *,
    n_jobs: int,
    parallel: str,
    scheduler: str | None,
    progress: bool,
) -> list[list[dict[str, Any]]]:
    from joblib import Parallel, delayed

    # workers get a path to the cache (re-opened there) or the one layer they need (memory-mapped by joblib)
    def payload(layer: int) -> Any:
        if _is_cache(features):
            return str(features.path) if hasattr(features, "path") else features
        return features[layer]

    what = f"{settings['probe']}, {len(plans)} langs x {len(settings['seeds'])} seeds"
    with _progress(progress, len(layers), what) as advance:
        if parallel == "joblib" and n_jobs == 1:
            out = []
            for layer in layers:
                out.append(_layer_rows(payload(layer), layer, labels, plans, settings))
                advance()
            return out
        with _parallel_context(parallel, scheduler, n_jobs) as kwargs:
            kwargs.pop("client", None)
            runner = Parallel(**{"return_as": "generator", **kwargs})
            out = []
            for rows in runner(
                delayed(_layer_rows)(payload(layer), layer, labels, plans, settings) for layer in layers
            ):
                out.append(rows)
                advance()
            return out


@contextlib.contextmanager
def _progress(enabled: bool, total: int, what: str = "") -> Iterator[Any]:
    from cltm.progress import counting_progress

    # the ETA after the first layer tells whether to switch back-end or narrow --layers
    title = f"CLTM sweep{' (' + what + ')' if what else ''}"
    with counting_progress("layers", title=title, enabled=enabled, transient=True) as bar:
        task = bar.add_task("layers", total=total)
        yield lambda: bar.advance(task)


# ------------------------------------------------------------------------------------------------------------
# The public entry point
# ------------------------------------------------------------------------------------------------------------


def run_matrix(
    features: Any,
    manifest: pl.DataFrame | None = None,
    task: str = "gender",
    *,
    n: int,
    seeds: int | Iterable[int],
    probe: str | None = None,
    layers: Sequence[int] | None = None,
    languages: Sequence[str] | None = None,
    donors: Sequence[str] | None = None,
    metric: str | None = None,
    zero_shot: bool = True,
    n_jobs: int = 1,
    parallel: str = "joblib",
    scheduler: str | None = None,
    progress: bool = True,
    label: str | None = None,
    trials: pl.DataFrame | None = None,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    trial_seed: int = 0,
    families: dict[str, str] | None = None,
    model: str | None = None,
    C: float = 1.0,
    solver: str = "shared",
    backend_params: dict[str, Any] | None = None,
    naive: bool = False,
) -> MatrixResult:
    """Per-layer CLTMs: train every condition (single, self, pair, zero_shot) over seeds, then the statistics.

    ``features``: a ``cltm.store.Cache`` (or its path), or an array [n_layers, n_utts, dim] aligned with
    ``manifest``'s rows (bring-your-own embeddings; ``manifest`` is required then). ``task``: ``gender``,
    ``speaker`` or any manifest label column. ``n``: N per class (classification) or N utterances (speaker).
    ``seeds``: a count S (seeds 0..S-1) or a list. ``probe``: ``logreg`` (default for classification) or
    another registered classifier; ``plda`` (default for speaker) or another back-end (see
    ``evaluators.PROBES``). ``layers``: layer indices (default all). ``languages``: targets and donors
    (default all in the manifest); ``donors`` narrows the donors. ``metric``: the matrix metric (default
    macro-F1, AUC for speaker). ``trials``: a user trial list (enroll, test, label utt_ids) instead of the
    generated one. ``families``: a language -> family map for the family properties (default: the shipped
    Common Voice map). ``C``: inverse L2 strength of ``logreg``; ``solver``: how ``logreg`` fits binary tasks
    (``shared``, default: one L-BFGS run for all training sets of a (layer, seed), see
    ``cltm.probes.shared_logistic``; ``sklearn``: values identical to the naive loop; ``batched``). ``naive``:
    fit one estimator per problem instead of the fast path (for checks and benchmarks).

    Subsets and test sets come from ``plan_languages`` (the same source the fine-tune path uses). Languages
    with too little data are listed in ``result.skipped`` and left out. Same inputs and seeds -> identical
    tables.
    """
    features = _open_features(features)
    if manifest is None:
        if not _is_cache(features):
            raise ValueError("bring-your-own embeddings need the manifest their rows are aligned with")
        manifest = features.manifest
    n_layers = _n_layers(features)
    n_utts = features.n_rows if _is_cache(features) and hasattr(features, "n_rows") else np.shape(features)[1]
    if n_utts != manifest.height:
        raise ValueError(
            f"features have {n_utts} rows but the manifest has {manifest.height}: "
            "they must be aligned row by row"
        )
    layer_list = list(range(n_layers)) if layers is None else [int(x) % n_layers for x in layers]
    bad = [x for x in (layers or []) if not -n_layers <= int(x) < n_layers]
    if bad:
        raise ValueError(
            f"layer(s) {bad} out of range: the features have {n_layers} layers (0..{n_layers - 1})"
        )
    if parallel not in PARALLEL_BACKENDS:
        raise ValueError(f"parallel must be one of {PARALLEL_BACKENDS}, got {parallel!r}")
    if solver not in LOGISTIC_SOLVERS:
        raise ValueError(f"solver must be one of {LOGISTIC_SOLVERS}, got {solver!r}")
    task_spec = get_task(task, manifest, label=label)
    kind = task_spec.kind
    spec = get_probe(probe, kind)
    seeds_ = seed_list(seeds)

    usable = manifest
    if _is_cache(features) and hasattr(features, "done"):
        done = np.asarray(features.done, dtype=bool)
        if not done.all():
            # rows that were never extracted read as zeros: keep them out of every subset and test set
            usable = manifest.with_columns(pl.Series("__cltm_done", done))
    plans, skipped = plan_languages(
        usable,
        task,
        n=n,
        seeds=seeds_,
        languages=languages,
        label=label,
        test_fraction=test_fraction,
        trials=trials,
        split_seed=split_seed,
        trial_seed=trial_seed,
        usable_column="__cltm_done" if "__cltm_done" in usable.columns else None,
    )
    label_col = task_label(task, label)
    if kind == "classification":
        values = task_spec.labels(manifest)
        classes = task_spec.class_list(manifest)
        code = {c: k for k, c in enumerate(classes)}
        labels = np.array([code.get(v, -1) for v in values.to_list()], dtype=np.int64)
        n_classes = len(classes)
    else:
        speakers = manifest["speaker"].cast(pl.String).to_list()
        code = {s: k for k, s in enumerate(dict.fromkeys(speakers))}
        labels = np.array([code[s] for s in speakers], dtype=np.int64)
        n_classes = len(code)

    model_id = model or (
        str(features.attrs.get("model_id", "cache"))
        if _is_cache(features) and hasattr(features, "attrs")
        else "embeddings"
    )
    settings_for_hash = {
        "task": task,
        "label": label_col,
        "n": n,
        "seeds": seeds_,
        "probe": spec.name,
        "C": C,
        "solver": solver,
        "backend_params": backend_params,
        "languages": sorted(plans),
        "donors": sorted(donors) if donors is not None else None,
        "zero_shot": zero_shot,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "trial_seed": trial_seed,
        "model": model_id,
        "n_utts": manifest.height,
        "user_trials": trials.height if trials is not None else None,
    }
    chash = config_hash(settings_for_hash)
    settings = {
        "probe": spec.name,
        "kind": kind,
        "seeds": seeds_,
        "donors": list(donors) if donors is not None else None,
        "zero_shot": zero_shot,
        "n_classes": n_classes,
        "options": {"C": C, "solver": solver, "backend_params": dict(backend_params or {})},
        "naive": naive,
    }
    if plans:
        per_layer = _run_layers(
            features,
            layer_list,
            labels,
            plans,
            settings,
            n_jobs=n_jobs,
            parallel=parallel,
            scheduler=scheduler,
            progress=progress,
        )
        rows = [row for layer_rows in per_layer for row in layer_rows]
    else:
        rows = []
    if rows:
        runs = pl.DataFrame(rows, infer_schema_length=None).with_columns(
            pl.lit(task).alias("task"),
            pl.lit(model_id).alias("model"),
            pl.lit(spec.name).alias("probe"),
            pl.lit("probe").alias("source"),
            pl.lit(chash).alias("config_hash"),
        )
        runs = conform(runs, RUNS_COLUMNS)
    else:
        runs = empty_frame(RUNS_COLUMNS)
    return result_from_runs(runs, metric=metric, families=families, skipped=skipped)


def result_from_runs(
    runs: pl.DataFrame,
    *,
    metric: str | None = None,
    families: dict[str, str] | None = None,
    skipped: pl.DataFrame | None = None,
    exclude_unstable: bool = False,
) -> MatrixResult:
    """Matrices, properties and language scores from a runs table (ours, or read from another pipeline)."""
    if families is None:
        from cltm.transfer.families import default_families

        families = default_families()
    matrices = matrix_from_runs(runs, metric)
    properties, language_scores = matrix_properties(
        matrices, families=families, exclude_unstable=exclude_unstable
    )
    result = MatrixResult(
        runs=runs, matrices=matrices, properties=properties, language_scores=language_scores
    )
    if skipped is not None:
        result.skipped = skipped
    return result
