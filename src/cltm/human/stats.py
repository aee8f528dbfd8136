"""Statistics for listener panels: two-way bootstrap, Cohen's kappa, Spearman's rank correlation.

**Two-way (crossed) bootstrap.** A listening test crosses two random factors: the listeners heard are a
sample of listeners, and the utterances played are a sample of utterances. Resampling only one of them
understates the uncertainty of a panel's accuracy. Each replicate draws the listeners with replacement (as
many as there are) and, independently, the utterances with replacement; an answer of listener l to utterance
u then counts ``m_l · m_u`` times, where m is how often each was drawn (the "pigeonhole" bootstrap of Owen
2007, also called the crossed or two-way cluster bootstrap). Metrics are computed from the replicate's
weighted confusion matrix; the interval is the percentile interval of the replicates. The scheme is slightly
conservative (its variance over-counts the listener x utterance interaction, Owen 2007), so intervals tend to
cover a little more often than nominal; ``tests/test_human_stats.py`` checks the coverage on simulated panels.

The replicate metrics are the definitions of :mod:`cltm.probes.metrics` (accuracy, UAR, macro-F1) evaluated on
many weighted confusion matrices at once; a test checks them against those functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "BootstrapSettings",
    "cohen_kappa",
    "confusion_metrics",
    "percentile_interval",
    "spearman",
    "two_way_bootstrap",
]


@dataclass(frozen=True)
class BootstrapSettings:
    """``n_boot`` replicates, a two-sided ``level`` percentile interval, a ``seed``; ``chunk`` replicates are
    weighted at once (bounds the memory to ``chunk x answers`` floats)."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    chunk: int = 128

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0 < self.level < 1:
            raise ValueError(f"the confidence level must be in (0, 1), got {self.level}")


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """``accuracy``, ``uar`` and ``f1`` (macro) of confusion matrices ``cm[..., true, pred]`` (any weights).

    Same definitions as :func:`cltm.probes.metrics.accuracy`, :func:`~cltm.probes.metrics.uar` and
    :func:`~cltm.probes.metrics.macro_f1`: UAR averages over classes with true support, macro-F1 over classes
    that occur as true or predicted label. NaN where a matrix is empty.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = tp.sum(axis=-1) / total
        present = support > 0
        recall = np.where(present, tp / np.where(present, support, 1.0), 0.0)
        uar = recall.sum(axis=-1) / present.sum(axis=-1)
        seen = (support + predicted) > 0
        f1 = np.where(seen, 2 * tp / np.where(seen, support + predicted, 1.0), 0.0)
        macro_f1 = f1.sum(axis=-1) / seen.sum(axis=-1)
    return {"accuracy": accuracy, "uar": uar, "f1": macro_f1}


def two_way_bootstrap(
    listener: np.ndarray,
    utterance: np.ndarray,
    true: np.ndarray,
    response: np.ndarray,
    n_classes: int,
    settings: BootstrapSettings = BootstrapSettings(),
    *,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Replicates of accuracy / UAR / macro-F1 under the two-way bootstrap (module docstring).

    ``listener`` and ``utterance`` are integer codes per answer (0..L-1, 0..U-1), ``true`` and ``response``
    class codes (0..n_classes-1). Listener and utterance codes need not be dense. Returns
    ``{metric: array[n_boot]}``.
    """
    # dense codes: a code that never answers must not be drawn as a listener / utterance
    listener = np.unique(np.asarray(listener, dtype=np.int64), return_inverse=True)[1].ravel()
    utterance = np.unique(np.asarray(utterance, dtype=np.int64), return_inverse=True)[1].ravel()
    cell = np.asarray(true, dtype=np.int64) * n_classes + np.asarray(response, dtype=np.int64)
    if rng is None:
        rng = np.random.default_rng(settings.seed)
    n_listeners = int(listener.max()) + 1 if listener.size else 0
    n_utts = int(utterance.max()) + 1 if utterance.size else 0
    out = {name: np.empty(settings.n_boot) for name in ("accuracy", "uar", "f1")}
    if listener.size == 0:
        for values in out.values():
            values.fill(np.nan)
        return out
    # answers sorted by confusion cell: one reduceat per chunk sums each replicate's weights cell by cell
    order = np.argsort(cell, kind="stable")
    cells, starts = np.unique(cell[order], return_index=True)
    listener, utterance = listener[order], utterance[order]
    for start in range(0, settings.n_boot, settings.chunk):
        b = min(settings.chunk, settings.n_boot - start)
        m_listener = _multiplicities(rng, b, n_listeners)
        m_utt = _multiplicities(rng, b, n_utts)
        weights = m_listener[:, listener] * m_utt[:, utterance]
        cm = np.zeros((b, n_classes * n_classes))
        cm[:, cells] = np.add.reduceat(weights, starts, axis=1)
        cm = cm.reshape(b, n_classes, n_classes)
        for name, values in confusion_metrics(cm).items():
            out[name][start : start + b] = values
    return out


def _multiplicities(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """How often each of n units is drawn in b resamples of size n with replacement: [b, n]."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap replicates, ignoring NaN replicates."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)


def cohen_kappa(a, b, labels=None) -> float:
    """Cohen's kappa of two raters' labels: (p_o − p_e) / (1 − p_e).

    p_o is the observed share of agreement and p_e the agreement expected from the two raters' marginal label
    shares. ``labels`` restricts the count to those labels (like ``sklearn.metrics.cohen_kappa_score``); NaN
    when p_e = 1 (both raters always give the same single label: agreement is undefined).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two 1-D label arrays of the same length are needed, got {a.shape} and {b.shape}")
    classes = np.unique(np.concatenate([a, b])) if labels is None else np.asarray(labels)
    index = {c: i for i, c in enumerate(classes.tolist())}
    keep = np.array(
        [x in index and y in index for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool
    )
    if not keep.any():
        return float("nan")
    k = len(classes)
    cm = np.zeros((k, k))
    ia = np.array([index[x] for x in a[keep].tolist()])
    ib = np.array([index[x] for x in b[keep].tolist()])
    np.add.at(cm, (ia, ib), 1.0)
    n = cm.sum()
    p_o = np.trace(cm) / n
    p_e = float(cm.sum(axis=1) @ cm.sum(axis=0)) / n**2
    if np.isclose(p_e, 1.0):
        return float("nan")
    return float((p_o - p_e) / (1 - p_e))


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their average rank).

    NaN for fewer than two pairs or when either side is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"two 1-D arrays of the same length are needed, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    rx = rankdata(x) - (x.size + 1) / 2
    ry = rankdata(y) - (y.size + 1) / 2
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    if denom == 0:
        return float("nan")
    return float((rx @ ry) / denom)
