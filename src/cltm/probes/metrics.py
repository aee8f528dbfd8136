"""Detection and classification metrics as small pure functions over arrays.

Conventions (all functions): ``y_true`` holds labels 1 = target / positive and 0 = non-target / negative for
the detection metrics (:func:`eer`, :func:`min_dcf`, :func:`roc_auc`, :func:`det_curve`); higher scores mean
"more target-like". Bad input raises :class:`ValueError` with a message saying what is wrong: length
mismatch, empty input, labels outside {0, 1}, only one class present, NaN/inf scores.

Cost: one sort of the scores (O(n log n) time) and a handful of O(n) arrays. Ten million trials take a few
seconds and a few hundred MB (see ``benchmarks/bench_metrics.py``); ``sklearn.metrics.roc_curve`` needs
several times that.

Operating points. Sorting the scores gives the distinct values u_1 < ... < u_K. Point k (k = 0..K) rejects
every trial with score <= u_k (point 0 rejects nothing, point K rejects everything), so

    P_miss[k] = #{targets with score <= u_k} / n_targets          (non-decreasing, 0 -> 1)
    P_fa[k]   = #{non-targets with score > u_k} / n_non-targets    (non-increasing, 1 -> 0)

Tied scores therefore move together, as they must: no metric here depends on the order of tied trials, and
every detection metric is invariant under strictly increasing transforms of the scores. These are exactly
the points of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` (fpr = P_fa, tpr = 1 - P_miss)
plus the trivial ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetectionCounts",
    "accuracy",
    "binary_metric_columns",
    "binary_metrics_by_column",
    "classification_metrics",
    "det_curve",
    "detection_counts",
    "eer",
    "macro_f1",
    "min_dcf",
    "roc_auc",
    "uar",
    "verification_metrics",
]


@dataclass(frozen=True)
class DetectionCounts:
    """Cumulative counts at the distinct scores, the common ground of every detection metric.

    ``thresholds[k]`` is the k-th distinct score (ascending); ``targets_le[k]`` / ``nontargets_le[k]`` count
    the targets / non-targets with score <= ``thresholds[k]``. The trivial "reject nothing" point is
    implicit.
    """

    thresholds: np.ndarray
    targets_le: np.ndarray
    nontargets_le: np.ndarray
    n_targets: int
    n_nontargets: int

    @property
    def p_miss(self) -> np.ndarray:
        """P_miss at points 0..K (point 0 = reject nothing)."""
        out = np.empty(len(self.targets_le) + 1, dtype=np.float64)
        out[0] = 0.0
        np.divide(self.targets_le, self.n_targets, out=out[1:])
        return out

    @property
    def p_fa(self) -> np.ndarray:
        """P_fa at points 0..K (point 0 = accept everything)."""
        out = np.empty(len(self.nontargets_le) + 1, dtype=np.float64)
        out[0] = 1.0
        np.subtract(self.n_nontargets, self.nontargets_le, out=out[1:], casting="unsafe")
        out[1:] /= self.n_nontargets
        return out


def _check_binary(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"length mismatch: {len(y)} labels but {len(s)} scores")
    if len(y) == 0:
        raise ValueError("empty input: no trials to score")
    if y.dtype != np.bool_:
        if y.dtype.kind not in "biuf":
            raise ValueError(f"labels must be 0/1 (1 = target), got dtype {y.dtype}")
        bad = (y != 0) & (y != 1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"labels must be in {{0, 1}} (1 = target); found {y[first]!r} at index {first} "
                f"({int(bad.sum())} bad labels in all)"
            )
        y = y.astype(np.bool_)
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    finite = np.isfinite(s)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"scores must be finite; found {s[first]!r} at index {first} "
            f"({int((~finite).sum())} non-finite in all)"
        )
    del finite
    n_targets = int(np.count_nonzero(y))
    if n_targets == 0 or n_targets == len(y):
        only = "targets (1)" if n_targets else "non-targets (0)"
        raise ValueError(
            f"only one class present: all {len(y)} trials are {only}; need both to score detection"
        )
    return y, s


def detection_counts(y_true, scores) -> DetectionCounts:
    """Sort once and count targets / non-targets at or below each distinct score (see module docstring)."""
    y, s = _check_binary(y_true, scores)
    n = len(s)
    # int32 indices halve the memory of the O(n) arrays whenever they fit (always, for realistic trial lists)
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    labels_sorted = y[order]
    del order
    group_end = np.flatnonzero(s_sorted[1:] != s_sorted[:-1]).astype(index_dtype)
    group_end = np.append(group_end, index_dtype(n - 1))
    thresholds = s_sorted[group_end]
    del s_sorted
    cum = np.cumsum(labels_sorted, dtype=index_dtype)
    del labels_sorted
    targets_le = cum[group_end]
    del cum
    nontargets_le = group_end  # reuse the buffer: (end + 1) - targets_le
    nontargets_le += 1
    nontargets_le -= targets_le
    n_targets = int(targets_le[-1])
    return DetectionCounts(thresholds, targets_le, nontargets_le, n_targets, n - n_targets)


def _eer_from_counts(counts: DetectionCounts) -> tuple[float, float]:
    p_miss = counts.p_miss
    p_fa = counts.p_fa
    # first point where the miss rate has caught up with the false-alarm rate; k >= 1 since p_miss[0] <
    # p_fa[0]
    k = int(np.argmax(p_miss >= p_fa))
    m0, m1, f0, f1 = p_miss[k - 1], p_miss[k], p_fa[k - 1], p_fa[k]
    # the straight DET segment between points k-1 and k crosses the diagonal P_miss = P_fa at fraction a
    denom = (m1 - m0) - (f1 - f0)
    a = (f0 - m0) / denom if denom > 0 else 0.0
    value = m0 + a * (m1 - m0)
    u = counts.thresholds
    if k == 1:
        threshold = float(u[0])
    else:
        threshold = float(u[k - 2] + a * (u[k - 1] - u[k - 2]))
    return float(value), threshold


def eer(y_true, scores, *, return_threshold: bool = False) -> float | tuple[float, float]:
    """Equal error rate: where the miss and false-alarm rates cross, linearly interpolated.

    Definition: walk the operating points in score order (module docstring); take the first point k at which
    P_miss >= P_fa and the previous one, and intersect the straight segment between them with the diagonal
    P_miss = P_fa. This is the NIST SRE style EER over sorted scores: exact for any score distribution,
    independent of the order of tied scores, and invariant under strictly increasing transforms of the scores.

    Relation to other toolkits: Kaldi's ``compute-eer`` and SpeechBrain's ``EER`` take the rate at a discrete
    threshold near the crossing (SpeechBrain returns the mean of P_miss and P_fa there, others the max);
    with n trials they differ from this value by O(1/n_targets + 1/n_nontargets). The BOSARIS ROCCH-EER uses
    the convex hull of the ROC and is never higher than this value.

    With ``return_threshold`` the score threshold at the crossing is returned too (interpolated between the
    two neighbouring distinct scores; accept trials scoring above it).
    """
    value, threshold = _eer_from_counts(detection_counts(y_true, scores))
    return (value, threshold) if return_threshold else value


def _min_dcf_from_counts(
    counts: DetectionCounts, p_target: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    w_miss = c_miss * p_target
    w_fa = c_fa * (1.0 - p_target)
    dcf = counts.p_miss
    dcf *= w_miss
    dcf += w_fa * counts.p_fa
    k = int(np.argmin(dcf))
    u = counts.thresholds
    # point k rejects scores <= u[k-1]; point 0 accepts everything
    threshold = float(u[k - 1]) if k > 0 else float(np.nextafter(u[0], -np.inf))
    return float(dcf[k] / min(w_miss, w_fa)), threshold


def min_dcf(
    y_true,
    scores,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    *,
    return_threshold: bool = False,
) -> float | tuple[float, float]:
    """Minimum normalised detection cost over all thresholds.

    DCF(t) = c_miss * p_target * P_miss(t) + c_fa * (1 - p_target) * P_fa(t), minimised over every operating
    point (including accept-all and reject-all) and divided by min(c_miss * p_target, c_fa * (1 -
    p_target)), the cost of the better trivial system; so 1.0 means "no better than always deciding one way"
    (NIST SRE, BOSARIS, WeSpeaker).

    SpeechBrain's ``minDCF`` returns the *unnormalised* minimum; multiply this value by
    min(c_miss * p_target, c_fa * (1 - p_target)) to compare (0.01 for the defaults here).
    With ``return_threshold`` also returns the threshold reaching the minimum (reject scores <= it).
    """
    value, threshold = _min_dcf_from_counts(detection_counts(y_true, scores), p_target, c_miss, c_fa)
    return (value, threshold) if return_threshold else value


def _roc_auc_from_counts(counts: DetectionCounts) -> float:
    targets_in_group = np.diff(counts.targets_le, prepend=0).astype(np.float64)
    nontargets_below = np.empty(len(counts.nontargets_le), dtype=np.float64)
    nontargets_below[0] = 0.0
    nontargets_below[1:] = counts.nontargets_le[:-1]
    nontargets_in_group = counts.nontargets_le - nontargets_below
    # each target beats every non-target below it and ties half of those at its own score
    nontargets_below += 0.5 * nontargets_in_group
    wins = float(np.dot(targets_in_group, nontargets_below))
    return wins / (float(counts.n_targets) * float(counts.n_nontargets))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve = P(random target scores above random non-target), ties counted half.

    This is the Mann-Whitney U statistic divided by n_targets * n_nontargets, equal to the trapezoidal area
    under the ROC (``sklearn.metrics.roc_auc_score`` gives the same value), computed from one sort.
    """
    return _roc_auc_from_counts(detection_counts(y_true, scores))


