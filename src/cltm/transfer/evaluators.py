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

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from cltm.probes.metrics import binary_metrics_by_column, classification_metrics, verification_metrics


@dataclass(frozen=True, eq=False)
class Problem:
    """One training set of a problem group: the condition, the donor and the manifest rows to train on."""

    condition: str
    donor: str
    train_rows: np.ndarray
    dev_rows: np.ndarray | None = None  # early-stopping rows of the training languages (never test rows)


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


# evaluate(X, labels, groups, options) -> per group, one result dict per problem, in order. All groups of one
# call share a (layer, seed), so an evaluator may batch across targets and reuse per-language work.
# Classification results hold the metric columns plus "_pred" (class codes on the test rows), "_scores"
# ([n_test, classes] probabilities, when options["scores"]) and, for wsum, "_layer_weights".
Evaluator = Callable[[np.ndarray, np.ndarray, list, dict], list[list[dict[str, Any]]]]


@dataclass(frozen=True)
class ProbeSpec:
    """One registered probe: its canonical name, kind, fast and one-fit-per-problem evaluators.

    ``multi_layer``: the probe takes every selected layer at once ([n, layers, dim]: ``wsum``) and gives
    one run per training set with a null ``layer``. ``estimator``: a factory ``(options, seed) -> estimator``
    for classification probes (``None`` for the verification back-ends).
    """

    name: str
    kind: str  # "classification" | "verification"
    fast: Evaluator
    naive: Evaluator
    description: str
    multi_layer: bool = False
    estimator: Callable[[dict, int], Any] | None = None


PROBES: dict[str, ProbeSpec] = {}

#: Old spellings still accepted (the tables always carry the canonical name).
ALIASES: dict[str, str] = {
    "lda-cosine": "lda_cosine",
    "plda-full": "plda_full",
    "plda-snorm": "plda+snorm",
    "cosine-asnorm": "cosine+asnorm",
    "logistic": "logreg",
}

#: Score normalisations a verification back-end can carry: ``BACKEND+snorm`` / ``BACKEND+asnorm``.
NORMS: tuple[str, ...] = ("snorm", "asnorm")


def register_probe(
    name: str,
    kind: str,
    description: str,
    *,
    multi_layer: bool = False,
    estimator: Callable[[dict, int], Any] | None = None,
) -> Callable[[Evaluator], Evaluator]:
    """Decorator registering the fast evaluator of a probe; ``register_naive`` adds its one-by-one twin."""

    def wrap(fn: Evaluator) -> Evaluator:
        naive = PROBES[name].naive if name in PROBES else fn
        PROBES[name] = ProbeSpec(name, kind, fn, naive, description, multi_layer, estimator)
        return fn

    return wrap


def register_naive(name: str) -> Callable[[Evaluator], Evaluator]:
    def wrap(fn: Evaluator) -> Evaluator:
        spec = PROBES[name]
        PROBES[name] = ProbeSpec(
            spec.name, spec.kind, spec.fast, fn, spec.description, spec.multi_layer, spec.estimator
        )
        return fn

    return wrap


DEFAULT_PROBE = {"classification": "logreg", "verification": "plda"}


def canonical_probe_name(name: str) -> str:
    """``lda-cosine`` -> ``lda_cosine``, ``plda-snorm`` / ``PLDA_SNORM`` -> ``plda+snorm`` (the grammar is
    ``BASE`` or ``BASE+NORM`` with NORM in snorm, asnorm)."""
    text = name.strip().lower()
    if text in ALIASES:
        return ALIASES[text]
    for norm in NORMS:
        for sep in ("-", "_", "+"):
            if text.endswith(sep + norm):
                base = text[: -len(norm) - 1].replace("-", "_")
                return f"{ALIASES.get(base, base)}+{norm}"
    return ALIASES.get(text, text.replace("-", "_"))


def probe_names(kind: str | None = None) -> list[str]:
    """The registered probe names (of one kind), in registration order."""
    return [name for name, spec in PROBES.items() if kind is None or spec.kind == kind]


def get_probe(name: Any, kind: str) -> ProbeSpec:
    """The probe ``name`` (canonical, an alias, or a scikit-learn style estimator object) for a task kind."""
    if name is not None and not isinstance(name, str):
        return _estimator_spec(name, kind)
    name = canonical_probe_name(name) if name else DEFAULT_PROBE[kind]
    if name not in PROBES:
        raise ValueError(
            f"unknown probe {name!r}; known: {', '.join(PROBES)} (old spellings: {', '.join(ALIASES)})"
        )
    spec = PROBES[name]
    if spec.kind != kind:
        usable = probe_names(kind)
        raise ValueError(f"probe {name!r} is a {spec.kind} probe; this task needs one of {usable}")
    return spec


