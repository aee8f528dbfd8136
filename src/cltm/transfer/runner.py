"""``run_matrix``: the one experiment engine (CLTM sweeps, per-layer probe studies, K-fold) over any features.

One plan serves every command: ``cltm matrix`` runs the four conditions (single, self, pair, zero_shot);
``cltm probe`` runs the ``single`` condition (N per class, or every training row) with seeds and SEs, plus
all languages pooled; ``cltm probe --cross`` adds ``zero_shot`` (train on j, test on i) without needing 2N.
Subsets and test sets come from ``cltm.transfer.conditions.plan_languages``; probes from the one registry in
``cltm.transfer.evaluators``; task facts from ``cltm.tasks``.

Work is arranged so nothing is computed cell by cell where structure allows (DESIGN §5): one layer is read at
a time, and within it every (fold, seed, target) is one *problem group* handed to the probe's evaluator,
which shares work across the group's conditions. Layers run in parallel with joblib (``parallel="joblib"``),
its Dask back-end (``"dask"``) or Ray (``"ray"``); results are assembled in a fixed order, so the same inputs
and seeds give identical tables whatever the back-end and the number of workers.

K-fold (``PlanSettings.folds``): every speaker is tested exactly once; runs carry their ``fold``, Perf is the
mean over folds x seeds and its SE the standard error over those runs (folds x seeds runs per condition:
``matrix_from_runs`` treats each (fold, seed) run as one draw).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from cltm.fileio import stable_hash
from cltm.layers import parse_layers
from cltm.tasks import get_task, restrict_classes
from cltm.transfer.conditions import LanguagePlan, plan_languages, seed_list
from cltm.transfer.embeddings import ArrayFeatures, FeatureSource, as_feature_source
from cltm.transfer.evaluators import (
    LOGISTIC_SOLVERS,
    PROBES,
    ClassificationGroup,
    ProbeSpec,
    Problem,
    VerificationGroup,
    fits_in_lockstep,
    get_probe,
    lockstep_for_hash,
)
from cltm.transfer.properties import matrix_properties
from cltm.transfer.stats import incomplete_targets, matrix_from_runs
from cltm.transfer.tables import (
    CONDITIONS,
    CONFUSION_COLUMNS,
    PREDICTIONS_COLUMNS,
    RUNS_COLUMNS,
    SKIPPED_COLUMNS,
    MatrixResult,
    conform,
    empty_frame,
)

PARALLEL_BACKENDS = ("joblib", "dask", "ray")
POOLED = "pooled"


class NothingToRun(ValueError):
    """The input holds nothing to train or test on (an empty manifest): a failed run, not a usage error."""
config_hash = stable_hash


# ------------------------------------------------------------------------------------------------------------
# Settings: what to plan, which probe, how to execute
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSettings:
    """What to run. ``n``: N per class (classification) or N utterances (speaker); ``None`` = every training
    row (only without ``self``/``pair``). ``seeds``: a count S (0..S-1) or a tuple. ``layers``: the one
    ``--layers`` grammar (``cltm.layers``). ``conditions``: any of single, self, pair, zero_shot (the matrix
    needs all but zero_shot). ``pooled``: also train/test on all languages together (target ``pooled``,
    condition single). ``folds``: speaker-independent K-fold instead of the train/test split. ``metric``:
    the matrix metric (default: the task's). ``predictions``: keep per-utterance predictions.
    ``classes``: keep only these classes of a classification task (e.g. the emotions every language has).
    ``non_finite``: ``exclude`` rows with NaN/inf embeddings (counted in ``result.notes``) or ``refuse``.
    """

    n: int | None = 60
    seeds: int | tuple[int, ...] = 10
    layers: str | Sequence[int] | None = None
    languages: tuple[str, ...] | None = None
    donors: tuple[str, ...] | None = None
    conditions: tuple[str, ...] = CONDITIONS
    pooled: bool = False
    label: str | None = None
    classes: tuple[str, ...] | None = None
    test_fraction: float = 0.25
    split_seed: int = 0
    trial_seed: int = 0
    trials: pl.DataFrame | None = None
    folds: int | None = None
    metric: str | None = None
    families: dict[str, str] | None = None
    predictions: bool = False
    non_finite: str = "exclude"


@dataclass(frozen=True)
class ProbeSettings:
    """Which probe and its parameters. ``name``: a registered name (``evaluators.probe_names()``) or alias;
    ``estimator``: a scikit-learn style classifier object used instead (cloned per training set). ``C`` /
    ``solver``: logreg; ``hidden``, ``early_stopping``, ``patience``, ``max_epochs``: mlp and wsum;
    ``backend_params``: the verification back-end's parameters (e.g. ``n_components``); ``lockstep``: how
    the sweep fits its PLDA back-ends all at once (fields of ``cltm.probes.plda_many.ManyPLDASettings``
    over ``evaluators.PLDA_LOCKSTEP_DEFAULTS``, e.g. ``{"device": "cuda"}``, or
    ``evaluators.PLDA_LOCKSTEP_EXACT``)."""

    name: str | None = None
    estimator: Any = None
    C: float = 1.0
    solver: str = "shared"
    hidden: tuple[int, ...] | None = None
    early_stopping: bool = True
    patience: int | None = None
    max_epochs: int | None = None
    backend_params: dict[str, Any] = field(default_factory=dict)
    lockstep: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        mlp = {"hidden": self.hidden, "patience": self.patience, "max_epochs": self.max_epochs}
        if not self.early_stopping:
            mlp["early_stopping"] = False
        options = {
            "C": self.C,
            "solver": self.solver,
            "backend_params": dict(self.backend_params),
            "mlp": mlp,
        }
        if self.lockstep:  # only when set: the config hashes of runs that never use it stay as they were
            options["lockstep"] = dict(self.lockstep)
        return options


@dataclass(frozen=True)
class ExecutionSettings:
    """How to run: ``n_jobs`` workers over layers with ``parallel`` (joblib, dask, ray) at ``scheduler``;
    ``progress(k)`` is called after k more layers are done (the CLI draws the bar); ``naive`` fits one
    estimator per problem (checks, benchmarks); ``model`` names the model in the tables."""

    n_jobs: int = 1
    parallel: str = "joblib"
    scheduler: str | None = None
    progress: Callable[[int], None] | None = None
    naive: bool = False
    model: str | None = None


_PLAN_KEYS = {
    "n",
    "seeds",
    "layers",
    "languages",
    "donors",
    "label",
    "classes",
    "test_fraction",
    "split_seed",
    "trial_seed",
    "trials",
    "folds",
    "metric",
    "families",
    "predictions",
    "conditions",
    "pooled",
}
_PROBE_KEYS = {
    "C",
    "solver",
    "backend_params",
    "lockstep",
    "hidden",
    "early_stopping",
    "patience",
    "max_epochs",
}
_EXEC_KEYS = {"n_jobs", "parallel", "scheduler", "naive", "model"}


def _settings_from_keywords(
    plan: PlanSettings | None, probe: Any, execution: ExecutionSettings | None, legacy: dict[str, Any]
) -> tuple[PlanSettings, ProbeSettings, ExecutionSettings]:
    """The typed settings, from the objects or from the old keyword arguments (kept working)."""
    unknown = set(legacy) - _PLAN_KEYS - _PROBE_KEYS - _EXEC_KEYS - {"zero_shot", "progress"}
    if unknown:
        raise TypeError(f"run_matrix() got unexpected keyword argument(s) {sorted(unknown)}")
    plan_kw = {k: v for k, v in legacy.items() if k in _PLAN_KEYS}
    if "seeds" in plan_kw and not isinstance(plan_kw["seeds"], (int, np.integer)):
        plan_kw["seeds"] = tuple(plan_kw["seeds"])
    for key in ("languages", "donors"):
        if plan_kw.get(key) is not None:
            plan_kw[key] = tuple(plan_kw[key])
    if legacy.get("zero_shot") is False:
        plan_kw["conditions"] = tuple(c for c in plan_kw.get("conditions", CONDITIONS) if c != "zero_shot")
    plan = replace(plan, **plan_kw) if plan is not None else PlanSettings(**plan_kw)
    probe_kw = {k: v for k, v in legacy.items() if k in _PROBE_KEYS}
    if probe_kw.get("backend_params") is None:
        probe_kw.pop("backend_params", None)
    if isinstance(probe, ProbeSettings):
        probe_settings = replace(probe, **probe_kw)
    elif probe is None or isinstance(probe, str):
        probe_settings = ProbeSettings(name=probe, **probe_kw)
    else:
        probe_settings = ProbeSettings(estimator=probe, **probe_kw)
    exec_kw = {k: v for k, v in legacy.items() if k in _EXEC_KEYS}
    if callable(legacy.get("progress")):
        exec_kw["progress"] = legacy["progress"]
    execution = replace(execution, **exec_kw) if execution is not None else ExecutionSettings(**exec_kw)
    return plan, probe_settings, execution


# ------------------------------------------------------------------------------------------------------------
# One layer (or, for a multi-layer probe, one stack of layers): every (fold, seed, target) group
# ------------------------------------------------------------------------------------------------------------


def _train_languages(condition: str, target: str, donor: str, plans: dict[str, LanguagePlan]) -> str:
    if target == POOLED:
        return "+".join(lang for lang in plans if lang != POOLED)
    return {"single": target, "self": target, "pair": f"{target}+{donor}", "zero_shot": donor}[condition]


def problem_group_conditions(
    plans: dict[str, LanguagePlan],
    target: str,
    seed: int,
    *,
    donors: Sequence[str] | None,
    zero_shot: bool = True,
    conditions: Sequence[str] | None = None,
) -> list[Problem]:
    """The problems of one (seed, target), in plan order: single, self, pair per donor, zero_shot per donor
    (those of ``conditions``). Each problem carries the dev rows of its training languages."""
    conditions = tuple(conditions or CONDITIONS)
    if not zero_shot:
        conditions = tuple(c for c in conditions if c != "zero_shot")
    tp = plans[target]
    if target == POOLED:
        return [Problem("single", POOLED, tp.rows_n[seed], tp.dev_rows)]
    others = [d for d in plans if d not in (target, POOLED) and (donors is None or d in donors)]
    problems = []
    if "single" in conditions:
        problems.append(Problem("single", target, tp.rows_n[seed], tp.dev_rows))
    if "self" in conditions:
        problems.append(Problem("self", target, tp.rows_2n[seed], tp.dev_rows))
    if "pair" in conditions:
        problems += [
            Problem(
                "pair",
                d,
                np.concatenate([tp.rows_n[seed], plans[d].rows_n[seed]]),
                np.concatenate([tp.dev_rows, plans[d].dev_rows]),
            )
            for d in others
        ]
    if "zero_shot" in conditions:
        problems += [Problem("zero_shot", d, plans[d].rows_n[seed], plans[d].dev_rows) for d in others]
    return problems


def _layer_rows(
    features: Any,
    layer: int | None,
    labels: np.ndarray,
    fold_plans: list[tuple[int | None, dict[str, LanguagePlan]]],
    settings: dict[str, Any],
) -> dict[str, pl.DataFrame]:
    """All runs of one layer (a pure function of its inputs: safe to run in any worker).

    ``features``: a cache path (re-opened here) or the layer's own array (2-D; 3-D [rows, layers, dim] for a
    multi-layer probe, then ``layer`` is None).
    """
    if isinstance(features, str):
        X = as_feature_source(features).read_layer(layer)
    else:
        X = np.asarray(features, dtype=np.float32)
    spec: ProbeSpec = settings["spec"]
    if isinstance(spec, str):  # registered probes travel to workers by name (their evaluators are closures)
        spec = PROBES[spec]
    evaluate = spec.naive if settings.get("naive") else spec.fast
    classes = settings["classes"]
    k = len(classes)
    tables = {name: _ColumnStore() for name in ("runs", "confusion", "predictions", "weights")}
    for fold, plans in fold_plans:
        targets = list(plans)
        for seed in settings["seeds"]:
            problem_lists = [
                problem_group_conditions(
                    plans, t, seed, donors=settings["donors"], conditions=settings["conditions"]
                )
                for t in targets
            ]
            if settings["kind"] == "verification":
                groups: list[Any] = [
                    VerificationGroup(p, plans[t].trials, t)
                    for t, p in zip(targets, problem_lists, strict=True)
                ]
            else:
                groups = [
                    ClassificationGroup(p, plans[t].test_rows, len(classes), t)
                    for t, p in zip(targets, problem_lists, strict=True)
                ]
            results = evaluate(X, labels, groups, {**settings["options"], "seed": seed})
            for target, problems, metrics in zip(targets, problem_lists, results, strict=True):
                n = len(problems)
                key = {
                    "layer": layer,
                    "condition": [p.condition for p in problems],
                    "target": target,
                    "donor": [p.donor for p in problems],
                    "seed": seed,
                    "fold": fold,
                }
                preds = [values.pop("_pred", None) for values in metrics]
                scores = [values.pop("_scores", None) for values in metrics]
                weights = [values.pop("_layer_weights", None) for values in metrics]
                tables["runs"].add(
                    n,
                    {
                        **key,
                        "n_train": [int(len(p.train_rows)) for p in problems],
                        **_metric_columns(metrics),
                    },
                )
                if preds[0] is None:
                    continue
                y_test = labels[plans[target].test_rows]
                # every problem's confusion counts in one bincount: [problem, true * k + pred]
                codes = y_test[None, :] * k + np.asarray(preds, dtype=np.int64)
                offsets = np.arange(n)[:, None] * (k * k)
                counts = np.bincount((codes + offsets).ravel(), minlength=n * k * k)
                cells = np.flatnonzero(counts)
                which, cell = np.divmod(cells, k * k)
                tables["confusion"].add(
                    len(cells),
                    {
                        "layer": layer,
                        "condition": [problems[w].condition for w in which],
                        "target": target,
                        "donor": [problems[w].donor for w in which],
                        "seed": seed,
                        "fold": fold,
                        "true": [classes[c // k] for c in cell],
                        "pred": [classes[c % k] for c in cell],
                        "count": counts[cells].tolist(),
                    },
                )
                for w, problem in enumerate(problems):
                    one = {**key, "condition": problem.condition, "donor": problem.donor}
                    if weights[w] is not None:
                        stack = settings["stack_layers"]
                        tables["weights"].add(
                            len(stack),
                            {**one, "layer": list(stack), "weight": [float(v) for v in weights[w]]},
                        )
                    if settings.get("utt_ids") is not None:
                        ids = settings["utt_ids"][plans[target].test_rows]
                        train_langs = _train_languages(problem.condition, target, problem.donor, plans)
                        pred = preds[w]
                        tables["predictions"].add(
                            len(ids),
                            {
                                **one,
                                "utt_id": [str(u) for u in ids],
                                "train_languages": [train_langs] * len(ids),
                                "true": [classes[int(t)] for t in y_test],
                                "pred": [classes[int(p_)] for p_ in pred],
                                "classes": [list(classes)] * len(ids),
                                "scores": [None] * len(ids)
                                if scores[w] is None
                                else [[float(v) for v in row] for row in scores[w]],
                            },
                        )
    return {name: store.frame() for name, store in tables.items()}


def _metric_columns(metrics: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The metric values of a group's runs as columns (a metric absent from a run is None there)."""
    names = list(dict.fromkeys(name for values in metrics for name in values))
    return {name: [values.get(name) for values in metrics] for name in names}