def det_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off points: ``(p_fa, p_miss, thresholds)``, one point per distinct score.

    Point k rejects scores <= ``thresholds[k]`` (ascending), so p_fa falls and p_miss rises along the
    arrays; the trivial accept-all point is left out, as in ``sklearn.metrics.det_curve`` (which returns
    (fpr, fnr, thresholds) with "accept >= threshold" and so is shifted by one distinct score). Plot on
    probit axes (``scipy.stats.norm.ppf``) for the usual DET plot.
    """
    counts = detection_counts(y_true, scores)
    return counts.p_fa[1:], counts.p_miss[1:], counts.thresholds


def verification_metrics(y_true, scores) -> dict[str, float]:
    """All detection metrics from one sort: ``auc``, ``eer``, ``min_dcf_01``, ``min_dcf_05``."""
    counts = detection_counts(y_true, scores)
    return {
        "auc": _roc_auc_from_counts(counts),
        "eer": _eer_from_counts(counts)[0],
        "min_dcf_01": _min_dcf_from_counts(counts, 0.01, 1.0, 1.0)[0],
        "min_dcf_05": _min_dcf_from_counts(counts, 0.05, 1.0, 1.0)[0],
    }


# ------------------------------------------------------------------------------------------------------
# classification


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode both label arrays onto 0..C-1 over the union of the classes seen in either."""
    a = np.asarray(y_true)
    b = np.asarray(y_pred)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} true labels but {len(b)} predictions")
    if len(a) == 0:
        raise ValueError("empty input: no predictions to score")
    for name, arr in (("y_true", a), ("y_pred", b)):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf")
    try:
        classes, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    except TypeError as err:  # mixed, unorderable label types
        raise ValueError(f"labels must be of one comparable type: {err}") from err
    return codes[: len(a)], codes[len(a) :], len(classes)