def _classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    y_pred = np.asarray(y_pred)
    if y_true.dtype.kind in "iu" and y_pred.dtype.kind in "iu" and len(y_true) and y_true.min() >= 0:
        m = _metrics_from_codes(y_true, y_pred)
    else:
        m = classification_metrics(y_true, y_pred)
    return {"f1": m["f1"], "accuracy": m["accuracy"], "uar": m["uar"], "_pred": y_pred}


def _metrics_from_codes(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``classification_metrics`` for class codes 0..C-1 from one bincount (the sweep scores ~20 models per
    test set; the general version sorts the labels first). Same definitions: macro-F1 over the classes in the
    truth or the predictions, UAR over the classes in the truth."""
    k = int(max(y_true.max(), y_pred.max())) + 1
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    seen = (support > 0) | (predicted > 0)
    tp = np.diag(cm)
    denom = (support + predicted)[seen]
    f1 = np.divide(2 * tp[seen], denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "f1": float(f1.mean()),
        "accuracy": float(tp.sum() / cm.sum()),
        "uar": float(np.mean(tp[support > 0] / support[support > 0])),
    }


def _verification_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return dict(verification_metrics(labels, scores))


# ------------------------------------------------------------------------------------------------------------
# Classification: L2 logistic regression on standardised features
# ------------------------------------------------------------------------------------------------------------


def _logistic_estimator(options: dict, seed: int = 0):
    """The one-by-one reference estimator: ``LogisticProbe`` (standardise + balanced L2 logistic)."""
    from cltm.probes.classifiers import LogisticProbe

    return LogisticProbe(C=float(options.get("C", 1.0)))


LOGISTIC_SOLVERS = ("shared", "sklearn", "batched")


def _one_dict_per_problem(scored: dict, keys: list) -> list[dict[str, Any]]:
    """Per problem, the values of its training set's model: problems sharing a model (zero-shot from j and
    j's single) get their own dict (the runner pops entries), the first one takes the model's dict itself."""
    seen: set = set()
    out = []
    for k in keys:
        out.append(dict(scored[k]) if k in seen else scored[k])
        seen.add(k)
    return out


@register_probe(
    "logreg",
    "classification",
    "L2 logistic regression on standardised features, balanced class weights",
    estimator=_logistic_estimator,
)
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
            pred = (decision > 0).astype(np.int64)
            metrics = binary_metrics_by_column(y[g.test_rows], pred)
            scored = {}
            for c, k in enumerate(distinct):
                metrics[c]["_pred"] = pred[:, c]
                if options.get("scores"):
                    p1 = 1.0 / (1.0 + np.exp(-decision[:, c]))
                    metrics[c]["_scores"] = np.column_stack([1.0 - p1, p1])
                scored[k] = metrics[c]
            out.append(_one_dict_per_problem(scored, ids))
        return out
    return _fit_distinct_sets(X, y, groups, options, _logistic_estimator)


@register_naive("logreg")
def logistic_naive(
    X: np.ndarray, y: np.ndarray, groups: list[ClassificationGroup], options: dict
) -> list[list[dict]]:
    """One estimator fit per problem (the reference the fast path is checked against)."""
    return _fit_each_problem(X, y, groups, options, _logistic_estimator)


# ------------------------------------------------------------------------------------------------------------
# Any scikit-learn style classifier: one fit per distinct training set (LDA, MLP, wsum, user estimators)
# ------------------------------------------------------------------------------------------------------------


def _fit(estimator: Any, X: np.ndarray, y: np.ndarray, problem: Problem) -> Any:
    """Fit on the problem's training rows; estimators that early-stop get the dev rows (never test rows).

    Rows are sorted first, so a fit is a function of the training *set* (pair (i, j) and (j, i) hold the same
    rows in another order; a minibatch learner would otherwise give them different models)."""
    rows = np.sort(problem.train_rows)
    Xt, yt = X[rows], y[rows]
    dev = np.sort(problem.dev_rows) if problem.dev_rows is not None else None
    if dev is not None and len(dev) and "X_val" in inspect.signature(estimator.fit).parameters:
        return estimator.fit(Xt, yt, X_val=X[dev], y_val=y[dev])
    return estimator.fit(Xt, yt)


def _predict(model: Any, X_test: np.ndarray, y_test: np.ndarray, n_classes: int, options: dict) -> dict:
    pred = np.asarray(model.predict(X_test))
    values = _classification_scores(y_test, pred)
    if options.get("scores") and hasattr(model, "predict_proba"):
        # probabilities over every class code 0..n_classes-1 (a model may not have seen them all)
        proba = np.zeros((len(X_test), n_classes))
        proba[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X_test)
        values["_scores"] = proba
    if hasattr(model, "layer_weights_"):
        values["_layer_weights"] = np.asarray(model.layer_weights_, dtype=np.float64)
    return values


def _fit_distinct_sets(
    X: np.ndarray, y: np.ndarray, groups: list[ClassificationGroup], options: dict, make: Callable
) -> list[list[dict]]:
    """One model per distinct training set of the (layer, seed), scored on every test set that needs it."""
    seed = int(options.get("seed", 0))
    index: dict[tuple[str, ...], int] = {}
    models: list[Any] = []
    out = []
    for g in groups:
        X_test, y_test = X[g.test_rows], y[g.test_rows]
        cache: dict[int, dict] = {}
        results = []
        for problem in g.problems:
            key = training_set_key(g.target, problem)
            if key not in index:
                index[key] = len(models)
                models.append(_fit(make(options, seed), X, y, problem))
            k = index[key]
            if k not in cache:
                cache[k] = _predict(models[k], X_test, y_test, g.n_classes, options)
            results.append(dict(cache[k]))
        out.append(results)
    return out


def _fit_each_problem(
    X: np.ndarray, y: np.ndarray, groups: list[ClassificationGroup], options: dict, make: Callable
) -> list[list[dict]]:
    seed = int(options.get("seed", 0))
    return [
        [
            _predict(_fit(make(options, seed), X, y, p), X[g.test_rows], y[g.test_rows], g.n_classes, options)
            for p in g.problems
        ]
        for g in groups
    ]


def _estimator_evaluators(make: Callable) -> tuple[Evaluator, Evaluator]:
    def fast(X: np.ndarray, y: np.ndarray, groups: list, options: dict) -> list[list[dict]]:
        return _fit_distinct_sets(X, y, groups, options, make)

    def naive(X: np.ndarray, y: np.ndarray, groups: list, options: dict) -> list[list[dict]]:
        return _fit_each_problem(X, y, groups, options, make)

    return fast, naive


def _lda(options: dict, seed: int):
    from cltm.probes.classifiers import LDAProbe

    return LDAProbe(**options.get("lda", {}))


def _torch_params(options: dict) -> dict:
    return {k: v for k, v in options.get("mlp", {}).items() if v is not None}


def _mlp(options: dict, seed: int):
    from cltm.probes.classifiers import MLPProbe

    return MLPProbe(seed=seed, **_torch_params(options))


def _wsum(options: dict, seed: int):
    from cltm.probes.classifiers import WeightedLayerSumProbe

    params = _torch_params(options)
    params.setdefault("hidden", ())
    return WeightedLayerSumProbe(seed=seed, **params)


_CLASSIFIERS: dict[str, tuple[Callable, str, bool]] = {
    "lda": (_lda, "shrinkage LDA (Ledoit-Wolf)", False),
    "mlp": (_mlp, "small MLP (hidden sizes, early stopping on dev, patience settable)", False),
    "wsum": (_wsum, "weighted layer sum: softmax layer weights + a linear head over the layers", True),
}
for _name, (_make, _description, _multi) in _CLASSIFIERS.items():
    _fast, _naive = _estimator_evaluators(_make)
    register_probe(_name, "classification", _description, multi_layer=_multi, estimator=_make)(_fast)
    register_naive(_name)(_naive)


def _estimator_spec(estimator: Any, kind: str) -> ProbeSpec:
    """A ProbeSpec around a user's estimator object (cloned per training set; ``seed`` set per run)."""
    if kind != "classification":
        raise ValueError("an estimator object can be the probe of a classification task only")
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
        raise ValueError(f"probe {estimator!r} is neither a probe name nor an estimator with fit/predict")
    from sklearn.base import clone

    def make(options: dict, seed: int):
        est = clone(estimator)
        if "seed" in est.get_params():
            est.set_params(seed=seed)
        return est

    known = {
        "LogisticProbe": "logreg",
        "LDAProbe": "lda",
        "MLPProbe": "mlp",
        "WeightedLayerSumProbe": "wsum",
    }
    cls = type(estimator).__name__
    name = known.get(cls, cls)
    fast, naive = _estimator_evaluators(make)
    multi = cls == "WeightedLayerSumProbe"
    return ProbeSpec(name, kind, fast, naive, f"user estimator {estimator!r}", multi, make)


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


#: How the sweep fits its PLDA back-ends (``plda``, ``plda_full``): every distinct model of a (layer, seed)
#: in lockstep with ``cltm.probes.plda_many`` (fields of ``ManyPLDASettings``), chosen by |dAUC| against one
#: exact ``PLDA.from_stats`` per training set on synthetic and real features (docs/probes.md): float32 PCA
#: decompositions, at most 6 EM steps (two SQUAREM cycles) after the moment start, EM and scoring in float32.
#: On real features the EM cap is what moves AUCs (float32 does not). ``ProbeSettings.lockstep`` overrides
#: any field (``device="cuda"``; ``PLDA_LOCKSTEP_EXACT`` gives the per-model fits up to round-off).
PLDA_LOCKSTEP_DEFAULTS: dict[str, Any] = {
    "pca_dtype": "float32",
    "em_steps": 6,
    "em_dtype": "float32",
    "score_dtype": "float32",
}
PLDA_LOCKSTEP_EXACT: dict[str, Any] = {
    "pca_dtype": "float64",
    "em_steps": None,
    "em_dtype": "float64",
    "score_dtype": "float64",
}


def plda_lockstep_settings(params: dict, lockstep: dict | None = None):
    """The ``ManyPLDASettings`` of the sweep's lockstep PLDA fit: the back-end's ``params`` (as
    ``PLDA(...)``), ``PLDA_LOCKSTEP_DEFAULTS``, then ``lockstep`` (any other field of
    ``ManyPLDASettings``)."""
    from dataclasses import fields

    from cltm.probes.plda_many import ManyPLDASettings

    plda_keys = set(ManyPLDASettings().plda_params())
    allowed = {f.name for f in fields(ManyPLDASettings)} - plda_keys
    lockstep = dict(lockstep or {})
    unknown = sorted(set(lockstep) - allowed)
    if unknown:
        raise ValueError(
            f"unknown lockstep option(s) {unknown}; known: {sorted(allowed)} "
            "(the PLDA's own parameters, e.g. n_components, go in backend_params)"
        )
    bad = sorted(set(params) - plda_keys)
    if bad:
        raise ValueError(f"unknown PLDA parameter(s) {bad} in backend_params; known: {sorted(plda_keys)}")
    return ManyPLDASettings(**params, **{**PLDA_LOCKSTEP_DEFAULTS, **lockstep})


def fits_in_lockstep(probe: str) -> bool:
    """Whether the probe's fast path fits its models with ``plda_many`` (what ``ProbeSettings.lockstep``
    configures): the PLDA back-ends without score normalisation."""
    return BACKENDS.get(probe, ("",))[0] == "PLDA"


def lockstep_for_hash(probe: str, options: dict, naive: bool) -> dict | None:
    """The lockstep settings a run's results depend on, for its config hash: the effective ones (defaults
    included) for the fast path of a PLDA back-end, None otherwise (the naive loop fits each model
    exactly)."""
    if naive or not fits_in_lockstep(probe):
        return None
    return {**PLDA_LOCKSTEP_DEFAULTS, **options.get("lockstep", {})}


def _training_parts(backend, X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup]) -> dict:
    """Per distinct training set of the (layer, seed), the statistics it is the sum of: N of l -> (N of l,),
    2N of l -> (N of l, the other N of l), pair (i, j) -> (N of i, N of j). Each block is computed once."""
    by_key: dict[tuple[str, ...], np.ndarray] = {}
    for g in groups:
        for p in g.problems:
            by_key.setdefault(training_set_key(g.target, p), p.train_rows)

    def stats_of(rows: np.ndarray):
        return backend.stats(X[rows], speakers[rows])

    block: dict[tuple[str, str], object] = {}
    for key, rows in by_key.items():
        if key[0] == "n":
            block[("n", key[1])] = stats_of(rows)
    for key, rows in by_key.items():
        if key[0] == "2n":
            extra = rows[~np.isin(rows, by_key[("n", key[1])])]
            block[("extra", key[1])] = stats_of(extra)
    parts: dict[tuple[str, ...], tuple] = {}
    for key, rows in by_key.items():
        if key[0] == "n":
            parts[key] = (block[("n", key[1])],)
        elif key[0] == "2n":
            parts[key] = (block[("n", key[1])], block[("extra", key[1])])
        elif key[0] == "pair":
            parts[key] = (block[("n", key[1])], block[("n", key[2])])
        else:  # pragma: no cover - every planned condition is one of the above
            parts[key] = (stats_of(rows),)
    return parts


