"""How the sweep trains and scores many related problems at once: a small registry of probe evaluators.

A *problem group* is everything one (layer, seed, target) needs: the conditions ``single``, ``self``, every
``pair`` and ``zero_shot`` share the target's test set (or trial list), and their training sets are unions
of the
per-language N / 2N subsets. An evaluator takes the whole group, so it can share work across it (DESIGN §5):

* classification probes fit all the group's problems with the batched logistic solver of ``cltm.probes``;
* verification back-ends are built from per-language sufficient statistics that add up (pair = stats(i) +
  stats(j),
  self = stats(N of i) + stats(the other N of i)), and the trial embeddings are read once per group.

The estimators, statistics and solvers live in ``cltm.probes``; this module only arranges the work.
Each evaluator has a ``naive`` twin (one estimator fit per problem) that the tests and benchmarks compare
against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from cltm.probes.metrics import classification_metrics, verification_metrics


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


@dataclass(frozen=True, eq=False)
class VerificationGroup:
    """A (layer, seed, target) group for speaker verification; ``trials`` has enroll_row, test_row, label."""

    problems: list[Problem]
    trials: pl.DataFrame


# evaluate(X, labels, group, options) -> one metrics dict per problem, in order
Evaluator = Callable[[np.ndarray, np.ndarray, object, dict], list[dict[str, float]]]


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


@register_probe("logreg", "classification", "L2 logistic regression on standardised features (batched)")
def logistic_fast(X: np.ndarray, y: np.ndarray, group: ClassificationGroup, options: dict) -> list[dict]:
    return logistic_naive(X, y, group, options)


@register_naive("logreg")
def logistic_naive(X: np.ndarray, y: np.ndarray, group: ClassificationGroup, options: dict) -> list[dict]:
    X_test, y_test = X[group.test_rows], y[group.test_rows]
    out = []
    for problem in group.problems:
        est = _logistic_estimator(options).fit(X[problem.train_rows], y[problem.train_rows])
        out.append(_classification_scores(y_test, est.predict(X_test)))
    return out
