"""Verification back-ends and composable statistics against direct, slow formulas written here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.base import clone

from cltm.probes import (
    PLDA,
    ASNorm,
    CosineBackend,
    LDACosine,
    SNorm,
    SpeakerStats,
    metrics,
    score_trial_list,
)


def speakers_with_nuisance(seed, n_spk=40, per_spk=6, dim=24, nuisance_scale=4.0, offset=5.0):
    """Speaker identity in a few directions, a large session nuisance in others, and a big common offset."""
    rng = np.random.default_rng(seed)
    spk_dirs = rng.normal(size=(n_spk, dim)) * np.r_[np.ones(dim // 2), 0.1 * np.ones(dim - dim // 2)]
    spk = np.repeat(np.arange(n_spk), per_spk)
    nuisance = (
        rng.normal(size=(len(spk), dim))
        * np.r_[0.3 * np.ones(dim // 2), nuisance_scale * np.ones(dim - dim // 2)]
    )
    X = offset + spk_dirs[spk] + nuisance
    return X, np.array([f"s{s:03d}" for s in spk])


def all_pairs(speakers):
    i, j = np.triu_indices(len(speakers), 1)
    return i, j, (speakers[i] == speakers[j]).astype(int)


def lnorm(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_stats_compose_by_addition():
    X, spk = speakers_with_nuisance(0)
    a, b = np.arange(0, 120), np.arange(120, 240)
    for ln in (False, True):
        whole = SpeakerStats.from_data(X, spk, length_norm=ln)
        parts = SpeakerStats.from_data(X[a], spk[a], length_norm=ln) + SpeakerStats.from_data(
            X[b], spk[b], length_norm=ln
        )
        assert parts.allclose(whole)
        assert sum([SpeakerStats.from_data(X[r], spk[r], length_norm=ln) for r in (a, b)]).allclose(whole)
    # a split that cuts through speakers still composes (rows are disjoint)
    c, d = np.arange(0, 125), np.arange(125, 240)
    assert (SpeakerStats.from_data(X[c], spk[c]) + SpeakerStats.from_data(X[d], spk[d])).allclose(
        SpeakerStats.from_data(X, spk)
    )


def test_group_sums_are_bitwise_those_of_add_at():
    from cltm.probes.stats import group_sums

    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 7)) * 10.0 ** rng.integers(-8, 8, size=(500, 1))  # order of addition matters
    inverse = rng.integers(0, 40, size=500)
    inverse[inverse == 5] = 6  # an empty group stays zero
    expected = np.zeros((41, 7))
    np.add.at(expected, inverse, X)
    assert np.array_equal(group_sums(X, inverse, 41), expected)
    assert np.array_equal(group_sums(X[:0], inverse[:0], 3), np.zeros((3, 7)))


def test_mean_only_statistics_compose_and_refuse_what_needs_second_moments():
    X, spk = speakers_with_nuisance(4)
    a, b = np.arange(0, 120), np.arange(120, 240)
    full = SpeakerStats.from_data(X, spk)
    means = SpeakerStats.from_data(X[a], spk[a], second_moments=False) + SpeakerStats.from_data(
        X[b], spk[b], second_moments=False
    )
    assert means.outer is None and means.dim == X.shape[1]
    np.testing.assert_allclose(means.mean, full.mean, rtol=1e-12)
    np.testing.assert_allclose(means.between_scatter(), full.between_scatter(), rtol=1e-9)
    assert CosineBackend().stats(X, spk).outer is None  # the cosine fit never builds the d x d sum
    np.testing.assert_array_equal(CosineBackend.from_stats(means).mean_, CosineBackend.from_stats(full).mean_)
    with pytest.raises(ValueError, match="second moments"):
        PLDA.from_stats(
            SpeakerStats.from_data(X, spk, length_norm=True, second_moments=False), length_norm=True
        )
    with pytest.raises(ValueError, match="second moments"):
        LDACosine.from_stats(means)
    with pytest.raises(ValueError, match="second moments"):
        means.total_scatter()
    with pytest.raises(ValueError, match="with and without second moments"):
        means + full


def test_stats_scatters_match_direct_formulas():
    X, spk = speakers_with_nuisance(1, n_spk=7, per_spk=5, dim=6)
    st = SpeakerStats.from_data(X, spk)
    mean = X.mean(0)
    np.testing.assert_allclose(st.mean, mean)
    np.testing.assert_allclose(st.total_scatter(), (X - mean).T @ (X - mean), atol=1e-8)
    within = sum(
        (X[spk == s] - X[spk == s].mean(0)).T @ (X[spk == s] - X[spk == s].mean(0)) for s in np.unique(spk)
    )
    between = sum(
        (spk == s).sum() * np.outer(X[spk == s].mean(0) - mean, X[spk == s].mean(0) - mean)
        for s in np.unique(spk)
    )
    np.testing.assert_allclose(st.within_scatter(), within, atol=1e-8)
    np.testing.assert_allclose(st.between_scatter(), between, atol=1e-8)
    A = np.random.default_rng(0).normal(size=(3, 6))
    shift = X.mean(0)
    assert st.transform(A, shift).allclose(SpeakerStats.from_data((X - shift) @ A.T, spk))


@pytest.mark.parametrize(
    "backend",
    [CosineBackend(), LDACosine(n_components=10), PLDA(), PLDA(length_norm=True), PLDA(n_components=8)],
)
def test_from_composed_stats_equals_fit_on_concatenated_data(backend):
    X, spk = speakers_with_nuisance(2)
    a, b = np.arange(0, 120), np.arange(120, 240)
    direct = clone(backend).fit(X, spk)
    stats = backend.stats(X[a], spk[a]) + backend.stats(X[b], spk[b])
    composed = type(backend).from_stats(stats, **backend.get_params())
    T, _ = speakers_with_nuisance(3, n_spk=5)
    np.testing.assert_allclose(
        composed.score(T[:-1], T[1:]), direct.score(T[:-1], T[1:]), rtol=1e-7, atol=1e-8
    )


def test_plda_score_equals_gaussian_likelihood_ratio():
    X, spk = speakers_with_nuisance(4, dim=8)
    plda = PLDA(max_iter=5, length_norm=True).fit(X, spk)
    B, W = plda.between_, plda.within_
    T = B + W
    joint = np.block([[T, B], [B, T]])
    x1, x2 = speakers_with_nuisance(5, n_spk=3, per_spk=2, dim=8)[0][:2]
    u1, u2 = (lnorm(np.stack([x1, x2])) - plda.mean_) @ plda.projection_.T
    direct = (
        multivariate_normal(np.zeros(16), joint).logpdf(np.r_[u1, u2])
        - multivariate_normal(np.zeros(8), T).logpdf(u1)
        - multivariate_normal(np.zeros(8), T).logpdf(u2)
    )
    assert plda.score(x1, x2)[0] == pytest.approx(direct, rel=1e-8, abs=1e-8)
    assert plda.score_matrix(x1[None], x2[None])[0, 0] == pytest.approx(direct, rel=1e-8, abs=1e-8)


def test_plda_fit_runs_blas_on_one_thread_and_restores_it(monkeypatch):
    from threadpoolctl import threadpool_info

    import cltm.probes.backends as backends

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    seen = []
    em = backends.PLDA._fit_em

    def recording_em(self, stats):
        seen.append(blas_threads())
        return em(self, stats)

    monkeypatch.setattr(backends.PLDA, "_fit_em", recording_em)
    X, spk = speakers_with_nuisance(11, n_spk=10, per_spk=3, dim=6)
    before = blas_threads()
    with backends._blas_controller().limit(limits=2, user_api="blas"):
        outside = blas_threads()
        PLDA(n_components=4).fit(X, spk)
        assert blas_threads() == outside
    assert seen == [{1}]
    assert blas_threads() == before


def test_plda_beats_cosine_with_planted_nuisance():
    X, spk = speakers_with_nuisance(7, n_spk=60, per_spk=6)
    T, tspk = speakers_with_nuisance(8, n_spk=30, per_spk=4)
    i, j, y = all_pairs(tspk)
    eer_cos = metrics.eer(y, CosineBackend().fit(X, spk).score_trials(T, i, j))
    eer_plda = metrics.eer(y, PLDA(n_components=20).fit(X, spk).score_trials(T, i, j))
    eer_lda = metrics.eer(y, LDACosine(n_components=20).fit(X, spk).score_trials(T, i, j))
    assert eer_plda < 0.5 * eer_cos
    assert eer_lda < eer_cos


def test_plda_high_dim_few_sessions_stays_finite():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(60, 768)) + rng.normal(size=(30, 768)).repeat(2, axis=0)  # 30 speakers x 2 sessions
    spk = np.repeat(np.arange(30), 2)
    plda = PLDA(max_iter=1).fit(X, spk)
    s = plda.score(X[:-1], X[1:])
    assert np.isfinite(s).all()
    same = spk[:-1] == spk[1:]
    assert s[same].mean() > s[~same].mean()


def test_score_trials_streams_like_direct_scoring():
    X, spk = speakers_with_nuisance(10)
    rng = np.random.default_rng(0)
    e, t = rng.integers(0, len(X), 1000), rng.integers(0, len(X), 1000)
    for backend in (CosineBackend(), LDACosine(n_components=8), PLDA(n_components=10)):
        backend.fit(X, spk)
        direct = backend.score(X[e], X[t])
        np.testing.assert_allclose(
            backend.score_trials(X, e, t, block_size=37), direct, rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(backend.score_matrix(X[:5], X[5:9])[1, 2], backend.score(X[1], X[7])[0])
    with pytest.raises(ValueError, match="outside"):
        CosineBackend().fit(X, spk).score_trials(X, [0, len(X)], [1, 2])


@pytest.mark.parametrize("offset", [5.0, 1e4])
def test_scoring_many_models_at_once_equals_one_by_one(offset):
    # offset 1e4: rows far from the origin, where |a - m|^2 from |a|^2 - 2 a.m + |m|^2 would cancel badly
    X, spk = speakers_with_nuisance(12, offset=offset)
    rng = np.random.default_rng(1)
    e, t = rng.integers(0, len(X), 700), rng.integers(0, len(X), 700)
    e[:3] = t[:3]  # a row against itself
    parts = [rng.choice(len(X), 120, replace=False) for _ in range(4)]
    for cls, params in (
        (CosineBackend, {}),
        (CosineBackend, {"center": False}),
        (LDACosine, {"n_components": 6}),
        (PLDA, {"n_components": 10}),
    ):
        models = [cls(**params).fit(X[r], spk[r]) for r in parts]
        many = cls.score_trials_of_models(models, X, e, t, block_size=64)
        assert many.shape == (700, 4)
        for k, m in enumerate(models):
            np.testing.assert_allclose(many[:, k], m.score_trials(X, e, t), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        CosineBackend.score_trials_of_models(models[:0] + [CosineBackend().fit(X, spk)], X, [len(X)], [0])
    with pytest.raises(ValueError, match="not fitted"):
        CosineBackend.score_trials_of_models([CosineBackend()], X, [0], [1])
    with pytest.raises(ValueError, match="dim"):
        CosineBackend.score_trials_of_models([CosineBackend().fit(X, spk)], X[:, :3], [0], [1])


def test_cosine_backend_is_centred_cosine():
    X, spk = speakers_with_nuisance(11)
    b = CosineBackend().fit(X, spk)
    e, t = X[:5] - X.mean(0), X[5:10] - X.mean(0)
    expected = (e * t).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(t, axis=1)
    np.testing.assert_allclose(b.score(X[:5], X[5:10]), expected)
    raw = CosineBackend(center=False).fit(X, spk).score(X[:5], X[5:10])
    np.testing.assert_allclose(raw, (lnorm(X[:5]) * lnorm(X[5:10])).sum(1))


def test_asnorm_and_snorm_equal_direct_formula():
    X, spk = speakers_with_nuisance(12, n_spk=8, per_spk=3, dim=6)
    E, _ = speakers_with_nuisance(13, n_spk=3, per_spk=2, dim=6)
    enroll, test = E[:3], E[3:]
    for norm, top in ((ASNorm(CosineBackend(), top_n=5), 5), (SNorm(CosineBackend()), None)):
        norm.fit(X, spk)
        base = CosineBackend().fit(X, spk)
        expected = []
        for e, t in zip(enroll, test, strict=True):
            s = base.score(e, t)[0]
            ce = sorted((base.score(e, c)[0] for c in X), reverse=True)[: top or len(X)]
            ct = sorted((base.score(t, c)[0] for c in X), reverse=True)[: top or len(X)]
            expected.append(0.5 * ((s - np.mean(ce)) / np.std(ce) + (s - np.mean(ct)) / np.std(ct)))
        np.testing.assert_allclose(norm.score(enroll, test), expected, rtol=1e-10)
        idx = np.arange(3)
        np.testing.assert_allclose(
            norm.score_trials(np.vstack([enroll, test]), idx, idx + 3), expected, rtol=1e-10
        )


def test_score_trial_list_takes_utterance_ids():
    X, spk = speakers_with_nuisance(14, n_spk=3, per_spk=2, dim=4)
    b = CosineBackend().fit(X, spk)
    utts = [f"u{k}" for k in range(len(X))]
    np.testing.assert_allclose(
        score_trial_list(b, X, utts, ["u0", "u2"], ["u1", "u3"]), b.score(X[[0, 2]], X[[1, 3]])
    )
    with pytest.raises(ValueError, match="nope"):
        score_trial_list(b, X, utts, ["nope"], ["u1"])


def test_clone_and_errors():
    for est in (CosineBackend(center=False), LDACosine(5), PLDA(3), SNorm(PLDA()), ASNorm(top_n=3)):
        assert repr(clone(est)) == repr(est)
    with pytest.raises(ValueError, match="not fitted"):
        CosineBackend().score(np.ones((1, 3)), np.ones((1, 3)))
    X, spk = speakers_with_nuisance(15, n_spk=3, per_spk=2, dim=4)
    with pytest.raises(ValueError, match="paired rows"):
        CosineBackend().fit(X, spk).score(X[:2], X[:3])
    with pytest.raises(ValueError, match="2 speakers"):
        PLDA().fit(X[:2], spk[:2])
    with pytest.raises(ValueError, match="more than one vector"):
        PLDA().fit(X[::2], spk[::2])  # one vector per speaker: no within-speaker variation
    capped = PLDA(max_iter=1).fit(X, spk)
    assert capped.n_iter_ == 1 and not capped.converged_
    with pytest.raises(ValueError, match="length_norm"):
        PLDA.from_stats(SpeakerStats.from_data(X, spk, length_norm=True))