def _plda_lockstep(
    X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup], params: dict, options: dict
) -> list:
    """Every distinct PLDA of the (layer, seed) fitted by ``iter_fit_plda_many`` (a pair given as its two
    languages' statistics), each batch reduced to its scoring arrays at once (memory: ~0.6 MB per model at
    768 -> 200 in float32, not ~3 MB), each target's trial list scored by all its models in one wide
    product."""
    from cltm.probes import PLDA
    from cltm.probes.plda_many import iter_fit_plda_many, score_trials_wide, scoring_arrays

    settings = plda_lockstep_settings(params, options.get("lockstep"))
    parts = _training_parts(PLDA(**params), X, speakers, groups)
    keys = list(parts)
    scoring: dict[tuple[str, ...], Any] = {}
    for start, batch in iter_fit_plda_many([parts[k] for k in keys], settings):
        for j, model in enumerate(batch):
            scoring[keys[start + j]] = scoring_arrays(model, settings.score_dtype)
    out = []
    for g in groups:
        keys_g = [training_set_key(g.target, p) for p in g.problems]
        distinct = list(dict.fromkeys(keys_g))
        rows, enroll, test = _trial_rows(g.trials)
        scores = score_trials_wide(
            [scoring[k] for k in distinct], X[rows], enroll, test, dtype=settings.score_dtype,
            device=settings.device,
        )
        labels = g.trials["label"].to_numpy()
        scored = {k: _verification_scores(labels, scores[:, c]) for c, k in enumerate(distinct)}
        out.append(_one_dict_per_problem(scored, keys_g))
    return out


