"""Speaker-verification back-ends: cosine, LDA + cosine, two-covariance PLDA, and S-norm / AS-norm.

All share one API (scikit-learn style, parameters in ``__init__``, learned state with a trailing underscore):

- ``fit(X, speakers)`` on training vectors, or ``from_stats(SpeakerStats, **params)`` for the Gaussian ones
  (composable statistics, the CLTM sweep's fast path: see :mod:`cltm.probes.stats`);
- ``score(enroll, test)``: paired rows -> one score each (higher = more likely the same speaker);
- ``score_matrix(A, B)``: every row of A against every row of B;
- ``score_trials(X, enroll_index, test_index, block_size=...)``: a trial list given as row indices into X,
  scored in blocks so millions of trials never need an n x n matrix.

Multi-utterance enrolment: :func:`enrollment_vectors` averages the length-normalised vectors of each enrolment
group; the result is scored like any single vector.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, clone

from cltm.probes.stats import SpeakerStats, group_sums, length_normalise

__all__ = [
    "ASNorm",
    "CosineBackend",
    "LDACosine",
    "PLDA",
    "SNorm",
    "enrollment_vectors",
    "score_trial_list",
]


def enrollment_vectors(X: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """One enrolment vector per group: the mean of the group's length-normalised vectors.

    Returns ``(group_ids, vectors)`` with ``group_ids`` sorted.
    """
    X = length_normalise(X)
    groups = np.asarray(groups)
    if len(groups) != len(X):
        raise ValueError(f"{len(X)} vectors but {len(groups)} group labels")
    ids, inverse = np.unique(groups, return_inverse=True)
    return ids, group_sums(X, inverse, len(ids)) / np.bincount(inverse)[:, None]


def _check_pairs(enroll: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    enroll = np.atleast_2d(np.asarray(enroll, dtype=np.float64))
    test = np.atleast_2d(np.asarray(test, dtype=np.float64))
    if enroll.shape != test.shape:
        raise ValueError(f"enroll {enroll.shape} and test {test.shape} must be paired rows of the same shape")
    return enroll, test


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # inspecting the loaded libraries once: each limit() is then ~10 us


def single_threaded_blas():
    """Context manager: BLAS/LAPACK on one thread.

    The PLDA EM works on 200 x 200 (generally k x k) matrices, where OpenBLAS's threads cost more than they
    save: on the 2-core dev machine a fit took 0.75 s with 2 threads and 0.31 s with 1 (same values).
    Parallelism belongs one level up (the sweep's workers over layers).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def _check_trial_index(n_rows: int, enroll_index, test_index) -> tuple[np.ndarray, np.ndarray]:
    enroll_index = np.asarray(enroll_index, dtype=np.int64)
    test_index = np.asarray(test_index, dtype=np.int64)
    if enroll_index.shape != test_index.shape or enroll_index.ndim != 1:
        raise ValueError("enroll_index and test_index must be 1-D arrays of the same length")
    for name, idx in (("enroll_index", enroll_index), ("test_index", test_index)):
        if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
            raise ValueError(f"{name} has rows outside 0..{n_rows - 1}")
    return enroll_index, test_index


def _shrink(S: np.ndarray, reg: float) -> np.ndarray:
    """(1 - reg) S + reg * (trace / d) I: keeps covariances invertible with few sessions per speaker."""
    d = len(S)
    scale = np.trace(S) / d if np.trace(S) > 0 else 1.0
    return (1 - reg) * S + reg * scale * np.eye(d)


class _Backend(BaseEstimator):
    """Shared plumbing: subclasses implement ``_fit_stats``, ``transform`` and the two scoring kernels."""

    _length_norm_input = False
    #: whether the fit needs the d x d outer-product sum (everything but the mean-only cosine)
    needs_second_moments = True

    def fit(self, X: np.ndarray, speakers) -> _Backend:
        return self._fit_stats(self.stats(X, speakers))

    @classmethod
    def from_stats(cls, stats: SpeakerStats, **params) -> _Backend:
        """A fitted back-end built from (summed) statistics instead of data."""
        est = cls(**params)
        if stats.length_norm != est._length_norm_input:
            raise ValueError(
                f"{cls.__name__}(...) expects statistics with length_norm={est._length_norm_input}; "
                "build them with SpeakerStats.from_data(..., length_norm=...)"
            )
        if est.needs_second_moments and stats.outer is None:
            raise ValueError(
                f"{cls.__name__} needs second moments: build the statistics with "
                "SpeakerStats.from_data(..., second_moments=True)"
            )
        return est._fit_stats(stats)

    def stats(self, X: np.ndarray, speakers) -> SpeakerStats:
        """The statistics this back-end would learn from (X, speakers): add them up, then ``from_stats``."""
        return SpeakerStats.from_data(
            X, speakers, length_norm=self._length_norm_input, second_moments=self.needs_second_moments
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if not hasattr(self, "mean_"):
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(X, speakers) or from_stats(...)")
        if X.shape[1] != len(self.mean_):
            raise ValueError(f"vectors have dim {X.shape[1]}, the back-end was fitted on {len(self.mean_)}")
        return length_normalise(X) if self._length_norm_input else X

    def score(self, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
        enroll, test = _check_pairs(enroll, test)
        return self._pair_scores(self.transform(enroll), self.transform(test))

    def score_matrix(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self._matrix_scores(self.transform(A), self.transform(B))

    def score_trials(
        self, X: np.ndarray, enroll_index, test_index, *, block_size: int = 262_144
    ) -> np.ndarray:
        """Scores of trials (enroll_index[k], test_index[k]) over the rows of X, ``block_size`` at a time.

        X is transformed once; memory is O(len(X) * dim + block_size * dim) however many trials there are.
        """
        U = self.transform(X)
        enroll_index, test_index = _check_trial_index(len(U), enroll_index, test_index)
        out = np.empty(len(enroll_index))
        for start in range(0, len(out), block_size):
            sl = slice(start, start + block_size)
            out[sl] = self._pair_scores(U[enroll_index[sl]], U[test_index[sl]])
        return out

    @classmethod
    def score_trials_of_models(
        cls, models: Sequence[_Backend], X: np.ndarray, enroll_index, test_index, *, block_size: int = 65_536
    ) -> np.ndarray:
        """One trial list scored by several fitted back-ends of this class: [n_trials, n_models], column k
        equal to ``models[k].score_trials(X, enroll_index, test_index)``. Subclasses share work across models
        where their algebra allows (:class:`CosineBackend`)."""
        return np.column_stack([m.score_trials(X, enroll_index, test_index) for m in models])


class CosineBackend(_Backend):
    """Cosine similarity, optionally after subtracting the training mean (``center=True``).

    Cosine already length-normalises, so the only thing learnt from training data is the mean.
    """

    needs_second_moments = False

    def __init__(self, center: bool = True):
        self.center = center

    def _fit_stats(self, stats: SpeakerStats) -> CosineBackend:
        self.mean_ = stats.mean if self.center else np.zeros(stats.dim)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return length_normalise(self._prepare(X) - self.mean_)

    @staticmethod
    def _pair_scores(A, B):
        return np.einsum("ij,ij->i", A, B)

    @staticmethod
    def _matrix_scores(A, B):
        return A @ B.T

    @classmethod
    def score_trials_of_models(
        cls, models: Sequence[_Backend], X: np.ndarray, enroll_index, test_index, *, block_size: int = 65_536
    ) -> np.ndarray:
        """Centred cosine for many models at once: cos(a - m, b - m) from a.b, a.m, b.m and m.m.

        The O(dim) work per trial (a.b) is done once for all models instead of once per model; per model
        there is one product of the trial rows with its mean. Rows and means are first taken relative to the
        means' centre, so |a - m|^2 = |a|^2 - 2 a.m + |m|^2 does not cancel. Equal to the per-model scores to
        ~1e-15 relative.
        """
        if cls.needs_second_moments or not models:  # a subclass that learns more than the mean (LDA)
            return super().score_trials_of_models(models, X, enroll_index, test_index, block_size=block_size)
        for model in models:
            X = model._prepare(X)  # checks each is fitted and matches X's dim (float64: copied once at most)
        enroll_index, test_index = _check_trial_index(len(X), enroll_index, test_index)
        means = np.stack([m.mean_ for m in models])
        centre = means.mean(0)
        E, M = X - centre, means - centre
        row_sq, mean_sq = np.einsum("ij,ij->i", E, E), np.einsum("ij,ij->i", M, M)
        row_dot_mean = E @ M.T  # [rows, models]
        out = np.empty((len(enroll_index), len(models)))
        for start in range(0, len(out), block_size):
            e, t = enroll_index[start : start + block_size], test_index[start : start + block_size]
            pe, pt = row_dot_mean[e], row_dot_mean[t]
            num = np.einsum("ij,ij->i", E[e], E[t])[:, None] - pe - pt + mean_sq
            norms_sq = np.maximum(row_sq[e, None] - 2 * pe + mean_sq, 0) * np.maximum(
                row_sq[t, None] - 2 * pt + mean_sq, 0
            )
            out[start : start + len(e)] = np.divide(
                num, np.sqrt(norms_sq), out=np.zeros_like(num), where=norms_sq > 0
            )
        return out


class LDACosine(CosineBackend):
    """Linear discriminant analysis (speakers as classes), then cosine in the LDA space.

    Directions: the top ``n_components`` generalised eigenvectors of (between, within) scatter, the within
    scatter shrunk by ``reg`` so it stays invertible; at most n_speakers - 1 of them carry information.
    """

    needs_second_moments = True

    def __init__(self, n_components: int = 150, reg: float = 1e-3):
        self.n_components = n_components
        self.reg = reg

    def _fit_stats(self, stats: SpeakerStats) -> LDACosine:
        if stats.n_speakers < 2:
            raise ValueError("LDA needs at least 2 speakers in the training data")
        within = _shrink(stats.within_scatter() / stats.n, self.reg)
        between = stats.between_scatter() / stats.n
        k = int(min(self.n_components, stats.n_speakers - 1, stats.dim))
        vals, vecs = scipy.linalg.eigh(between, within, subset_by_index=[stats.dim - k, stats.dim - 1])
        self.mean_ = stats.mean
        self.components_ = vecs[:, ::-1]  # [d, k], most discriminative first
        self.explained_ratio_ = vals[::-1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return length_normalise((self._prepare(X) - self.mean_) @ self.components_)


class PLDA(_Backend):
    """Two-covariance PLDA: x = mu + y_speaker + e, y ~ N(0, B), e ~ N(0, W); scores are log-LRs.

    Pipeline: optional length normalisation of the raw vectors (``length_norm``, data-independent so
    statistics still compose), centring, optional PCA to ``n_components`` dims (from the total scatter),
    then EM on the two covariances (float64, ``n_iter`` iterations, initialised from the within/between
    scatter). Each covariance is shrunk towards a scaled identity by ``reg`` after every step, which keeps
    768-/1024-dim inputs with few sessions per speaker from going singular. Scoring diagonalises W and B
    together, so a trial costs O(dim).
    """

    def __init__(
        self, n_components: int | None = None, length_norm: bool = True, n_iter: int = 10, reg: float = 1e-3
    ):
        self.n_components = n_components
        self.length_norm = length_norm
        self.n_iter = n_iter
        self.reg = reg

    @property
    def _length_norm_input(self) -> bool:  # type: ignore[override]
        return self.length_norm

    def _fit_stats(self, stats: SpeakerStats) -> PLDA:
        if stats.n_speakers < 2:
            raise ValueError("PLDA needs at least 2 speakers in the training data")
        with single_threaded_blas():
            return self._fit_em(stats)

    def _fit_em(self, stats: SpeakerStats) -> PLDA:
        self.mean_ = stats.mean
        if self.n_components is not None and self.n_components < stats.dim:
            d, k = stats.dim, self.n_components
            # only the top-k eigenpairs: the full 768 x 768 decomposition dominated from_stats' cost
            _, vecs = scipy.linalg.eigh(stats.total_scatter(), subset_by_index=[d - k, d - 1])
            self.projection_ = vecs[:, ::-1].T  # [k, d], largest variance first
        else:
            self.projection_ = np.eye(stats.dim)
        st = stats.transform(self.projection_, shift=self.mean_)
        n, counts, f = st.n, st.counts.astype(np.float64), st.sums  # f: centred per-speaker sums
        S = st.outer  # centred (total) outer-product sum
        within = _shrink(st.within_scatter() / n, self.reg)
        between = _shrink(st.between_scatter() / n, self.reg)
        unique_counts, count_index = np.unique(counts, return_inverse=True)
        for _ in range(self.n_iter):
            # simultaneous diagonalisation: V^T W V = I, V^T B V = diag(psi)
            psi, V = scipy.linalg.eigh(between, within, check_finite=False)
            psi = np.clip(psi, 0.0, None)
            g = f @ V  # speaker sums in the diagonal coordinates
            post_cov = psi / (1 + np.outer(unique_counts, psi))  # [n distinct counts, k]
            y_hat = post_cov[count_index] * g  # posterior means of the speaker variables
            cov_sum = (post_cov * np.bincount(count_index)[:, None]).sum(0)
            cov_sum_n = (post_cov * (np.bincount(count_index, weights=counts))[:, None]).sum(0)
            between_d = (np.diag(cov_sum) + y_hat.T @ y_hat) / len(counts)
            within_d = (
                V.T @ S @ V
                - g.T @ y_hat
                - y_hat.T @ g
                + np.diag(cov_sum_n)
                + (y_hat * counts[:, None]).T @ y_hat
            ) / n
            back = within @ V  # = V^{-T}
            between = _shrink(back @ between_d @ back.T, self.reg)
            within = _shrink(back @ within_d @ back.T, self.reg)
        psi, V = scipy.linalg.eigh(between, within, check_finite=False)
        psi = np.clip(psi, 0.0, None)
        self.between_ = between
        self.within_ = within
        self.transform_ = self.projection_.T @ V  # raw (centred) -> diagonal coordinates
        self.psi_ = psi
        self.cross_ = psi / (2 * psi + 1)
        self.self_ = psi**2 / (2 * (2 * psi + 1) * (psi + 1))
        self.const_ = 0.5 * np.sum(np.log((1 + psi) ** 2 / (1 + 2 * psi)))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (self._prepare(X) - self.mean_) @ self.transform_

    def _pair_scores(self, A, B):
        return (A * B) @ self.cross_ - (A * A + B * B) @ self.self_ + self.const_

    def _matrix_scores(self, A, B):
        return (
            (A * self.cross_) @ B.T
            - ((A * A) @ self.self_)[:, None]
            - ((B * B) @ self.self_)[None, :]
            + (self.const_)
        )


class SNorm(BaseEstimator):
    """Symmetric score normalisation with a training cohort around any back-end.

    s' = ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2, where mu_e / sd_e are the mean / standard deviation of
    the enrolment vector's scores against the cohort (and likewise for the test vector). The cohort is the
    training vectors (at most ``max_cohort`` of them, drawn with ``seed``). :class:`ASNorm` uses only the
    ``top_n`` highest cohort scores of each side (adaptive S-norm).
    """

    def __init__(self, backend=None, max_cohort: int = 2000, seed: int = 0):
        self.backend = backend
        self.max_cohort = max_cohort
        self.seed = seed

    _top_n: int | None = None

    def fit(self, X: np.ndarray, speakers) -> SNorm:
        X = np.asarray(X, dtype=np.float64)
        self.backend_ = clone(self.backend if self.backend is not None else CosineBackend()).fit(X, speakers)
        if len(X) > self.max_cohort:
            rows = np.sort(np.random.default_rng(self.seed).choice(len(X), self.max_cohort, replace=False))
            X = X[rows]
        self.cohort_ = self.backend_.transform(X)
        return self

    def _cohort_moments(self, U: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        mu = np.empty(len(U))
        sd = np.empty(len(U))
        top = self._top_n
        for start in range(0, len(U), block):
            s = self.backend_._matrix_scores(U[start : start + block], self.cohort_)
            if top is not None and top < s.shape[1]:
                s = np.partition(s, s.shape[1] - top, axis=1)[:, -top:]
            mu[start : start + block] = s.mean(1)
            sd[start : start + block] = s.std(1)
        return mu, np.maximum(sd, 1e-12)

    def _normalise(self, raw, Ue, Ut):
        mu_e, sd_e = self._cohort_moments(Ue)
        mu_t, sd_t = self._cohort_moments(Ut)
        return 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.backend_.transform(X)

    def score(self, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
        enroll, test = _check_pairs(enroll, test)
        Ue, Ut = self.backend_.transform(enroll), self.backend_.transform(test)
        return self._normalise(self.backend_._pair_scores(Ue, Ut), Ue, Ut)

    def score_trials(
        self, X: np.ndarray, enroll_index, test_index, *, block_size: int = 262_144
    ) -> np.ndarray:
        """Trial-list scoring in blocks; cohort moments are computed once per distinct row of X."""
        raw = self.backend_.score_trials(X, enroll_index, test_index, block_size=block_size)
        U = self.backend_.transform(X)
        rows = np.unique(np.concatenate([np.asarray(enroll_index), np.asarray(test_index)]))
        mu = np.zeros(len(U))
        sd = np.ones(len(U))
        mu[rows], sd[rows] = self._cohort_moments(U[rows])
        e, t = np.asarray(enroll_index), np.asarray(test_index)
        return 0.5 * ((raw - mu[e]) / sd[e] + (raw - mu[t]) / sd[t])


class ASNorm(SNorm):
    """Adaptive S-norm: like :class:`SNorm`, but each side uses only its ``top_n`` best cohort scores."""

    def __init__(self, backend=None, top_n: int = 300, max_cohort: int = 2000, seed: int = 0):
        super().__init__(backend=backend, max_cohort=max_cohort, seed=seed)
        self.top_n = top_n

    @property
    def _top_n(self) -> int | None:  # type: ignore[override]
        return self.top_n


def score_trial_list(
    backend, X: np.ndarray, utt_ids: Sequence[str], enroll: Sequence[str], test: Sequence[str], **kwargs
) -> np.ndarray:
    """Score a trial list given by utterance ids (e.g. ``make_trials`` output) against vectors X aligned with
    ``utt_ids``; unknown ids raise a ValueError naming the first one."""
    position = {u: i for i, u in enumerate(utt_ids)}
    idx = []
    for name, ids in (("enroll", enroll), ("test", test)):
        try:
            idx.append(np.fromiter((position[u] for u in ids), dtype=np.int64, count=len(ids)))
        except KeyError as err:
            raise ValueError(f"{name} utterance {err.args[0]!r} is not among the vectors' utt_ids") from err
    return backend.score_trials(X, idx[0], idx[1], **kwargs)
