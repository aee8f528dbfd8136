"""Many PLDA back-ends fitted in lockstep: the speaker sweep's trained back-end at 50+ languages.

One (layer, seed) of a speaker CLTM sweep needs one :class:`~cltm.probes.backends.PLDA` per distinct training
set (N of each language, 2N of each, each unordered pair: 1,539 models at 54 languages), all built from
composed statistics (:mod:`cltm.probes.stats`). :func:`fit_plda_many` fits them together with batched linear
algebra (torch, float64 unless set; ``device`` runs the same code on a GPU): the PCA, the closed-form moment
start and the SQUAREM-accelerated EM of :func:`~cltm.probes.backends.plda_em` on all models at once, each
model leaving the batch when its own stopping rule says so. With the default settings each returned model is
the per-model fit ``PLDA.from_stats(stats, ...)`` up to round-off (same attributes, so
``PLDA.score_trials_of_models`` and every scoring method work on it unchanged).

Where the cost is (per model at 768 -> 200 dims): the 768 x 768 eigendecomposition of the PCA and ~9
generalised 200 x 200 eigendecompositions in two SQUAREM cycles. On a CPU batching removes the Python
overhead, not these flops, so the cheaper choices are settings, measured in
``benchmarks/bench_speaker_scale.py`` and ``benchmarks/bench_speaker_agreement.py`` (the sweep's choice:
``evaluators.PLDA_LOCKSTEP_DEFAULTS``):

* ``pca_dtype="float32"``: the PCA decomposition in float32 (~2x faster);
* ``em_steps``: a cap on the EM steps after the moment start; 0 keeps the moment estimates (on balanced data
  already the maximum-likelihood solution); the one setting that moves AUCs on real features;
* ``em_dtype="float32"``: the moment start and EM in float32 (~2x faster EM);
* ``pca="shared"``: each model's PCA is the Rayleigh-Ritz step of its own total scatter inside one shared
  subspace, the top ``oversample * k`` directions of all the models' pooled scatter (one decomposition of
  d x d for all; each part's statistics are projected once).

:func:`iter_fit_plda_many` hands the models over one batch at a time; :func:`scoring_arrays` keeps only what
scoring needs of a model and :func:`score_trials_wide` scores many models on one trial list with one product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from cltm.probes.backends import PLDA, _llr_coefficients
from cltm.probes.stats import SpeakerStats, length_normalise

__all__ = [
    "ManyPLDASettings",
    "PLDAScoring",
    "fit_plda_many",
    "iter_fit_plda_many",
    "score_trials_plda_many",
    "score_trials_wide",
    "scoring_arrays",
]

PCA_MODES = ("exact", "shared")


@dataclass(frozen=True)
class ManyPLDASettings:
    """How :func:`fit_plda_many` fits: the PLDA parameters (as ``PLDA(...)``) and the batching choices.

    - ``pca``: ``"exact"`` (each model's own top-``n_components`` eigenvectors: the per-model fit) or
      ``"shared"`` (Rayleigh-Ritz inside the pooled top ``ceil(oversample * n_components)`` directions; with
      ``oversample`` 1 the shared directions themselves).
    - ``pca_dtype``: ``"float64"`` or ``"float32"`` for the PCA decompositions (EM always runs in float64).
    - ``pca_solver``: ``"auto"`` (LAPACK's top-k solver per model on a CPU, one batched torch call on another
      device) or ``"torch"`` (batched torch everywhere).
    - ``em_steps``: at most this many EM steps after the moment start (None: the per-model ``max_iter``).
    - ``em_dtype``: ``"float64"`` or ``"float32"`` for the moment start and EM (the fitted model is float64).
    - ``score_dtype``: the precision of :func:`score_trials_wide` when the sweep scores with these models
      (float32 moves scores by ~1e-6 relative; the fit itself does not use it).
    - ``batch_size``: models per batch (memory: a few d x d float64 matrices per model).
    - ``device``: torch device of the batched algebra (``"cuda"``: the same code on a GPU; the PCA is then one
      batched ``eigh``). The statistics and the fitted models stay NumPy on the CPU;
      :func:`score_trials_wide` takes the same ``device`` for the sweep's scoring.
    - ``threads``: torch's CPU threads while fitting (restored after; None leaves them). One by default:
      torch's spinning thread pool slowed a small fit 200x on the shared 2-core machine; parallelism belongs
      one level up (the sweep's workers over layers).
    """

    n_components: int | None = None
    length_norm: bool = False
    max_iter: int = 300
    tol: float = 1e-5
    reg: float = 0.02
    pca: str = "exact"
    oversample: float = 1.5
    pca_dtype: str = "float64"
    pca_solver: str = "auto"
    em_steps: int | None = None
    em_dtype: str = "float64"
    score_dtype: str = "float64"
    batch_size: int = 32
    device: str = "cpu"
    threads: int | None = 1

    def plda_params(self) -> dict:
        return dict(
            n_components=self.n_components,
            length_norm=self.length_norm,
            max_iter=self.max_iter,
            tol=self.tol,
            reg=self.reg,
        )


def _torch():
    import torch

    return torch


def _parts_of(item) -> tuple[SpeakerStats, ...]:
    if isinstance(item, SpeakerStats):
        return (item,)
    parts = tuple(item)
    if not parts or not all(isinstance(p, SpeakerStats) for p in parts):
        raise TypeError("each model is a SpeakerStats or a non-empty sequence of SpeakerStats (summed)")
    return parts


def _check(parts: tuple[SpeakerStats, ...], settings: ManyPLDASettings) -> None:
    """PLDA.from_stats' checks, in the same words, on the sum of ``parts`` without forming it (the d x d sums
    of 1,500 pairs would not fit in memory at once)."""
    for stats in parts:
        if stats.length_norm != settings.length_norm:
            raise ValueError(
                f"PLDA(...) expects statistics with length_norm={settings.length_norm}; "
                "build them with SpeakerStats.from_data(..., length_norm=...)"
            )
        if stats.outer is None:
            raise ValueError(
                "PLDA needs second moments: build the statistics with "
                "SpeakerStats.from_data(..., second_moments=True)"
            )
    n = sum(stats.n for stats in parts)
    n_speakers = len(np.unique(np.concatenate([stats.speakers for stats in parts])))
    if n_speakers < 2:
        raise ValueError("PLDA needs at least 2 speakers in the training data")
    if n <= n_speakers:
        raise ValueError("PLDA needs some speaker with more than one vector (within-speaker variation)")


def _total(parts: tuple[SpeakerStats, ...]) -> SpeakerStats:
    return parts[0] if len(parts) == 1 else sum(parts)


def fit_plda_many(
    stats_list: Sequence[SpeakerStats | Sequence[SpeakerStats]],
    settings: ManyPLDASettings | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[PLDA]:
    """Fitted :class:`PLDA` back-ends, one per item of ``stats_list``, fitted in lockstep.

    An item is a :class:`SpeakerStats` or a sequence of them to be summed (a pair's two languages): the parts
    are recognised by identity, so a part shared by many models (a language in 53 pairs) is projected once in
    the ``"shared"`` PCA. ``progress(n)`` is called with the number of models finished after each batch.
    With ``settings.pca == "exact"`` and no ``em_steps`` the result equals ``[PLDA.from_stats(sum(item),
    **settings.plda_params()) for item in stats_list]`` up to round-off.
    """
    models: list[PLDA] = []
    for _start, batch in iter_fit_plda_many(stats_list, settings):
        models.extend(batch)
        if progress is not None:
            progress(len(models))
    return models


def iter_fit_plda_many(
    stats_list: Sequence[SpeakerStats | Sequence[SpeakerStats]], settings: ManyPLDASettings | None = None
) -> Iterator[tuple[int, list[PLDA]]]:
    """:func:`fit_plda_many` one batch at a time: yields (index of the batch's first item, its fitted models).

    A caller that keeps only what it needs of each batch (the sweep keeps the scoring arrays,
    :func:`scoring_arrays`) holds O(batch) fitted models instead of all 1,539 (~3 MB each at 768 -> 200).
    Every item is checked before the first batch is fitted.
    """
    settings = settings or ManyPLDASettings()
    _check_settings(settings)
    parts_list = [_parts_of(item) for item in stats_list]
    for parts in parts_list:
        _check(parts, settings)
    if not parts_list:
        return
    dims = {p.dim for parts in parts_list for p in parts}
    if len(dims) != 1:
        raise ValueError(f"all statistics must have one dimension, got {sorted(dims)}")
    d = dims.pop()
    k = d if settings.n_components is None or settings.n_components >= d else settings.n_components
    torch = _torch()
    dev = torch.device(settings.device)

    shared = None
    if settings.pca == "shared" and k < d:
        with _torch_threads(settings.threads):
            shared = _SharedBasis(parts_list, k, settings, dev)

    for start in range(0, len(parts_list), settings.batch_size):
        idx = list(range(start, min(start + settings.batch_size, len(parts_list))))
        with _torch_threads(settings.threads):
            batch = [_total(parts_list[i]) for i in idx]  # summed per batch: memory stays O(batch d^2)
            if k == d:
                proj = torch.eye(d, dtype=torch.float64, device=dev).expand(len(idx), d, d)
                means, outer_c, sums_c = _centred_identity(batch, dev)
            elif shared is None:
                proj, means, outer_c, sums_c = _exact_pca(batch, k, settings, dev)
            else:
                proj, means, outer_c, sums_c = shared.project([parts_list[i] for i in idx], batch)
            counts, mask = _padded_counts(batch, dev)
            fit = _fit_em_batch(outer_c, sums_c, counts, mask, batch, settings)
            models = [_as_plda(settings, means[j], proj[j], fit, j) for j in range(len(batch))]
        yield start, models


@contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU threads set to ``threads`` for the block (None: left alone), restored after."""
    torch = _torch()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_settings(settings: ManyPLDASettings) -> None:
    if settings.pca not in PCA_MODES:
        raise ValueError(f"unknown pca mode {settings.pca!r}; choose one of {PCA_MODES}")
    if settings.pca_dtype not in ("float64", "float32"):
        raise ValueError(f"pca_dtype must be 'float64' or 'float32', got {settings.pca_dtype!r}")
    if settings.pca_solver not in ("auto", "torch"):
        raise ValueError(f"pca_solver must be 'auto' or 'torch', got {settings.pca_solver!r}")
    if settings.em_dtype not in ("float64", "float32"):
        raise ValueError(f"em_dtype must be 'float64' or 'float32', got {settings.em_dtype!r}")
    if settings.score_dtype not in ("float64", "float32"):
        raise ValueError(f"score_dtype must be 'float64' or 'float32', got {settings.score_dtype!r}")
    if settings.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if settings.em_steps is not None and settings.em_steps < 0:
        raise ValueError("em_steps must be >= 0 (or None: no cap)")


# ----------------------------------------------------------------------------------------------------------
# PCA and centring, batched
# ----------------------------------------------------------------------------------------------------------


def _centred_identity(batch: list[SpeakerStats], dev):
    torch = _torch()
    means = [s.mean for s in batch]
    outer = torch.stack([torch.from_numpy(s.total_scatter()) for s in batch]).to(
        dev
    )  # = outer of the centred vectors
    sums = _padded_sums([s.sums - np.outer(s.counts, m) for s, m in zip(batch, means, strict=True)], dev)
    return means, outer, sums


def _padded_sums(sums: list[np.ndarray], dev):
    torch = _torch()
    s_max = max(len(s) for s in sums)
    out = torch.zeros((len(sums), s_max, sums[0].shape[1]), dtype=torch.float64)
    for j, s in enumerate(sums):
        out[j, : len(s)] = torch.from_numpy(np.ascontiguousarray(s))
    return out.to(dev)


def _padded_counts(batch: list[SpeakerStats], dev):
    torch = _torch()
    s_max = max(s.n_speakers for s in batch)
    counts = torch.zeros((len(batch), s_max), dtype=torch.float64)
    for j, s in enumerate(batch):
        counts[j, : s.n_speakers] = torch.from_numpy(s.counts.astype(np.float64))
    return counts.to(dev), (counts > 0).to(torch.float64).to(dev)


def _exact_pca(batch: list[SpeakerStats], k: int, settings: ManyPLDASettings, dev):
    """Each model's top-k eigenvectors of its total scatter (largest first), as ``PLDA._fit_em``.

    On a CPU each model's decomposition is LAPACK's for the top k only (``PLDA``'s own call: a batched full
    decomposition is no faster there, and float32 is ~3x faster than float64); on a GPU one batched call.
    """
    torch = _torch()
    means = [s.mean for s in batch]
    totals = [s.total_scatter() for s in batch]
    d = batch[0].dim
    f32 = settings.pca_dtype == "float32"
    if dev.type == "cpu" and settings.pca_solver == "auto":
        vecs, outers = [], []
        for total in totals:
            t = total.astype(np.float32) if f32 else total
            w, v = scipy.linalg.eigh(t, subset_by_index=[d - k, d - 1], check_finite=False)
            v = np.ascontiguousarray(v[:, ::-1])
            if f32:
                # float32 vectors are neither exact eigenvectors nor exactly orthonormal: project the scatter
                # itself (in float32 too, model by model: ~5x less than a stacked float64 product)
                pt = v.T @ (t @ v)
                outers.append((0.5 * (pt + pt.T)).astype(np.float64))
            else:
                outers.append(np.diag(w[::-1]))  # P T P^T of exact eigenvectors, up to round-off
            vecs.append(v)
        vecs_t = torch.from_numpy(np.stack(vecs).astype(np.float64)).to(dev)
        outer_c = torch.from_numpy(np.stack(outers)).to(dev)
        proj = vecs_t.transpose(1, 2)  # [M, k, d]
    else:
        total_t = torch.from_numpy(np.stack(totals)).to(dev, torch.float32 if f32 else torch.float64)
        w, v = torch.linalg.eigh(total_t)
        vals_t, vecs_t = w[..., -k:].flip(-1).double(), v[..., -k:].flip(-1).double()
        proj = vecs_t.transpose(1, 2)  # [M, k, d]
        if f32:
            outer_c = _sym(proj @ torch.from_numpy(np.stack(totals)).to(dev) @ vecs_t)
        else:
            outer_c = torch.diag_embed(vals_t)
    sums = _padded_sums([s.sums - np.outer(s.counts, m) for s, m in zip(batch, means, strict=True)], dev)
    return proj, means, outer_c, sums @ vecs_t


class _SharedBasis:
    """The pooled top directions of all models and each part's statistics projected onto them (once)."""

    def __init__(self, parts_list, k, settings: ManyPLDASettings, dev):
        torch = _torch()
        d = parts_list[0][0].dim
        self.k, self.dev = k, dev
        self.width = min(d, max(k, math.ceil(settings.oversample * k)))
        pooled = np.zeros((d, d))
        for parts in parts_list:
            total = _total(parts)
            pooled += total.total_scatter() / total.n
        dtype = torch.float32 if settings.pca_dtype == "float32" else torch.float64
        _, vecs = torch.linalg.eigh(torch.from_numpy(pooled).to(dev, dtype))
        self.G = vecs[:, -self.width :].flip(-1).to(torch.float64)  # [d, K']
        self.G_np = self.G.cpu().numpy()
        self._part_outer: dict[int, object] = {}
        for parts in parts_list:
            for p in parts:
                if id(p) not in self._part_outer:
                    self._part_outer[id(p)] = self.G.T @ torch.from_numpy(p.outer).to(dev) @ self.G

    def project(self, parts_batch, batch: list[SpeakerStats]):
        torch = _torch()
        means = [s.mean for s in batch]
        gm = torch.from_numpy(np.stack(means)).to(self.dev) @ self.G  # [M, K']
        n = torch.tensor([float(s.n) for s in batch], dtype=torch.float64, device=self.dev)
        outer = torch.stack([sum(self._part_outer[id(p)] for p in parts) for parts in parts_batch])
        total = outer - n[:, None, None] * gm[:, :, None] * gm[:, None, :]  # G^T T G
        total = 0.5 * (total + total.transpose(1, 2))
        sums = _padded_sums([s.sums @ self.G_np for s in batch], self.dev)
        counts, mask = _padded_counts(batch, self.dev)
        sums = (sums - counts[..., None] * gm[:, None, :]) * mask[..., None]
        if self.width > self.k:
            _, R = torch.linalg.eigh(total)
            R = R[..., -self.k :].flip(-1)  # [M, K', k]
        else:
            R = torch.eye(self.k, dtype=torch.float64, device=self.dev).expand(len(batch), self.k, self.k)
        outer_c = R.transpose(1, 2) @ total @ R
        outer_c = 0.5 * (outer_c + outer_c.transpose(1, 2))
        proj = (self.G @ R).transpose(1, 2)  # [M, k, d]
        return proj, means, outer_c, sums @ R


# ----------------------------------------------------------------------------------------------------------
# The two-covariance EM, batched: the algebra of backends.plda_moment_init / plda_em_step / plda_loglik
# ----------------------------------------------------------------------------------------------------------


def _shrink(S, reg: float):
    torch = _torch()
    k = S.shape[-1]
    tr = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)
    scale = torch.where(tr > 0, tr / k, torch.ones_like(tr))
    eye = torch.eye(k, dtype=S.dtype, device=S.device)
    return (1 - reg) * S + reg * scale[:, None, None] * eye


def _sym(A):
    return 0.5 * (A + A.transpose(-1, -2))


class _Decomp:
    """Joint diagonalisation of (B, W): V^T W V = I, V^T B V = diag(psi); ``ok`` False where W is not PD."""

    def __init__(self, B, W):
        torch = _torch()
        L, info = torch.linalg.cholesky_ex(W)
        self.ok = info == 0
        if not bool(self.ok.all()):
            eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
            L = torch.where(self.ok[:, None, None], L, eye)
            B = torch.where(self.ok[:, None, None], B, eye)
        Linv_B = torch.linalg.solve_triangular(L, B, upper=False)
        C = torch.linalg.solve_triangular(L, Linv_B.transpose(1, 2), upper=False)  # L^-1 B L^-T
        psi, U = torch.linalg.eigh(_sym(C))
        self.psi = psi.clamp_min(0.0)
        self.raw_psi = psi
        self.V = torch.linalg.solve_triangular(L.transpose(1, 2), U, upper=True)  # L^-T U
        self.back = L @ U  # = W V = V^{-T}
        self.logdet_w = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        self.ok = self.ok & torch.isfinite(psi).all(-1)

    def select(self, keep):
        out = object.__new__(_Decomp)
        for name in ("ok", "psi", "raw_psi", "V", "back", "logdet_w"):
            setattr(out, name, getattr(self, name)[keep])
        return out


@dataclass
class _Data:
    outer: object  # [M, k, k] centred, projected
    sums: object  # [M, S, k]
    counts: object  # [M, S]
    mask: object  # [M, S]
    n: object  # [M]
    n_spk: object  # [M]

    def select(self, keep) -> _Data:
        return _Data(*(getattr(self, f)[keep] for f in ("outer", "sums", "counts", "mask", "n", "n_spk")))


def _em_step(data: _Data, dec: _Decomp, reg: float):
    torch = _torch()
    psi, V = dec.psi, dec.V
    g = data.sums @ V  # [M, S, k]
    post = psi[:, None, :] / (1 + data.counts[..., None] * psi[:, None, :]) * data.mask[..., None]
    y = post * g
    cov_sum = post.sum(1)
    cov_sum_n = (post * data.counts[..., None]).sum(1)
    gy = g.transpose(1, 2) @ y
    between_d = (torch.diag_embed(cov_sum) + y.transpose(1, 2) @ y) / data.n_spk[:, None, None]
    within_d = (
        V.transpose(1, 2) @ data.outer @ V
        - gy
        - gy.transpose(1, 2)
        + torch.diag_embed(cov_sum_n)
        + (y * data.counts[..., None]).transpose(1, 2) @ y
    ) / data.n[:, None, None]
    back = dec.back
    new_b = _sym(back @ between_d @ back.transpose(1, 2))
    new_w = _sym(back @ within_d @ back.transpose(1, 2))
    return new_b, _shrink(new_w, reg)


def _loglik(data: _Data, dec: _Decomp):
    torch = _torch()
    psi, V = dec.psi, dec.V
    g = data.sums @ V
    cp = data.counts[..., None] * psi[:, None, :]
    k = psi.shape[-1]
    quad = torch.diagonal(V.transpose(1, 2) @ data.outer @ V, dim1=-2, dim2=-1).sum(-1) - (
        g * g * psi[:, None, :] / (1 + cp)
    ).sum((1, 2))
    logdet = data.n * dec.logdet_w + torch.log1p(cp).sum((1, 2))
    ll = -0.5 * (data.n * k * math.log(2 * math.pi) + logdet + quad) / data.n
    return torch.where(dec.ok, ll, torch.full_like(ll, -math.inf))


def _moment_init(data: _Data, reg: float):
    torch = _torch()
    n, n_spk = data.n, data.n_spk
    safe = torch.where(data.counts > 0, data.counts, torch.ones_like(data.counts))
    mean = data.sums.sum(1) / n[:, None]
    f_over_c = data.sums / safe[..., None] * data.mask[..., None]
    within_sc = data.outer - f_over_c.transpose(1, 2) @ data.sums
    within = _shrink(within_sc / (n - n_spk)[:, None, None], reg)
    centred = (data.sums - data.counts[..., None] * mean[:, None, :]) * data.mask[..., None]
    between_sc = (centred / safe[..., None]).transpose(1, 2) @ centred
    between = between_sc / n[:, None, None] - (n_spk / n)[:, None, None] * within
    dec = _Decomp(_sym(between), within)
    psi = dec.raw_psi
    psi = torch.maximum(psi, 0.1 * torch.clamp_min(psi + (n_spk / n)[:, None], 0.0))
    top = torch.clamp_min(psi.max(-1).values, 1e-300)
    psi = torch.where(psi < 1e-12 * top[:, None], torch.zeros_like(psi), psi)
    back = within @ dec.V
    # (psi, V) also diagonalise the start (B0, W0): kept, so the first step needs no decomposition of its own
    start = dec.select(torch.arange(len(psi), device=psi.device))
    start.psi = psi
    return (back * psi[:, None, :]) @ back.transpose(1, 2), within, start


@dataclass
class _Fit:
    between: object
    within: object
    psi: np.ndarray
    V: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    loglik: np.ndarray


def _fit_em_batch(outer_c, sums_c, counts, mask, batch, settings: ManyPLDASettings) -> _Fit:
    """Moment start and SQUAREM EM (``backends.plda_em``'s cycles and stopping rule) for every model of the
    batch; a model stops by its own rule and leaves the active set."""
    torch = _torch()
    dev = outer_c.device
    M = len(batch)
    dt = torch.float32 if settings.em_dtype == "float32" else torch.float64
    outer_c, sums_c, counts, mask = (t.to(dt) for t in (outer_c, sums_c, counts, mask))
    n = torch.tensor([float(s.n) for s in batch], dtype=dt, device=dev)
    n_spk = torch.tensor([float(s.n_speakers) for s in batch], dtype=dt, device=dev)
    data = _Data(outer_c, sums_c * mask[..., None], counts, mask, n, n_spk)
    reg, tol = settings.reg, settings.tol
    max_iter = settings.max_iter if settings.em_steps is None else min(settings.max_iter, settings.em_steps)
    B, W, dec = _moment_init(data, reg)
    final_psi, final_V = dec.psi.clone(), dec.V.clone()

    steps = torch.zeros(M, dtype=torch.int64, device=dev)
    converged = torch.zeros(M, dtype=torch.bool, device=dev)
    ll = torch.full((M,), math.nan, dtype=dt, device=dev)
    act = torch.arange(M, device=dev)
    start_dec = dec
    while len(act) and max_iter > 0:
        d_act = data.select(act)
        b0, w0 = B[act], W[act]
        size = torch.sqrt((b0 * b0).sum((1, 2)) + (w0 * w0).sum((1, 2)))
        remaining = max_iter - steps[act]
        b1, w1 = _em_step(d_act, dec, reg)
        rb, rw = b1 - b0, w1 - w0
        change = torch.sqrt((rb * rb).sum((1, 2)) + (rw * rw).sum((1, 2)))
        cycle = remaining >= 3
        new_b, new_w = b1.clone(), w1.clone()
        taken = torch.ones_like(remaining)
        new_ll = torch.full_like(size, math.nan)
        dec1 = _Decomp(b1, w1)
        new_dec = dec1
        if bool(cycle.any()):
            c = cycle.nonzero().squeeze(1)
            dc = d_act.select(c)
            b2, w2 = _em_step(dc, dec1.select(c), reg)
            dec2 = _Decomp(b2, w2)
            ll2 = _loglik(dc, dec2)
            best_b, best_w, best_ll, best_taken = b2, w2, ll2, torch.full_like(ll2, 2, dtype=torch.int64)
            best_dec = dec2
            vb, vw = b2 - b1[c] - rb[c], w2 - w1[c] - rw[c]
            norm_v = torch.sqrt((vb * vb).sum((1, 2)) + (vw * vw).sum((1, 2)))
            norm_r = change[c]
            alpha = torch.where(norm_v > 0, -norm_r / torch.where(norm_v > 0, norm_v, 1.0), -1.0)
            ext = alpha < -1.0
            if bool(ext.any()):
                e = ext.nonzero().squeeze(1)
                a = alpha[e][:, None, None]
                be = b0[c][e] - 2 * a * rb[c][e] + a**2 * vb[e]
                we = w0[c][e] - 2 * a * rw[c][e] + a**2 * vw[e]
                dec_e = _Decomp(be, we)
                de = dc.select(e)
                b3, w3 = _em_step(de, dec_e, reg)
                dec3 = _Decomp(b3, w3)
                ll3 = _loglik(de, dec3)
                good = dec_e.ok & torch.isfinite(ll3) & (ll3 >= ll2[e])
                if bool(good.any()):
                    gi = e[good]
                    best_b, best_w = best_b.clone(), best_w.clone()
                    best_b[gi], best_w[gi] = b3[good], w3[good]
                    best_ll = best_ll.clone()
                    best_ll[gi] = ll3[good]
                    best_taken = best_taken.clone()
                    best_taken[gi] = 3
                    best_dec = _merge(best_dec, dec3.select(good.nonzero().squeeze(1)), gi)
            new_b[c], new_w[c], new_ll[c], taken[c] = best_b, best_w, best_ll, best_taken
            new_dec = _merge(dec1, best_dec, c)
        glob = act
        B[glob], W[glob] = new_b, new_w
        steps[glob] += taken
        ll[glob] = new_ll
        done = change < tol * size
        converged[glob[done]] = True
        stop = done | (steps[glob] >= max_iter)
        final_psi[glob], final_V[glob] = new_dec.psi, new_dec.V  # the decomposition of the new (B, W)
        keep = (~stop).nonzero().squeeze(1)
        act = glob[keep]
        dec = new_dec.select(keep)
    missing = torch.isnan(ll)
    if bool(missing.any()):
        m = missing.nonzero().squeeze(1)
        ll[m] = _loglik(data.select(m), start_dec.select(m) if max_iter == 0 else _Decomp(B[m], W[m]))
    return _Fit(
        B.double().cpu().numpy(),
        W.double().cpu().numpy(),
        final_psi.double().cpu().numpy(),
        final_V.double().cpu().numpy(),
        steps.cpu().numpy(),
        converged.cpu().numpy(),
        ll.double().cpu().numpy(),
    )


def _merge(base: _Decomp, part: _Decomp, where) -> _Decomp:
    """``base`` with the models at positions ``where`` replaced by ``part``'s."""
    out = object.__new__(_Decomp)
    for name in ("ok", "psi", "raw_psi", "V", "back", "logdet_w"):
        value = getattr(base, name).clone()
        value[where] = getattr(part, name)
        setattr(out, name, value)
    return out


def _as_plda(settings: ManyPLDASettings, mean: np.ndarray, proj, fit: _Fit, j: int) -> PLDA:
    """A PLDA object with exactly the fitted attributes ``PLDA._fit_em`` sets."""
    est = PLDA(**settings.plda_params())
    est.mean_ = np.asarray(mean, dtype=np.float64)
    est.projection_ = proj.cpu().numpy() if hasattr(proj, "cpu") else np.asarray(proj)
    est.between_ = fit.between[j]
    est.within_ = fit.within[j]
    est.n_iter_ = int(fit.n_iter[j])
    est.converged_ = bool(fit.converged[j])
    est.loglik_ = float(fit.loglik[j])
    est.psi_ = fit.psi[j]
    est.transform_ = est.projection_.T @ fit.V[j]
    est.cross_, est.self_, est.const_ = _llr_coefficients(est.psi_, 1)
    return est


@dataclass(frozen=True)
class PLDAScoring:
    """What scoring needs of a fitted PLDA, in the scoring precision: a trial's log-LR is
    ``sum(cross * u_e * u_t - self_ * (u_e**2 + u_t**2)) + const`` with ``u = x @ transform - shift``
    (``transform`` [d, k] = ``model.transform_``, ``shift`` = ``model.mean_ @ model.transform_``).
    ~0.6 MB at 768 -> 200 in float32, against ~3 MB for the fitted model with its covariances."""

    transform: np.ndarray
    shift: np.ndarray
    cross: np.ndarray
    self_: np.ndarray
    const: float
    length_norm: bool


def scoring_arrays(model: PLDA, dtype: str = "float32") -> PLDAScoring:
    """The :class:`PLDAScoring` of one fitted (not length-normalising) :class:`PLDA` model."""
    if not isinstance(model, PLDA):
        raise TypeError(f"not a PLDA back-end: {type(model).__name__}")
    if not hasattr(model, "transform_"):
        raise ValueError("PLDA is not fitted: call fit(X, speakers) or from_stats(...)")
    dt = _score_dtype(dtype)
    return PLDAScoring(
        transform=np.ascontiguousarray(model.transform_, dtype=dt),
        shift=(model.mean_ @ model.transform_).astype(dt),
        cross=np.asarray(model.cross_, dtype=dt),
        self_=np.asarray(model.self_, dtype=dt),
        const=float(model.const_),
        length_norm=bool(model.length_norm),
    )


def _score_dtype(dtype: str):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.float32 if dtype == "float32" else np.float64


def score_trials_wide(
    scorings: Sequence[PLDAScoring],
    X: np.ndarray,
    enroll_index,
    test_index,
    *,
    dtype: str = "float32",
    block_size: int = 4096,
    device: str = "cpu",
) -> np.ndarray:
    """Trial scores of many PLDA models at once from their :class:`PLDAScoring`: [n_trials, n_models].

    (x - m_k) T_k for every model k is X [T_1 ... T_M] minus the row m_k T_k: one wide product instead of M
    narrow ones (the sweep's cost floor: rows x d x k x M x 2 flops per trial list). ``device`` other than
    ``"cpu"`` (``"cuda"``): the same arithmetic in torch on that device (NumPy on the CPU)."""
    dt = _score_dtype(dtype)
    if not scorings:
        return np.empty((len(np.asarray(enroll_index)), 0))
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    dims = {s.transform.shape for s in scorings}
    if len(dims) != 1:
        raise ValueError("the models must have one input and one output dimension (n_components)")
    d, k = dims.pop()
    if X.shape[1] != d:
        raise ValueError(f"vectors have dim {X.shape[1]}, the back-ends were fitted on {d}")
    if len({s.length_norm for s in scorings}) != 1:
        raise ValueError("the models must all use length_norm or all not (one preprocessing of X)")
    if scorings[0].length_norm:
        X = length_normalise(X)
    from cltm.probes.backends import _check_trial_index

    enroll_index, test_index = _check_trial_index(len(X), enroll_index, test_index)
    M = len(scorings)
    wide = np.concatenate([s.transform for s in scorings], axis=1).astype(dt, copy=False)  # [d, M k]
    shift = np.concatenate([s.shift for s in scorings]).astype(dt, copy=False)
    cross = np.stack([s.cross for s in scorings]).astype(dt, copy=False)
    self_ = np.stack([s.self_ for s in scorings]).astype(dt, copy=False)
    const = np.array([s.const for s in scorings])
    if device != "cpu":
        arrays = (X.astype(dt), wide, shift, cross, self_)
        return _score_wide_torch(arrays, const, enroll_index, test_index, device, block_size)
    U = (X.astype(dt) @ wide - shift).reshape(len(X), M, k)
    out = np.empty((len(enroll_index), M))
    for start in range(0, len(out), block_size):
        e = U[enroll_index[start : start + block_size]]
        t = U[test_index[start : start + block_size]]
        s = np.einsum("nmk,mk->nm", e * t, cross) - np.einsum("nmk,mk->nm", e * e + t * t, self_)
        out[start : start + len(s)] = s + const
    return out


def _score_wide_torch(
    arrays: tuple[np.ndarray, ...], const: np.ndarray, enroll_index, test_index, device: str, block_size: int
) -> np.ndarray:
    """``score_trials_wide``'s arithmetic in torch on ``device``: arrays = (X, wide, shift, cross, self_) in
    the scoring dtype, moved once; the scores come back as float64 NumPy."""
    torch = _torch()
    X, wide, shift, cross, self_ = (torch.as_tensor(a, device=device) for a in arrays)
    M, k = cross.shape
    U = (X @ wide - shift).reshape(len(X), M, k)
    enroll = torch.as_tensor(np.asarray(enroll_index), device=device)
    test = torch.as_tensor(np.asarray(test_index), device=device)
    pieces = []
    for start in range(0, len(enroll), block_size):
        e, t = U[enroll[start : start + block_size]], U[test[start : start + block_size]]
        pieces.append(((e * t) * cross).sum(-1) - ((e * e + t * t) * self_).sum(-1))
    scores = torch.cat(pieces) if pieces else torch.empty((0, M), dtype=U.dtype, device=U.device)
    return scores.double().cpu().numpy() + const


def score_trials_plda_many(
    models: Sequence[PLDA],
    X: np.ndarray,
    enroll_index,
    test_index,
    *,
    dtype: str = "float32",
    block_size: int = 4096,
) -> np.ndarray:
    """``PLDA.score_trials_of_models`` with the projections done as one matrix product and, by default,
    in float32: [n_trials, n_models], column k = ``models[k].score_trials(X, enroll_index, test_index)``.

    float32 moves scores by ~1e-6 relative (tested against the per-model float64 scores).
    """
    _score_dtype(dtype)
    if not models:
        return np.empty((len(np.asarray(enroll_index)), 0))
    for model in models:
        if not isinstance(model, PLDA):
            raise TypeError(f"not a PLDA back-end: {type(model).__name__}")
    for model in models:
        model._prepare(np.asarray(X)[:1], normalise=False)  # fitted, and the dimension (a clear message)
    scorings = [scoring_arrays(m, dtype) for m in models]
    return score_trials_wide(scorings, X, enroll_index, test_index, dtype=dtype, block_size=block_size)
