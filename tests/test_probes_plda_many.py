"""fit_plda_many (all models of a sweep fitted in lockstep) against per-model PLDA.from_stats fits."""

from __future__ import annotations

import numpy as np
import pytest

from cltm.probes import PLDA
from cltm.probes.plda_many import ManyPLDASettings, fit_plda_many
from cltm.probes.stats import SpeakerStats

DIM = 24


def _stats(seed: int, n_speakers: int, lo: int, hi: int, *, length_norm: bool = False) -> SpeakerStats:
    """Speakers with uneven counts (so EM has work to do) and an uneven spectrum (so PCA picks directions)."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(1.5, 0.3, DIM)
    rows, labels = [], []
    for s in range(n_speakers):
        m = int(rng.integers(lo, hi + 1))
        centre = rng.normal(scale=0.8, size=DIM) * scale
        rows.append(centre + rng.normal(size=(m, DIM)) * np.linspace(1.0, 0.4, DIM) + seed)
        labels += [f"{seed}-{s}"] * m
    return SpeakerStats.from_data(np.concatenate(rows), np.array(labels), length_norm=length_norm)


@pytest.fixture(scope="module")
def parts() -> list[SpeakerStats]:
    # four "languages" and a few-speaker set: 5 speakers in 24 dimensions
    return [_stats(i, 25, 2, 9) for i in range(4)] + [_stats(9, 5, 2, 6)]


def _items(parts):
    return [*parts, (parts[0], parts[1]), (parts[2], parts[3]), (parts[4], parts[0])]


def _reference(item, settings: ManyPLDASettings) -> PLDA:
    stats = item if isinstance(item, SpeakerStats) else sum(item)
    return PLDA.from_stats(stats, **settings.plda_params())


def _test_vectors(seed: int = 123) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(40, DIM)) * 1.5


def _assert_same_models(many, items, settings, rtol=1e-8):
    X = _test_vectors()
    for item, model in zip(items, many, strict=True):
        ref = _reference(item, settings)
        assert model.n_iter_ == ref.n_iter_
        assert model.converged_ == ref.converged_
        assert model.loglik_ == pytest.approx(ref.loglik_, rel=1e-9)
        expected = ref.score_matrix(X, X)
        got = model.score_matrix(X, X)
        assert np.max(np.abs(got - expected)) <= rtol * np.max(np.abs(expected))
        np.testing.assert_allclose(model.psi_, ref.psi_, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("n_components", [None, 10])
def test_lockstep_fits_equal_per_model_fits(parts, n_components):
    settings = ManyPLDASettings(n_components=n_components, batch_size=3)  # batches of mixed sizes
    items = _items(parts)
    many = fit_plda_many(items, settings)
    _assert_same_models(many, items, settings)
    # the batch really held models that stopped at different EM steps (the per-model convergence masks)
    assert len({m.n_iter_ for m in many}) > 1


def test_batched_torch_pca_matches(parts):
    # the GPU code path (one batched torch eigh), run on the CPU
    settings = ManyPLDASettings(n_components=10, pca_solver="torch")
    items = _items(parts)
    _assert_same_models(fit_plda_many(items, settings), items, settings)


def test_step_cap_and_plain_steps_match(parts):
    # max_iter 4: one SQUAREM cycle, then plain EM steps; nobody converges
    settings = ManyPLDASettings(n_components=10, max_iter=4, tol=1e-12)
    items = _items(parts)
    many = fit_plda_many(items, settings)
    assert not any(m.converged_ for m in many)
    _assert_same_models(many, items, settings)


def test_em_steps_zero_is_the_moment_start(parts):
    settings = ManyPLDASettings(n_components=10, em_steps=0)
    many = fit_plda_many(parts, settings)
    for item, model in zip(parts, many, strict=True):
        ref = PLDA.from_stats(item, n_components=10, max_iter=0)
        X = _test_vectors(7)
        np.testing.assert_allclose(model.score_matrix(X, X), ref.score_matrix(X, X), rtol=1e-8, atol=1e-8)
        assert model.n_iter_ == 0


def test_length_normalised_statistics(parts):
    ln = [_stats(i, 12, 2, 7, length_norm=True) for i in range(3)]
    settings = ManyPLDASettings(n_components=8, length_norm=True)
    items = [*ln, (ln[0], ln[2])]
    _assert_same_models(fit_plda_many(items, settings), items, settings)


def test_scoring_many_models_at_once_works_on_lockstep_fits(parts):
    settings = ManyPLDASettings(n_components=10)
    many = fit_plda_many(parts, settings)
    X = _test_vectors(3)
    e, t = np.arange(20), np.arange(20, 40)
    together = PLDA.score_trials_of_models(many, X, e, t)
    for c, item in enumerate(parts):
        np.testing.assert_allclose(
            together[:, c], _reference(item, settings).score_trials(X, e, t), rtol=1e-8
        )


def test_shared_pca_over_the_whole_space_is_exact(parts):
    # with the shared subspace as wide as the space, each model's Rayleigh-Ritz step is its exact PCA
    settings = ManyPLDASettings(n_components=10, pca="shared", oversample=DIM / 10)
    items = _items(parts)
    _assert_same_models(fit_plda_many(items, settings), items, settings, rtol=1e-7)


def test_shared_pca_narrow_is_an_approximation(parts):
    # a narrower shared subspace is a different (approximate) model, but a valid one
    items = _items(parts)
    exact = fit_plda_many(items, ManyPLDASettings(n_components=10))
    approx = fit_plda_many(items, ManyPLDASettings(n_components=10, pca="shared", oversample=1.2))
    X = _test_vectors(5)
    for a, b in zip(exact, approx, strict=True):
        sa, sb = a.score_matrix(X, X).ravel(), b.score_matrix(X, X).ravel()
        assert np.isfinite(sb).all()
        assert np.corrcoef(sa, sb)[0, 1] > 0.5


def test_float32_pca_is_close(parts):
    items = _items(parts)
    exact = fit_plda_many(items, ManyPLDASettings(n_components=10))
    f32 = fit_plda_many(items, ManyPLDASettings(n_components=10, pca_dtype="float32"))
    X = _test_vectors(5)
    for a, b in zip(exact, f32, strict=True):
        sa, sb = a.score_matrix(X, X), b.score_matrix(X, X)
        assert np.max(np.abs(sa - sb)) <= 1e-3 * np.max(np.abs(sa))


def test_torch_threads_restored(parts):
    import torch

    before = torch.get_num_threads()
    fit_plda_many(parts[:2], ManyPLDASettings(n_components=5, threads=1))
    assert torch.get_num_threads() == before


def test_bad_input(parts):
    with pytest.raises(ValueError, match="length_norm=True"):
        fit_plda_many(parts[:1], ManyPLDASettings(length_norm=True))
    one_speaker = SpeakerStats.from_data(np.random.default_rng(0).normal(size=(5, DIM)), ["a"] * 5)
    with pytest.raises(ValueError, match="at least 2 speakers"):
        fit_plda_many([one_speaker])
    no_moments = SpeakerStats.from_data(_test_vectors(), np.arange(40) % 4, second_moments=False)
    with pytest.raises(ValueError, match="second moments"):
        fit_plda_many([no_moments])
    with pytest.raises(ValueError, match="pca mode"):
        fit_plda_many(parts[:1], ManyPLDASettings(pca="fast"))
    with pytest.raises(ValueError, match="pca_solver"):
        fit_plda_many(parts[:1], ManyPLDASettings(pca_solver="magma"))
    with pytest.raises(TypeError, match="SpeakerStats"):
        fit_plda_many([[]])
    assert fit_plda_many([]) == []


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_wide_scoring_equals_per_model_scoring(parts, dtype, rtol):
    from cltm.probes.plda_many import score_trials_plda_many

    many = fit_plda_many(_items(parts), ManyPLDASettings(n_components=10))
    X = _test_vectors(11)
    rng = np.random.default_rng(0)
    e, t = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    got = score_trials_plda_many(many, X, e, t, dtype=dtype, block_size=64)  # several blocks
    expected = PLDA.score_trials_of_models(many, X, e, t)
    assert got.shape == expected.shape == (300, len(many))
    assert np.max(np.abs(got - expected)) <= rtol * np.max(np.abs(expected))


def test_wide_scoring_bad_input(parts):
    from cltm.probes.plda_many import score_trials_plda_many

    many = fit_plda_many(parts[:2], ManyPLDASettings(n_components=10))
    X = _test_vectors()
    with pytest.raises(ValueError, match="outside"):
        score_trials_plda_many(many, X, [0, 99], [1, 2])
    with pytest.raises(ValueError, match="dim"):
        score_trials_plda_many(many, X[:, :5], [0], [1])
    with pytest.raises(TypeError, match="not a PLDA"):
        score_trials_plda_many([object()], X, [0], [1])
    with pytest.raises(ValueError, match="n_components"):
        score_trials_plda_many(
            [*many, fit_plda_many(parts[:1], ManyPLDASettings(n_components=5))[0]], X, [0], [1]
        )


def test_float32_em_is_close(parts):
    # the sweep runs the EM in float32: scores within 1e-3 relative of the float64 lockstep fit, same steps
    items = _items(parts)
    f64 = fit_plda_many(items, ManyPLDASettings(n_components=10, em_steps=6))
    f32 = fit_plda_many(items, ManyPLDASettings(n_components=10, em_steps=6, em_dtype="float32"))
    X = _test_vectors(9)
    for a, b in zip(f64, f32, strict=True):
        sa, sb = a.score_matrix(X, X), b.score_matrix(X, X)
        assert b.between_.dtype == b.within_.dtype == b.psi_.dtype == np.float64
        assert np.max(np.abs(sa - sb)) <= 1e-3 * np.max(np.abs(sa))
        assert a.n_iter_ == b.n_iter_


def test_batches_one_at_a_time_equal_the_whole_fit(parts):
    from cltm.probes.plda_many import iter_fit_plda_many

    settings = ManyPLDASettings(n_components=10, batch_size=3)
    items = _items(parts)
    whole = fit_plda_many(items, settings)
    starts, got = [], []
    for start, batch in iter_fit_plda_many(items, settings):
        starts.append(start)
        got.extend(batch)
    assert starts == list(range(0, len(items), 3))
    X = _test_vectors(4)
    for a, b in zip(whole, got, strict=True):
        np.testing.assert_array_equal(a.score_matrix(X, X), b.score_matrix(X, X))


def test_scoring_arrays_score_as_the_model(parts):
    from cltm.probes.plda_many import score_trials_wide, scoring_arrays

    many = fit_plda_many(_items(parts), ManyPLDASettings(n_components=10))
    X = _test_vectors(13)
    rng = np.random.default_rng(1)
    e, t = rng.integers(0, 40, 200), rng.integers(0, 40, 200)
    got = score_trials_wide([scoring_arrays(m, "float64") for m in many], X, e, t, dtype="float64")
    for c, model in enumerate(many):
        np.testing.assert_allclose(got[:, c], model.score_trials(X, e, t), rtol=1e-10, atol=1e-10)
    # the device path (torch; what runs on a GPU) is the same arithmetic, block by block
    import cltm.probes.plda_many as pm

    seen = {}

    def on_cpu(arrays, const, enroll, test, device, block_size, _torch_path=pm._score_wide_torch):
        seen["device"] = device
        return _torch_path(arrays, const, enroll, test, "cpu", block_size)

    pm._score_wide_torch, original = on_cpu, pm._score_wide_torch
    try:
        scorings = [scoring_arrays(m, "float64") for m in many]
        on_device = score_trials_wide(scorings, X, e, t, dtype="float64", block_size=64, device="cuda")
    finally:
        pm._score_wide_torch = original
    assert seen["device"] == "cuda"
    np.testing.assert_allclose(on_device, got, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="dim"):
        score_trials_wide([scoring_arrays(many[0])], X[:, :5], [0], [1])
    with pytest.raises(ValueError, match="not fitted"):
        scoring_arrays(PLDA())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("em_dtype", "float16", "em_dtype"),
        ("score_dtype", "half", "score_dtype"),
        ("em_steps", -1, "em_steps"),
    ],
)
def test_bad_settings(parts, field, value, message):
    with pytest.raises(ValueError, match=message):
        fit_plda_many(parts[:1], ManyPLDASettings(n_components=5, **{field: value}))
