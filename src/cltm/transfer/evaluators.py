"""How the sweep trains and scores many related problems at once: a small registry of probe evaluators.

A *problem group* is everything one (layer, seed, target) needs: the conditions ``single``, ``self``, every
``pair`` and ``zero_shot`` share the target's test set (or trial list), and their training sets are unions of
the per-language N / 2N subsets. An evaluator takes the whole group, so it can share work across it
(DESIGN §5):

* classification probes fit all the group's problems with the batched logistic solver of ``cltm.probes``;
* verification back-ends are built from per-language sufficient statistics that add up (pair = stats(i) +
  stats(j), self = stats(N of i) + stats(the other N of i)); each target's trial list is scored by all of its
  models in one call (``score_trials_of_models``), the trial embeddings read once per group.

The estimators, statistics and solvers live in ``cltm.probes``; this module only arranges the work.
Each evaluator has a ``naive`` twin (one estimator fit per problem) that the tests and benchmarks compare
against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from cltm.probes.metrics import binary_metrics_by_column, classification_metrics, verification_metrics


@dataclass(frozen=True, eq=False)
class Problem:
    """One training set of a problem group: the condition, the donor and the manifest rows to train on."""

    condition: str
    donor: str
    train_rows: np.ndarray


@dataclass(frozen=True, eq=False)
class ClassificationGroup:
    """A (layer, seed, target) group for a classification task: ``y`` holds int class codes for every row."""

    problems: list[Problem]
    test_rows: np.ndarray
    n_classes: int
    target: str = ""


@dataclass(frozen=True, eq=False)
class VerificationGroup:
    """A (layer, seed, target) group for speaker verification; ``trials`` has enroll_row, test_row, label."""

    problems: list[Problem]
    trials: pl.DataFrame
    target: str = ""


def training_set_key(target: str, problem: Problem) -> tuple[str, ...]:
    """Which training set a problem uses, within one (layer, seed).

    Conditions share training sets: ``zero_shot`` from donor j trains on N of j, exactly ``single`` of j;
    ``pair`` (i, j) and (j, i) both train on N of i + N of j. Each distinct set is fitted once and scored on
    every test set that needs it (the problems differ only in what they are tested on).
    """
    if problem.condition in ("single", "zero_shot"):
        return ("n", problem.donor)
    if problem.condition == "self":
        return ("2n", target)
    if problem.condition == "pair":
        return ("pair", *sorted((target, problem.donor)))
    return (problem.condition, target, problem.donor)


def distinct_training_sets(groups: list) -> tuple[list[np.ndarray], list[list[int]]]:
    """(the distinct training row sets, per group the index of each problem's set), first-seen order."""
    index: dict[tuple[str, ...], int] = {}
    sets: list[np.ndarray] = []
    which: list[list[int]] = []
    for g in groups:
        ids = []
        for problem in g.problems:
            key = training_set_key(g.target, problem)
            if key not in index:
                index[key] = len(sets)
                sets.append(problem.train_rows)
            ids.append(index[key])
        which.append(ids)
    return sets, which


# evaluate(X, labels, groups, options) -> per group, one metrics dict per problem, in order. All groups of one
# call share a (layer, seed), so an evaluator may batch across targets and reuse per-language work.
Evaluator = Callable[[np.ndarray, np.ndarray, list, dict], list[list[dict[str, float]]]]


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    kind: str  # "classification" | "verification"
    fast: Evaluator
    naive: Evaluator
    description: str


PROBES: dict[str, ProbeSpec] = {}


def register_probe(name: str, kind: str, description: str) -> Callable[[Evaluator], Evaluator]:
    """Decorator registering the fast evaluator of a probe; ``register_naive`` adds its one-by-one twin."""

    def wrap(fn: Evaluator) -> Evaluator:
        PROBES[name] = ProbeSpec(name, kind, fn, PROBES[name].naive if name in PROBES else fn, description)
        return fn

    return wrap


def register_naive(name: str) -> Callable[[Evaluator], Evaluator]:
    def wrap(fn: Evaluator) -> Evaluator:
        spec = PROBES[name]
        PROBES[name] = ProbeSpec(spec.name, spec.kind, spec.fast, fn, spec.description)
        return fn

    return wrap


DEFAULT_PROBE = {"classification": "logreg", "verification": "plda"}


def get_probe(name: str | None, kind: str) -> ProbeSpec:
    name = name or DEFAULT_PROBE[kind]
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; known: {sorted(PROBES)}")
    spec = PROBES[name]
    if spec.kind != kind:
        usable = sorted(p for p, s in PROBES.items() if s.kind == kind)
        raise ValueError(f"probe {name!r} is a {spec.kind} probe; this task needs one of {usable}")
    return spec


def _classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    m = classification_metrics(y_true, y_pred)
    return {"f1": m["f1"], "accuracy": m["accuracy"]}


def _verification_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return dict(verification_metrics(labels, scores))


# ------------------------------------------------------------------------------------------------------------
# Classification: L2 logistic regression on standardised features
# ------------------------------------------------------------------------------------------------------------


def _logistic_estimator(options: dict):
    """The one-by-one reference estimator: the probes' ``LogisticProbe`` when available, else sklearn's
    pipeline."""
    C = float(options.get("C", 1.0))
    try:
        from cltm.probes import LogisticProbe  # type: ignore[attr-defined]

        return LogisticProbe(C=C)
    except ImportError:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000, tol=1e-6)
        )