class _ColumnStore:
    """Rows of one results table gathered a block at a time, column by column: a sweep of 50+ languages
    makes ~10^6 runs and 4x as many confusion cells, far too many for a dict per row."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.n = 0

    def add(self, n: int, block: dict[str, Any]) -> None:
        """``n`` rows; each value a list of n or a scalar that every row shares."""
        if not n:
            return
        for name, value in block.items():
            column = self.columns.get(name)
            if column is None:  # a column first seen now: None for the rows before
                column = self.columns[name] = [None] * self.n
            column.extend(value if isinstance(value, list) else [value] * n)
        for name, column in self.columns.items():
            if name not in block:
                column.extend([None] * n)
        self.n += n

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.columns, strict=False) if self.n else pl.DataFrame()


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
    source: FeatureSource,
    units: list[tuple[int | None, Any]],
    labels: np.ndarray,
    fold_plans: list[tuple[int | None, dict[str, LanguagePlan]]],
    settings: dict[str, Any],
    execution: ExecutionSettings,
) -> list[dict[str, pl.DataFrame]]:
    """``units``: (layer, payload) pairs; a payload is a cache path (workers re-open it) or an array."""
    from joblib import Parallel, delayed

    advance = execution.progress or (lambda k: None)
    if execution.parallel == "joblib" and execution.n_jobs == 1:
        out = []
        for layer, payload in units:
            out.append(_layer_rows(payload, layer, labels, fold_plans, settings))
            advance(1)
        return out
    chunks = [settings["seeds"]]
    if len(fold_plans) == 1:  # with folds, rows stay in (layer, fold, seed) order: no split
        chunks = seed_chunks(settings["seeds"], len(units), _worker_count(execution))
    jobs = [(layer, payload, {**settings, "seeds": chunk}) for layer, payload in units for chunk in chunks]
    with _parallel_context(execution.parallel, execution.scheduler, execution.n_jobs) as kwargs:
        kwargs.pop("client", None)
        runner = Parallel(**{"return_as": "generator", **kwargs})
        out = []
        for k, rows in enumerate(
            runner(
                delayed(_layer_rows)(payload, layer, labels, fold_plans, unit_settings)
                for layer, payload, unit_settings in jobs
            )
        ):
            out.append(rows)
            if (k + 1) % len(chunks) == 0:  # the progress callback counts whole layers
                advance(1)
        return out


def _worker_count(execution: ExecutionSettings) -> int:
    import os

    return execution.n_jobs if execution.n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + execution.n_jobs)


def seed_chunks(seeds: list[int], n_layers: int, n_workers: int) -> list[list[int]]:
    """The seeds of a layer split into the fewest contiguous chunks that spread layers x chunks evenly over
    the workers (whole layers as units leave workers idle at the end: 13 layers on 2 workers run 7 rounds
    for 6.5 rounds of work; halves of each layer's seeds give 13 rounds each). Each chunk is one job that
    reads its layer once, so chunks stay few, and hold at least two seeds: with fewer the cost of sending a
    layer to one more job outweighs the balance (measured on small sweeps)."""
    if n_workers <= 1 or len(seeds) < 4:
        return [list(seeds)]
    best, best_loss = 1, None
    for k in range(1, len(seeds) // 2 + 1):
        jobs = n_layers * k
        rounds = -(-jobs // n_workers)
        loss = rounds * n_workers / jobs - 1.0  # idle share of the workers
        if best_loss is None or loss < best_loss - 0.02:
            best, best_loss = k, loss
        if loss <= 0.02:
            break
    bounds = np.linspace(0, len(seeds), best + 1).round().astype(int)
    return [list(seeds[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# ------------------------------------------------------------------------------------------------------------
# The public entry point
# ------------------------------------------------------------------------------------------------------------


def _non_finite_rows(source: FeatureSource, layers: list[int], usable: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows whose embeddings hold NaN/inf in any of ``layers`` (one read per layer), with the layers hit."""
    bad = np.zeros(source.n_rows, bool)
    hit: dict[int, int] = {}
    for layer in layers:
        X = source.read_layer(layer)
        rows = ~np.isfinite(X).all(axis=1) & usable
        if rows.any():
            hit[layer] = int(rows.sum())
            bad |= rows
    return bad, hit


def _pooled_plan(plans: dict[str, LanguagePlan], seeds: list[int]) -> LanguagePlan:
    langs = list(plans.values())
    trials = None
    if langs[0].trials is not None:
        trials = pl.concat([p.trials for p in langs], how="vertical_relaxed")
    pooled = LanguagePlan(
        language=POOLED,
        test_rows=np.concatenate([p.test_rows for p in langs]),
        trials=trials,
        dev_rows=np.concatenate([p.dev_rows for p in langs]),
        fold=langs[0].fold,
    )
    for s in seeds:
        pooled.rows_n[s] = np.concatenate([p.rows_n[s] for p in langs])
    return pooled


def run_matrix(
    features: Any,
    manifest: pl.DataFrame | None = None,
    task: str = "gender",
    *,
    plan: PlanSettings | None = None,
    probe: Any = None,
    execution: ExecutionSettings | None = None,
    **keywords: Any,
) -> MatrixResult:
    """Per-layer runs of every planned condition over folds and seeds, then matrices and properties.

    ``features``: a ``FeatureSource`` (a ``cltm.store.Cache``, ``ArrayFeatures``), a cache path, an
    embeddings file, or an array [n_layers, n_utts, dim] aligned with ``manifest``'s rows (required then).
    ``task``: ``gender``, ``speaker`` or any manifest label column (``cltm.tasks``). ``plan``
    (``PlanSettings``), ``probe`` (a registered name, a ``ProbeSettings`` or an estimator object such as
    ``MLPProbe(hidden=(128, 16))``), ``execution`` (``ExecutionSettings``). The old keywords (``n=``,
    ``seeds=``, ``layers=``, ``C=``, ``n_jobs=`` ...) still work and override the objects' fields.

    Languages or folds with too little data are listed in ``result.skipped`` (with the numbers they have and
    need) and left out; rows with non-finite embeddings are excluded and counted in ``result.notes``.
    ``result.confusion`` holds the confusion counts of every classification run, ``result.predictions`` the
    per-utterance predictions (``plan.predictions``), ``result.layer_weights`` the wsum layer weights.
    Same inputs and seeds -> identical tables.
    """
    plan, probe_settings, execution = _settings_from_keywords(plan, probe, execution, keywords)
    if execution.parallel not in PARALLEL_BACKENDS:
        raise ValueError(f"parallel must be one of {PARALLEL_BACKENDS}, got {execution.parallel!r}")
    if probe_settings.solver not in LOGISTIC_SOLVERS:
        raise ValueError(f"solver must be one of {LOGISTIC_SOLVERS}, got {probe_settings.solver!r}")
    unknown = [c for c in plan.conditions if c not in CONDITIONS]
    if unknown or not plan.conditions:
        raise ValueError(f"conditions must be among {CONDITIONS}, got {list(plan.conditions)}")
    if plan.non_finite not in ("exclude", "refuse"):
        raise ValueError(f"non_finite must be 'exclude' or 'refuse', got {plan.non_finite!r}")
    source = as_feature_source(features, manifest)
    if manifest is None:
        manifest = source.manifest
        if manifest is None:
            raise ValueError("bring-your-own embeddings need the manifest their rows are aligned with")
    if source.n_rows != manifest.height:
        raise ValueError(
            f"features have {source.n_rows} rows but the manifest has {manifest.height}: "
            "they must be aligned row by row"
        )
    if manifest.height == 0:
        raise NothingToRun("the manifest is empty: there is nothing to train or test on")
    layer_list = parse_layers(plan.layers, source.n_layers)
    task_spec = get_task(task, manifest, label=plan.label)
    if plan.classes is not None:
        task_spec = restrict_classes(task_spec, plan.classes, manifest)
    kind = task_spec.kind
    if plan.metric is not None and plan.metric not in task_spec.metrics:
        raise ValueError(
            f"metric {plan.metric!r} does not apply to the {kind} task {task_spec.name!r}; it reports "
            f"{', '.join(task_spec.metrics)}"
        )
    estimator = probe_settings.estimator
    spec = get_probe(estimator if estimator is not None else probe_settings.name, kind)
    if probe_settings.lockstep and not fits_in_lockstep(spec.name):
        raise ValueError(
            f"lockstep settings {sorted(probe_settings.lockstep)} apply to the PLDA back-ends (plda, "
            f"plda_full) of a speaker sweep; the {spec.name!r} probe would ignore them: leave lockstep empty"
        )
    seeds_ = seed_list(plan.seeds)
    present = set(manifest["language"].cast(pl.String).to_list()) if "language" in manifest.columns else set()
    if plan.donors is not None:
        allowed = set(plan.languages) if plan.languages is not None else present
        bad = [d for d in plan.donors if d not in allowed]
        if bad:
            raise ValueError(
                f"unknown donor language(s) {bad}: donors must be among the "
                f"{'--languages' if plan.languages is not None else 'manifest languages'} {sorted(allowed)}"
            )
    double = "self" in plan.conditions or "pair" in plan.conditions
    if plan.n is None and double:
        raise ValueError("the self and pair conditions need N (n=...); n=None trains on every training row")

    usable = np.asarray(source.done, dtype=bool).copy()
    notes: list[str] = []
    bad_rows, hit = _non_finite_rows(source, layer_list, usable)
    if bad_rows.any():
        ids = manifest["utt_id"].cast(pl.String).to_numpy()[bad_rows][:5].tolist()
        where = ", ".join(f"layer {k}: {v}" for k, v in hit.items())
        message = (
            f"{int(bad_rows.sum())} row(s) have non-finite embedding values (NaN/inf) ({where}; e.g. {ids})"
        )
        if plan.non_finite == "refuse":
            raise ValueError(f"{message}; re-extract them or run with non-finite rows excluded")
        notes.append(f"{message}: excluded from every training and test set")
        usable &= ~bad_rows
    frame = manifest.with_columns(pl.Series("__cltm_usable", usable))
    fold_ids: list[int | None] = list(range(plan.folds)) if plan.folds else [None]
    fold_plans: list[tuple[int | None, dict[str, LanguagePlan]]] = []
    skipped_parts = []
    for fold in fold_ids:
        plans, skipped = plan_languages(
            frame,
            task_spec,
            n=plan.n,
            seeds=seeds_,
            languages=plan.languages,
            test_fraction=plan.test_fraction,
            trials=plan.trials,
            split_seed=plan.split_seed,
            trial_seed=plan.trial_seed,
            usable_column="__cltm_usable",
            double=double,
            folds=plan.folds,
            fold=fold,
        )
        skipped_parts.append(skipped)
        if plans and plan.pooled and len(plans) > 1:
            plans[POOLED] = _pooled_plan(plans, seeds_)
        if plans:
            fold_plans.append((fold, plans))
    skipped_all = pl.concat(skipped_parts).unique(maintain_order=True) if skipped_parts else None
    # a language dropped from one fold is dropped from every fold: Perf must average the same folds
    if plan.folds and fold_plans:
        every = set.intersection(*(set(p) for _, p in fold_plans)) if len(fold_plans) == plan.folds else set()
        fold_plans = [(f, {k: v for k, v in p.items() if k in every}) for f, p in fold_plans]
        fold_plans = [(f, p) for f, p in fold_plans if p]

    if kind == "classification":
        values = task_spec.labels(manifest)
        classes = task_spec.class_list(manifest.filter(pl.Series(usable)))
        code = {c: k for k, c in enumerate(classes)}
        labels = np.array([code.get(v, -1) for v in values.to_list()], dtype=np.int64)
    else:
        classes = []
        speakers = manifest["speaker"].cast(pl.String).to_list()
        scode = {s_: k for k, s_ in enumerate(dict.fromkeys(speakers))}
        labels = np.array([scode[s_] for s_ in speakers], dtype=np.int64)

    model_id = execution.model or (
        str(source.attrs.get("model_id", "cache")) if hasattr(source, "attrs") else "embeddings"
    )
    options = {**probe_settings.options(), "scores": plan.predictions}
    settings_for_hash = {
        "task": task_spec.name,
        "label": task_spec.label,
        "classes": list(task_spec.classes) if task_spec.classes is not None else None,
        "n": plan.n,
        "seeds": seeds_,
        "probe": spec.name,
        "probe_options": {k: v for k, v in options.items() if k != "scores"},
        "estimator": repr(estimator) if estimator is not None else None,
        "languages": sorted({lang for _, p in fold_plans for lang in p}),
        "donors": sorted(plan.donors) if plan.donors is not None else None,
        "conditions": list(plan.conditions),
        "folds": plan.folds,
        "test_fraction": plan.test_fraction,
        "split_seed": plan.split_seed,
        "trial_seed": plan.trial_seed,
        "model": model_id,
        "n_utts": manifest.height,
        "user_trials": plan.trials.height if plan.trials is not None else None,
    }
    lockstep = lockstep_for_hash(spec.name, options, execution.naive)
    if lockstep is not None:  # plda's fast path is approximate: its effective settings name the results
        settings_for_hash["lockstep"] = lockstep
    chash = config_hash(settings_for_hash)
    settings = {
        "spec": spec.name if PROBES.get(spec.name) is spec else spec,
        "kind": kind,
        "seeds": seeds_,
        "donors": list(plan.donors) if plan.donors is not None else None,
        "conditions": tuple(plan.conditions),
        "classes": classes,
        "options": options,
        "naive": execution.naive,
        "stack_layers": layer_list,
        "utt_ids": manifest["utt_id"].cast(pl.String).to_numpy() if plan.predictions else None,
    }
    path = str(source.path) if hasattr(source, "path") and not isinstance(source, ArrayFeatures) else None
    if spec.multi_layer:
        stack = np.stack([source.read_layer(layer) for layer in layer_list], axis=1)
        units: list[tuple[int | None, Any]] = [(None, stack)]
    else:
        units = [(layer, path if path is not None else source.read_layer(layer)) for layer in layer_list]
    parts = _run_layers(source, units, labels, fold_plans, settings, execution) if fold_plans else []

    def table(name: str, columns: dict[str, pl.DataType], extra: dict[str, Any]) -> pl.DataFrame:
        frames = [part[name] for part in parts if part[name].height]
        if not frames:
            return empty_frame(columns)
        df = pl.concat(frames, how="diagonal_relaxed").with_columns(
            *(pl.lit(v).alias(k) for k, v in extra.items())
        )
        return conform(df, columns)

    ident = {"task": task_spec.name, "model": model_id, "probe": spec.name}
    runs = table("runs", RUNS_COLUMNS, {**ident, "source": "probe", "config_hash": chash})
    result = result_from_runs(
        runs, metric=plan.metric or task_spec.default_metric, families=plan.families, skipped=skipped_all
    )
    result.confusion = table("confusion", CONFUSION_COLUMNS, ident)
    result.predictions = table("predictions", PREDICTIONS_COLUMNS, {**ident, "source": "probe"})
    weight_frames = [part["weights"] for part in parts if part["weights"].height]
    result.layer_weights = pl.concat(weight_frames, how="diagonal_relaxed") if weight_frames else None
    result.notes = notes
    return result


def per_class_recall(confusion: pl.DataFrame) -> pl.DataFrame:
    """Recall of every true class per run, from confusion counts (the diagonal over the row sums)."""
    keys = [c for c in CONFUSION_COLUMNS if c not in ("true", "pred", "count")]
    return (
        confusion.group_by(*keys, "true", maintain_order=True)
        .agg(
            (pl.col("count").filter(pl.col("pred") == pl.col("true")).sum() / pl.col("count").sum()).alias(
                "recall"
            ),
            pl.col("count").sum().alias("support"),
        )
        .sort(keys[:4] + ["condition", "target", "donor", "seed", "fold", "true"], nulls_last=True)
    )


def layer_scores(result: MatrixResult, conditions: Sequence[str] = ("single",)) -> pl.DataFrame:
    """The per-layer study view of a run: per (layer, condition, target, donor) the mean of every metric over
    seeds x folds, its standard error (``<metric>_se``, ddof=1 / sqrt(runs); null for one run), the number of
    runs and of test utterances per seed (all folds together; classification: from the confusion counts)."""
    from cltm.transfer.tables import METRIC_COLUMNS

    runs = result.runs.filter(pl.col("condition").is_in(list(conditions)))
    metrics = [m for m in METRIC_COLUMNS if runs[m].null_count() < runs.height] if runs.height else []
    keys = ["task", "model", "probe", "layer", "condition", "target", "donor"]
    aggs: list[pl.Expr] = [pl.len().alias("runs"), pl.col("n_train").mean().alias("n_train")]
    for m in metrics:
        aggs += [pl.col(m).mean().alias(m), (pl.col(m).std(ddof=1) / pl.len().sqrt()).alias(f"{m}_se")]
    table = runs.group_by(keys, maintain_order=True).agg(aggs)
    if result.confusion.height:
        # per seed, the test utterances of all folds (K-fold tests every utterance once); equal across seeds
        n_test = (
            result.confusion.group_by([*keys, "seed"])
            .agg(pl.col("count").sum().alias("n_test"))
            .group_by(keys)
            .agg(pl.col("n_test").max())
        )
        table = table.join(n_test, on=keys, how="left", nulls_equal=True)
    return table.sort("layer", "condition", "target", "donor", nulls_last=True)


def skipped_frame(rows: Iterable[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=SKIPPED_COLUMNS, orient="row")


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
    incomplete = incomplete_targets(runs)  # targets without a single/self row: listed, never dropped silently
    skipped = incomplete if skipped is None else pl.concat([skipped, incomplete], how="diagonal_relaxed")
    return MatrixResult(
        runs=runs, matrices=matrices, properties=properties, language_scores=language_scores, skipped=skipped
    )
