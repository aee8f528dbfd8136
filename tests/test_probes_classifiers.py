"""Classification probes: sensible on separable data, scikit-learn API (clone), deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cltm.probes import LDAProbe, LogisticProbe, MLPProbe, WeightedLayerSumProbe, metrics


def blobs(seed, n=240, dim=32, n_classes=2, sep=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, dim)) * sep / np.sqrt(dim)
    X = centres[y] + 0.5 * rng.normal(size=(n, dim)) + 10.0
    labels = np.array(["female", "male", "other", "x"])[y]
    return X, labels


@pytest.mark.parametrize(
    "probe",
    [LogisticProbe(), LDAProbe(), MLPProbe(max_epochs=30, seed=1), MLPProbe(hidden=(16,), max_epochs=30)],
)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_probes_learn_separable_data(probe, n_classes):
    X_all, y_all = blobs(0, n=400, n_classes=n_classes)
    rows = np.random.default_rng(0).permutation(len(X_all))
    train, test = rows[:300], rows[300:]
    model = clone(probe).fit(X_all[train], y_all[train])
    pred = model.predict(X_all[test])
    assert set(model.classes_) == set(np.unique(y_all))
    assert metrics.macro_f1(y_all[test], pred) > 0.9
    proba = model.predict_proba(X_all[test])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.classes_[proba.argmax(1)], pred)


def test_logistic_probe_is_the_standardised_balanced_sklearn_model():
    X, y = blobs(2, n=90, dim=10, sep=0.8)
    y = np.where(np.arange(90) < 60, y, "male")  # imbalanced
    probe = LogisticProbe(C=0.3).fit(X, y)
    ref = LogisticRegression(C=0.3, class_weight="balanced", max_iter=1000).fit(
        StandardScaler().fit_transform(X), y
    )
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-3, atol=1e-4)


def test_clone_and_get_params():
    for probe in (
        LogisticProbe(C=0.1),
        LDAProbe(0.2),
        MLPProbe(hidden=(8, 4), seed=3),
        WeightedLayerSumProbe(lr=1e-2),
    ):
        copy = clone(probe)
        assert copy.get_params() == probe.get_params()
        assert copy is not probe


def test_mlp_default_shape_scales_with_input_and_seed_is_deterministic():
    X, y = blobs(3, dim=768, n=120)
    model = MLPProbe(max_epochs=3).fit(X, y)
    sizes = [m.out_features for m in model.model_ if hasattr(m, "out_features")]
    assert sizes == [128, 16, 2]
    again = MLPProbe(max_epochs=3).fit(X, y)
    np.testing.assert_array_equal(model.decision_function(X), again.decision_function(X))
    other = MLPProbe(max_epochs=3, seed=5).fit(X, y)
    assert not np.array_equal(model.decision_function(X), other.decision_function(X))


def test_weighted_layer_sum_finds_the_informative_layer():
    rng = np.random.default_rng(4)
    n, layers, dim = 300, 5, 16
    y = np.arange(n) % 2
    X = rng.normal(size=(n, layers, dim))
    X[:, 3, :4] += 2.0 * (2 * y[:, None] - 1)  # only layer 3 carries the label
    model = WeightedLayerSumProbe(seed=0).fit(X[:200], y[:200])
    w = model.layer_weights_
    assert w.shape == (layers,) and w.sum() == pytest.approx(1.0)
    assert int(np.argmax(w)) == 3
    assert metrics.accuracy(y[200:], model.predict(X[200:])) > 0.9


def test_bad_input():
    X, y = blobs(5, n=20, dim=4)
    with pytest.raises(ValueError, match="2 classes"):
        LogisticProbe().fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="labels"):
        MLPProbe().fit(X, y[:10])
    with pytest.raises(ValueError, match=r"\[n, layers, dim\]"):
        WeightedLayerSumProbe().fit(X, y)
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LDAProbe().fit(X_nan, y)