LOGISTIC_SOLVERS = ("shared", "sklearn", "batched")


@register_probe("logreg", "classification", "L2 logistic regression on standardised features")
def logistic_fast(
    X: np.ndarray, y: np.ndarray, groups: list[ClassificationGroup], options: dict
) -> list[list[dict]]:
    """Each distinct training set of the (layer, seed) is fitted once (``distinct_training_sets``: zero-shot
    reuses single, pair (i, j) serves (j, i)), then every model predicts each test set that needs it.

    ``options["solver"]`` (binary labels; more classes always use scikit-learn):

    * ``"shared"`` (default): ``cltm.probes.fit_logistic_shared``, all distinct sets in one L-BFGS run whose
      products with the data are shared across the problems containing the same rows; the naive loop's
      objective and stopping rule (scikit-learn's lbfgs, tol 1e-4), so cell values agree up to the rare test
      row on a decision boundary (benchmarks/RESULTS.md measures the agreement);
    * ``"sklearn"``: the naive loop's own pipeline per distinct set (values identical to the naive loop);
    * ``"batched"``: ``cltm.probes.fit_logistic_subsets``, batched kernel Newton (exact to ~1e-8; slower).
    """
    if not groups:
        return []
    solver = options.get("solver", "shared")
    if solver not in LOGISTIC_SOLVERS:
        raise ValueError(f"unknown logistic solver {solver!r}; choose one of {LOGISTIC_SOLVERS}")
    sets, which = distinct_training_sets(groups)
    C = float(options.get("C", 1.0))
    if solver != "sklearn" and groups[0].n_classes == 2:
        if solver == "shared":
            from cltm.probes.shared_logistic import fit_logistic_shared

            fit = fit_logistic_shared(X, y, sets, C=C, tol=float(options.get("tol", 1e-4)))
        else:
            from cltm.probes.batched_logistic import fit_logistic_subsets

            fit = fit_logistic_subsets(X, y, sets, C=C)
        coef, intercept = fit.raw_coef, fit.raw_intercept
        out = []
        for g, ids in zip(groups, which, strict=True):
            distinct = sorted(set(ids))
            decision = np.asarray(X[g.test_rows], np.float64) @ coef[distinct].T + intercept[distinct]
            scores = dict(zip(distinct, binary_metrics_by_column(y[g.test_rows], decision > 0), strict=True))
            out.append([dict(scores[k]) for k in ids])
        return out

    models = [_logistic_estimator(options).fit(X[rows], y[rows]) for rows in sets]
    out = []
    for g, ids in zip(groups, which, strict=True):
        X_test, y_test = X[g.test_rows], y[g.test_rows]
        cache: dict[int, dict] = {}
        scores = []
        for k in ids:
            if k not in cache:
                cache[k] = _classification_scores(y_test, models[k].predict(X_test))
            scores.append(cache[k])
        out.append([dict(v) for v in scores])
    return out


@register_naive("logreg")
def logistic_naive(
    X: np.ndarray, y: np.ndarray, groups: list[ClassificationGroup], options: dict
) -> list[list[dict]]:
    """One estimator fit per problem (the reference the fast path is checked against)."""
    out = []
    for g in groups:
        X_test, y_test = X[g.test_rows], y[g.test_rows]
        scores = []
        for problem in g.problems:
            est = _logistic_estimator(options).fit(X[problem.train_rows], y[problem.train_rows])
            scores.append(_classification_scores(y_test, est.predict(X_test)))
        out.append(scores)
    return out