def _confusion(y_true, y_pred) -> np.ndarray:
    t, p, n_classes = _check_labels(y_true, y_pred)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true, y_pred) -> float:
    """Share of predictions equal to the true label."""
    t, p, _ = _check_labels(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN).

    Classes are the union of those in ``y_true`` and ``y_pred`` (as
    ``sklearn.metrics.f1_score(average="macro")``); a class with no true and no predicted samples cannot
    occur, and a class never predicted correctly gets F1 = 0.
    """
    cm = _confusion(y_true, y_pred).astype(np.float64)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(axis=0) - tp) + (cm.sum(axis=1) - tp)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)))


def uar(y_true, y_pred) -> float:
    """Unweighted average recall (balanced accuracy): mean recall over the classes present in ``y_true``.

    Same as ``sklearn.metrics.balanced_accuracy_score``; predicted classes absent from ``y_true`` count only
    as errors.
    """
    cm = _confusion(y_true, y_pred).astype(np.float64)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """``f1`` (macro), ``accuracy`` and ``uar`` in one dict (the results columns)."""
    cm = _confusion(y_true, y_pred).astype(np.float64)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(axis=0) - tp) + (cm.sum(axis=1) - tp)
    support = cm.sum(axis=1)
    present = support > 0
    return {
        "f1": float(np.mean(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))),
        "accuracy": float(tp.sum() / cm.sum()),
        "uar": float(np.mean(tp[present] / support[present])),
    }


def binary_metric_columns(y_true, predicted) -> dict[str, np.ndarray]:
    """``f1`` (macro), ``accuracy`` and ``uar`` of many binary classifiers on one test set at once, one array
    entry per classifier.

    ``y_true`` [m] holds 0/1; ``predicted`` [m, k] holds each classifier's predictions (bool or 0/1), one
    column per classifier. Same definitions as :func:`classification_metrics` (macro-F1 over the classes
    present in the truth or the predictions, UAR = mean recall over the classes in the truth), from four
    counts per column instead of a confusion matrix per column: the CLTM sweep scores ~100 models per test
    set.
    """
    truth = (np.asarray(y_true) == 1)[:, None]
    pred = np.asarray(predicted).astype(bool)
    if pred.ndim != 2 or len(pred) != len(truth):
        raise ValueError(f"predicted must be [{len(truth)}, k], got shape {pred.shape}")
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    tp = (pred & truth).sum(0)
    predicted_pos = pred.sum(0)
    fp = predicted_pos - tp
    fn = n_pos - tp
    tn = len(truth) - tp - fp - fn
    # per class: 2 TP / (2 TP + FP + FN); a class absent from truth and predictions does not count
    denominators = np.stack([2 * tn + fn + fp, 2 * tp + fp + fn])  # [class 0, class 1] x k
    present = denominators > 0
    zeros = np.zeros(denominators.shape)
    per_class = np.divide(2 * np.stack([tn, tp]), denominators, out=zeros, where=present)
    recalls = [r for r, n in ((tn / max(n_neg, 1), n_neg), (tp / max(n_pos, 1), n_pos)) if n > 0]
    return {
        "f1": per_class.sum(0) / present.sum(0),
        "accuracy": (tp + tn) / len(truth),
        "uar": np.mean(recalls, axis=0) if recalls else np.full(pred.shape[1], np.nan),
    }


def binary_metrics_by_column(y_true, predicted) -> list[dict[str, float]]:
    """:func:`binary_metric_columns` as one dict per classifier (``f1``, ``accuracy``, ``uar``)."""
    columns = binary_metric_columns(y_true, predicted)
    names = list(columns)
    rows = zip(*(columns[n].tolist() for n in names), strict=True)
    return [dict(zip(names, values, strict=True)) for values in rows]
