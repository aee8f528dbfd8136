"""Sufficient statistics for Gaussian back-ends, composable by addition.

Everything the Gaussian verification back-ends (:class:`~cltm.probes.backends.CosineBackend` with mean
subtraction, :class:`~cltm.probes.backends.LDACosine`, :class:`~cltm.probes.backends.PLDA`) learn from
training data is a function of three things: the number of rows, the per-speaker counts and sums, and the
sum of outer products sum_i x_i x_i^T. These add up over disjoint sets of rows, so for the CLTM sweep

    SpeakerStats.from_data(X[rows_i], spk[rows_i]) + SpeakerStats.from_data(X[rows_j], spk[rows_j])
        == SpeakerStats.from_data(X[rows_i | rows_j], spk[rows_i | rows_j])

and a pair-condition model is built from stats(i) + stats(j) without touching the data again. (A speaker that
appears in both parts is merged by id, which is right for disjoint row sets; in the sweep speakers never cross
languages anyway.) The only preprocessing allowed before the statistics is a fixed, data-independent one
(optional length normalisation of each vector), since anything learnt from the data would not compose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SpeakerStats", "group_sums", "length_normalise"]


def length_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def group_sums(X: np.ndarray, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of X per group (``inverse[i]`` = the group of row i), [n_groups, dim].

    A sparse one-hot product: it adds each group's rows in their original order, so the result is bitwise
    what ``np.add.at`` gives, ~5x faster for many wide rows (30,000 x 768: 0.06 s vs 0.34 s).
    """
    import scipy.sparse

    X = np.asarray(X, dtype=np.float64)
    inverse = np.asarray(inverse)
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(len(X)), (inverse, np.arange(len(X)))), shape=(n_groups, len(X))
    )
    return np.asarray(one_hot @ X)


@dataclass(frozen=True)
class SpeakerStats:
    """Counts, per-speaker sums and the total outer-product sum of a set of vectors (float64).

    ``speakers`` [S] ids (sorted), ``counts`` [S], ``sums`` [S, d], ``outer`` [d, d] = sum_i x_i x_i^T, or
    None when built with ``second_moments=False`` (enough for a mean-only back-end such as centred cosine,
    and it skips the d x d product per row); ``length_norm`` records whether the vectors were
    length-normalised first.
    """

    speakers: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    outer: np.ndarray | None
    length_norm: bool = False

    @classmethod
    def from_data(
        cls, X: np.ndarray, speakers, *, length_norm: bool = False, second_moments: bool = True
    ) -> SpeakerStats:
        X = np.asarray(X, dtype=np.float64)
        speakers = np.asarray(speakers)
        if X.ndim != 2:
            raise ValueError(f"X must be [n, dim], got shape {X.shape}")
        if len(X) != len(speakers):
            raise ValueError(f"{len(X)} vectors but {len(speakers)} speaker labels")
        if len(X) == 0:
            raise ValueError("no vectors to summarise")
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or inf")
        if length_norm:
            X = length_normalise(X)
        ids, inverse = np.unique(speakers, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(ids))
        outer = X.T @ X if second_moments else None
        return cls(ids, counts, group_sums(X, inverse, len(ids)), outer, length_norm)

    # ---- composition

    def __add__(self, other: SpeakerStats) -> SpeakerStats:
        if not isinstance(other, SpeakerStats):
            return NotImplemented
        if self.dim != other.dim:
            raise ValueError(f"cannot add statistics of dimension {self.dim} and {other.dim}")
        if self.length_norm != other.length_norm:
            raise ValueError("cannot add statistics with and without length normalisation")
        if (self.outer is None) != (other.outer is None):
            raise ValueError("cannot add statistics with and without second moments")
        ids, inverse = np.unique(np.concatenate([self.speakers, other.speakers]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([self.counts, other.counts]), minlength=len(ids))
        sums = group_sums(np.concatenate([self.sums, other.sums]), inverse, len(ids))
        outer = None if self.outer is None else self.outer + other.outer
        return SpeakerStats(ids, counts.astype(np.int64), sums, outer, self.length_norm)

    def __radd__(self, other):
        # lets sum([stats_a, stats_b, ...]) work
        if other == 0:
            return self
        return self.__add__(other)

    # ---- derived quantities

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    @property
    def mean(self) -> np.ndarray:
        return self.sums.sum(0) / self.n

    def _outer(self) -> np.ndarray:
        if self.outer is None:
            raise ValueError(
                "these statistics have no second moments (built with second_moments=False): scatters, "
                "LDA and PLDA need them; build with SpeakerStats.from_data(..., second_moments=True)"
            )
        return self.outer

    def total_scatter(self) -> np.ndarray:
        """sum_i (x_i - mean)(x_i - mean)^T."""
        total = self.sums.sum(0)
        return self._outer() - np.outer(total, total) / self.n

    def between_scatter(self) -> np.ndarray:
        """sum_s n_s (mean_s - mean)(mean_s - mean)^T."""
        centred = self.sums - np.outer(self.counts, self.mean)
        return (centred / self.counts[:, None]).T @ centred

    def within_scatter(self) -> np.ndarray:
        """sum_s sum_{i in s} (x_i - mean_s)(x_i - mean_s)^T."""
        return self._outer() - (self.sums / self.counts[:, None]).T @ self.sums

    def transform(self, A: np.ndarray, shift: np.ndarray | None = None) -> SpeakerStats:
        """Exact statistics of the vectors A (x - shift): affine maps (centring, PCA, LDA) act on stats."""
        A = np.asarray(A, dtype=np.float64)
        shift = np.zeros(self.dim) if shift is None else np.asarray(shift, dtype=np.float64)
        sums = self.sums - np.outer(self.counts, shift)
        outer = None
        if self.outer is not None:
            total = self.sums.sum(0)
            shifted = (
                self.outer - np.outer(shift, total) - np.outer(total, shift) + self.n * np.outer(shift, shift)
            )
            outer = A @ shifted @ A.T
        return SpeakerStats(self.speakers, self.counts, sums @ A.T, outer, self.length_norm)

    def allclose(self, other: SpeakerStats, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
        return (
            np.array_equal(self.speakers, other.speakers)
            and np.array_equal(self.counts, other.counts)
            and np.allclose(self.sums, other.sums, rtol=rtol, atol=atol)
            and (self.outer is None) == (other.outer is None)
            and (self.outer is None or np.allclose(self.outer, other.outer, rtol=rtol, atol=atol))
            and self.length_norm == other.length_norm
        )