# ------------------------------------------------------------------------------------------------------------
# Speaker verification: Gaussian back-ends from composed per-language statistics
# ------------------------------------------------------------------------------------------------------------

#: registered back-end name -> (class name in cltm.probes, default parameters)
BACKENDS: dict[str, tuple[str, dict]] = {
    "plda": ("PLDA", {"n_components": 200}),
    "plda_full": ("PLDA", {}),
    "cosine": ("CosineBackend", {"center": True}),
    "lda_cosine": ("LDACosine", {"n_components": 150}),
}


def _backend(name: str, options: dict):
    import cltm.probes as probes

    cls_name, defaults = BACKENDS[name]
    params = {**defaults, **options.get("backend_params", {})}
    return getattr(probes, cls_name), params


def _trial_rows(trials: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the rows the trials use, enrol and test positions among them): only those rows get transformed."""
    enroll = trials["enroll_row"].to_numpy()
    test = trials["test_row"].to_numpy()
    rows, inverse = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    return rows, inverse[: len(enroll)], inverse[len(enroll) :]


def _score_group(model, X: np.ndarray, trials: pl.DataFrame) -> dict[str, float]:
    rows, enroll, test = _trial_rows(trials)
    return _verification_scores(trials["label"].to_numpy(), model.score_trials(X[rows], enroll, test))


def _verification_fast(name: str):
    def evaluate(X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup], options: dict) -> list:
        """Statistics per language (N of l, and the other N of its 2N) computed once per (layer, seed) and
        added up per condition; one back-end per distinct training set; each target's trials scored once."""
        cls, params = _backend(name, options)
        backend = cls(**params)
        by_key: dict[tuple[str, ...], np.ndarray] = {}
        for g in groups:
            for p in g.problems:
                by_key.setdefault(training_set_key(g.target, p), p.train_rows)
        block_stats: dict[tuple[str, str], object] = {}

        def stats_of(rows: np.ndarray):
            return backend.stats(X[rows], speakers[rows])

        for key, rows in by_key.items():
            if key[0] == "n":
                block_stats[("n", key[1])] = stats_of(rows)
        for key, rows in by_key.items():
            if key[0] == "2n":
                n_rows = by_key[("n", key[1])]
                extra = rows[~np.isin(rows, n_rows)]
                block_stats[("extra", key[1])] = stats_of(extra)
        models: dict[tuple[str, ...], object] = {}

        def model_of(key: tuple[str, ...]):
            if key not in models:
                if key[0] == "n":
                    st = block_stats[("n", key[1])]
                elif key[0] == "2n":
                    st = block_stats[("n", key[1])] + block_stats[("extra", key[1])]
                elif key[0] == "pair":
                    st = block_stats[("n", key[1])] + block_stats[("n", key[2])]
                else:  # pragma: no cover - every planned condition is one of the above
                    st = stats_of(by_key[key])
                models[key] = cls.from_stats(st, **params)
            return models[key]

        out = []
        for g in groups:
            keys = [training_set_key(g.target, p) for p in g.problems]
            distinct = list(dict.fromkeys(keys))
            rows, enroll, test = _trial_rows(g.trials)
            # all of the target's models on its trial list at once (the back-end shares what it can)
            scores = cls.score_trials_of_models([model_of(k) for k in distinct], X[rows], enroll, test)
            labels = g.trials["label"].to_numpy()
            scored = {k: _verification_scores(labels, scores[:, c]) for c, k in enumerate(distinct)}
            out.append([dict(scored[k]) for k in keys])
        return out

    return evaluate


def _verification_naive(name: str):
    def evaluate(X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup], options: dict) -> list:
        """One back-end trained on the data of each (condition, target, donor), as a per-cell loop would."""
        cls, params = _backend(name, options)
        return [
            [
                _score_group(cls(**params).fit(X[p.train_rows], speakers[p.train_rows]), X, g.trials)
                for p in g.problems
            ]
            for g in groups
        ]

    return evaluate


for _name, (_cls, _defaults) in BACKENDS.items():
    register_probe(_name, "verification", f"{_cls}({_defaults}) from composed per-language statistics")(
        _verification_fast(_name)
    )
    register_naive(_name)(_verification_naive(_name))
