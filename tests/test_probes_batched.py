"""The batched logistic solver against scikit-learn fitted one problem at a time (tightly converged)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cltm.probes import fit_logistic_batched, fit_logistic_subsets


def sklearn_fit(X, y, C, class_weight="balanced", sample_weight=None):
    model = make_pipeline(
        StandardScaler(),
        # lbfgs stops at gradients ~1e-6 whatever its tol; sklearn's Newton solver reaches the optimum itself
        LogisticRegression(
            C=C, class_weight=class_weight, solver="newton-cholesky", tol=1e-12, max_iter=1000
        ),
    )
    model.fit(X, y, logisticregression__sample_weight=sample_weight)
    return model


def random_problem(rng, n, d, correlated=True):
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    Z = rng.normal(size=(n, d))
    Z[:, 0] += 1.5 * y
    Z[:, 1] -= 0.7 * y
    if correlated:  # anisotropic features with an offset, like pooled SSL layers
        A = rng.normal(size=(d, d)) * (np.arange(1, d + 1) ** -0.7)[:, None]
        Z = Z @ A + 3.0
    return Z, y


def assert_matches(fit, b, model, X):
    ref_coef = model[-1].coef_[0]
    scale = np.abs(ref_coef).max()
    np.testing.assert_allclose(fit.coef[b], ref_coef, atol=1e-7 * scale, rtol=0)
    assert fit.intercept[b] == pytest.approx(
        model[-1].intercept_[0], abs=1e-7 * max(1, abs(fit.intercept[b]))
    )
    np.testing.assert_allclose(fit.mean[b], model[0].mean_, rtol=1e-10)
    np.testing.assert_allclose(fit.scale[b], model[0].scale_, rtol=1e-10)
    dec = fit.decision_function(X)[b]
    ref_dec = model.decision_function(X)
    np.testing.assert_allclose(dec, ref_dec, atol=1e-7 * np.abs(ref_dec).max())
    clear = np.abs(ref_dec) > 1e-6
    np.testing.assert_array_equal(fit.predict(X)[b][clear], model.predict(X)[clear])


@pytest.mark.parametrize(("n", "d"), [(40, 60), (80, 12)])  # fewer rows than dims (the sweep) and more
@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_equal_size_problems_match_sklearn(n, d, C):
    rng = np.random.default_rng(int(C * 100) + n)
    problems = [random_problem(rng, n, d, correlated=k % 2 == 0) for k in range(5)]
    X = np.stack([p[0] for p in problems])
    y = np.stack([p[1] for p in problems])
    fit = fit_logistic_batched(X, y, C=C, chunk_size=2)
    assert fit.converged.all()
    for b, (Xb, yb) in enumerate(problems):
        assert_matches(fit, b, sklearn_fit(Xb, yb, C), Xb)


def test_padded_problems_of_unequal_size_and_weights():
    rng = np.random.default_rng(1)
    problems = [random_problem(rng, n, 20) for n in (15, 33, 50, 28)]
    weights = [rng.uniform(0.5, 2.0, len(p[1])) for p in problems]
    fit = fit_logistic_batched(
        [p[0] for p in problems],
        [p[1] for p in problems],
        C=0.5,
        sample_weight=_pad(weights),
        chunk_size=3,
    )
    for b, ((Xb, yb), w) in enumerate(zip(problems, weights, strict=True)):
        assert_matches(fit, b, sklearn_fit(Xb, yb, 0.5, sample_weight=w), Xb)
    plain = fit_logistic_batched([p[0] for p in problems], [p[1] for p in problems], C=0.5, class_weight=None)
    for b, (Xb, yb) in enumerate(problems):
        assert_matches(plain, b, sklearn_fit(Xb, yb, 0.5, class_weight=None), Xb)


def _pad(arrays):
    out = np.zeros((len(arrays), max(len(a) for a in arrays)))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def test_subsets_of_shared_features_equal_explicit_problems():
    rng = np.random.default_rng(2)
    X, y = random_problem(rng, 200, 16)
    subsets = [rng.choice(200, size, replace=False) for size in (40, 60, 60, 90, 120)]
    fit = fit_logistic_subsets(X, y, subsets, C=2.0, chunk_size=2)
    for b, rows in enumerate(subsets):
        assert_matches(fit, b, sklearn_fit(X[rows], y[rows], 2.0), X)
    # one shared test set scores every model in a single call: [problems, test rows]
    assert fit.decision_function(X[:7]).shape == (5, 7)


def test_constant_feature_is_left_unscaled_like_sklearn():
    rng = np.random.default_rng(3)
    X, y = random_problem(rng, 30, 8, correlated=False)
    X[:, 3] = 2.5
    fit = fit_logistic_batched(X[None], y[None], C=1.0)
    assert_matches(fit, 0, sklearn_fit(X, y, 1.0), X)


def test_errors_name_the_problem():
    rng = np.random.default_rng(4)
    X, y = random_problem(rng, 10, 3)
    with pytest.raises(ValueError, match="problem 1: only one class"):
        fit_logistic_batched([X, X], [y, np.zeros(10, int)])
    with pytest.raises(ValueError, match="problem 0: labels must be 0/1"):
        fit_logistic_batched([X], [y + 1])
    with pytest.raises(ValueError, match="10 rows but 9 labels"):
        fit_logistic_batched([X], [y[:9]])
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic_batched([X], [y], C=0)