def _verification_fast(name: str):
    def evaluate(X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup], options: dict) -> list:
        """Statistics per language (N of l, and the other N of its 2N) computed once per (layer, seed) and
        added up per condition; one back-end per distinct training set; each target's trials scored once.
        PLDA back-ends are fitted all at once (``_plda_lockstep``)."""
        cls, params = _backend(name, options)
        if cls.__name__ == "PLDA":
            return _plda_lockstep(X, speakers, groups, params, options)
        parts = _training_parts(cls(**params), X, speakers, groups)
        models: dict[tuple[str, ...], object] = {}

        def model_of(key: tuple[str, ...]):
            if key not in models:
                st = parts[key][0] if len(parts[key]) == 1 else sum(parts[key])
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
            out.append(_one_dict_per_problem(scored, keys))
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


def _normed(name: str, norm: str, options: dict):
    """A fresh ``SNorm`` / ``ASNorm`` around the back-end ``name`` (cohort = the training vectors)."""
    import cltm.probes as probes

    cls, params = _backend(name, options)
    wrapper = probes.SNorm if norm == "snorm" else probes.ASNorm
    return wrapper(cls(**params), **options.get("norm_params", {}))


def _verification_normed(name: str, norm: str, *, per_problem: bool):
    def evaluate(X: np.ndarray, speakers: np.ndarray, groups: list[VerificationGroup], options: dict) -> list:
        """Score normalisation needs the training vectors as its cohort, so no composed statistics: one
        normalised back-end per distinct training set (``per_problem``: per problem, the reference)."""
        models: dict[Any, Any] = {}
        out = []
        for g in groups:
            results = []
            for k, p in enumerate(g.problems):
                key = (g.target, k) if per_problem else training_set_key(g.target, p)
                if key not in models:
                    models[key] = _normed(name, norm, options).fit(X[p.train_rows], speakers[p.train_rows])
                results.append(_score_group(models[key], X, g.trials))
            out.append(results)
        return out

    return evaluate


for _name, (_cls, _defaults) in BACKENDS.items():
    register_probe(_name, "verification", f"{_cls}({_defaults}) from composed per-language statistics")(
        _verification_fast(_name)
    )
    register_naive(_name)(_verification_naive(_name))
for _name in list(BACKENDS):
    for _norm in NORMS:
        _label = f"{_name}+{_norm}"
        register_probe(_label, "verification", f"{_name} with {_norm} (cohort: the training vectors)")(
            _verification_normed(_name, _norm, per_problem=False)
        )
        register_naive(_label)(_verification_normed(_name, _norm, per_problem=True))
