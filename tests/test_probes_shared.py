"""The shared-product L-BFGS solver (the sweep's default) against scikit-learn, one problem at a time."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cltm.probes import fit_logistic_shared
from cltm.probes.metrics import binary_metrics_by_column, classification_metrics


def sklearn_exact(X, y, C, class_weight="balanced"):
    # scikit-learn's Newton solver at tol 1e-12 is the optimum itself: the reference for both solvers
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, solver="newton-cholesky", tol=1e-12, max_iter=500),
    ).fit(X, y)


def language_blocks(rng, n_languages=4, per_language=40, d=60):
    """Anisotropic features with a per-language offset; label 1 shifts a language-specific direction."""
    mixing = rng.normal(size=(d, d)) * (np.arange(1, d + 1) ** -0.6)[:, None]
    X, y, blocks = [], [], []
    for k in range(n_languages):
        labels = np.tile([0, 1], per_language // 2)
        rng.shuffle(labels)
        Z = rng.normal(size=(per_language, d))
        Z[:, k % d] += 1.2 * labels
        Z[:, 0] += 0.8 * labels
        X.append(Z @ mixing + rng.normal(scale=2.0, size=d))
        y.append(labels)
        blocks.append(np.arange(k * per_language, (k + 1) * per_language))
    return np.concatenate(X), np.concatenate(y), blocks


def sweep_subsets(blocks):
    """The sweep's structure: N of each language, its 2N, and every pair of Ns (overlapping subsets)."""
    half = [b[: len(b) // 2] for b in blocks]
    subsets = [h for h in half] + list(blocks)
    subsets += [
        np.concatenate([half[i], half[j]]) for i in range(len(blocks)) for j in range(i + 1, len(blocks))
    ]
    return subsets


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_overlapping_subsets_match_sklearn_one_by_one(C):
    rng = np.random.default_rng(int(C * 10))
    X, y, blocks = language_blocks(rng)
    subsets = sweep_subsets(blocks)
    fit = fit_logistic_shared(X, y, subsets, C=C, tol=1e-10, dtype=np.float64)
    assert fit.converged.all()
    for k, rows in enumerate(subsets):
        ref = sklearn_exact(X[rows], y[rows], C)
        coef = ref[-1].coef_[0]
        np.testing.assert_allclose(fit.coef[k], coef, atol=1e-5 * np.abs(coef).max(), rtol=0)
        assert fit.intercept[k] == pytest.approx(ref[-1].intercept_[0], abs=1e-5 * max(1.0, abs(coef).max()))
        np.testing.assert_allclose(fit.mean[k], ref[0].mean_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fit.scale[k], ref[0].scale_, rtol=1e-7)
        ref_dec = ref.decision_function(X)
        np.testing.assert_allclose(fit.decision_function(X)[k], ref_dec, atol=1e-4 * np.abs(ref_dec).max())


def test_unbalanced_classes_constant_feature_and_no_class_weight():
    rng = np.random.default_rng(3)
    X, y, blocks = language_blocks(rng, n_languages=3, per_language=30, d=20)
    X[:, 5] = 4.0  # constant everywhere: StandardScaler leaves it unscaled, its coefficient is 0
    keep = np.flatnonzero((y == 1) | (rng.random(len(y)) < 0.5))  # drop about half of the class-0 rows
    subsets = [np.intersect1d(b, keep) for b in blocks] + [np.intersect1d(np.r_[blocks[0], blocks[2]], keep)]
    for class_weight in ("balanced", None):
        fit = fit_logistic_shared(
            X, y, subsets, C=0.5, class_weight=class_weight, tol=1e-10, dtype=np.float64
        )
        for k, rows in enumerate(subsets):
            ref = sklearn_exact(X[rows], y[rows], 0.5, class_weight=class_weight)
            coef = ref[-1].coef_[0]
            np.testing.assert_allclose(fit.coef[k], coef, atol=1e-5 * np.abs(coef).max(), rtol=0)
            assert fit.coef[k][5] == pytest.approx(0.0, abs=1e-9)


def test_float32_products_stay_accurate_with_large_offsets():
    rng = np.random.default_rng(5)
    X, y, blocks = language_blocks(rng, n_languages=4, per_language=60, d=100)
    X = X * 50 + 200  # large raw magnitudes, as some SSL layers have: float32 must still resolve gradients
    subsets = sweep_subsets(blocks)
    fit = fit_logistic_shared(X, y, subsets, tol=1e-5)
    assert fit.converged.all()  # float32 where it can, float64 to finish what it cannot resolve
    for k in range(len(subsets)):
        ref = sklearn_exact(X[subsets[k]], y[subsets[k]], 1.0)
        coef = ref[-1].coef_[0]
        np.testing.assert_allclose(fit.coef[k], coef, atol=2e-3 * np.abs(coef).max(), rtol=0)


def test_default_tolerance_agrees_with_sklearn_default_predictions():
    """At the default tol (scikit-learn's own), held-out predictions match scikit-learn's default fit."""
    rng = np.random.default_rng(7)
    X, y, blocks = language_blocks(rng, n_languages=5, per_language=60, d=80)
    test = np.arange(len(y))
    subsets = sweep_subsets(blocks)
    fit = fit_logistic_shared(X, y, subsets)
    assert fit.converged.all()
    disagree = []
    for k, rows in enumerate(subsets):
        default = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
        default.fit(X[rows], y[rows])
        disagree.append(np.mean(fit.predict(X[test])[k] != default.predict(X[test])))
    assert np.mean(disagree) < 0.01


def test_bad_input_is_named():
    rng = np.random.default_rng(0)
    X, y, blocks = language_blocks(rng, n_languages=2, per_language=20, d=8)
    with pytest.raises(ValueError, match="problem 1: its rows are not distinct"):
        fit_logistic_shared(X, y, [blocks[0], np.r_[blocks[1], blocks[1][:1]]])
    with pytest.raises(ValueError, match="problem 0: only one class"):
        fit_logistic_shared(X, y, [blocks[0][y[blocks[0]] == 1]])
    with pytest.raises(ValueError, match="labels must be 0/1"):
        fit_logistic_shared(X, y + 1, [blocks[0]])
    with pytest.raises(ValueError, match="row indices"):
        fit_logistic_shared(X, y, [np.r_[blocks[0], len(y)]])
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic_shared(X, y, [blocks[0]], C=0)


def test_binary_metrics_by_column_equal_classification_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    decision = rng.normal(size=(50, 30))
    decision[:, 0] = 1.0  # predicts only class 1
    decision[:, 1] = -1.0  # only class 0
    decision[:, 2] = np.where(y == 1, 1.0, -1.0)  # perfect
    got = binary_metrics_by_column(y, decision > 0)
    for k in range(decision.shape[1]):
        ref = classification_metrics(y, (decision[:, k] > 0).astype(int))
        assert got[k]["f1"] == pytest.approx(ref["f1"], abs=1e-12)
        assert got[k]["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        assert got[k]["uar"] == pytest.approx(ref["uar"], abs=1e-12)
    only_zeros = np.zeros(20, dtype=int)  # a test set with one class: F1 over the classes present
    got = binary_metrics_by_column(only_zeros, decision[:20] > 0)
    for k in range(decision.shape[1]):
        ref = classification_metrics(only_zeros, (decision[:20, k] > 0).astype(int))
        assert got[k]["f1"] == pytest.approx(ref["f1"], abs=1e-12)


def test_preconditioner_keeps_the_optimum_and_cuts_pair_iterations():
    """Languages far apart (offsets >> spread): the between-atom preconditioner changes the path only."""
    rng = np.random.default_rng(11)
    X, y, blocks = language_blocks(rng, n_languages=4, per_language=60, d=50)
    for k, b in enumerate(blocks):
        X[b] += 6.0 * rng.normal(size=X.shape[1]) * (k + 1)  # a large offset per language
    subsets = sweep_subsets(blocks)
    pairs = slice(2 * len(blocks), None)
    exact = [fit_logistic_shared(X, y, subsets, tol=1e-10, dtype=np.float64, precondition=p) for p in (1, 0)]
    for k in (0, 4, len(subsets) - 1):  # a single, a self, a pair
        ref = sklearn_exact(X[subsets[k]], y[subsets[k]], 1.0)[-1].coef_[0]
        for fit in exact:
            np.testing.assert_allclose(fit.coef[k], ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    with_pre = fit_logistic_shared(X, y, subsets)
    without = fit_logistic_shared(X, y, subsets, precondition=False)
    assert with_pre.converged.all() and without.converged.all()
    assert with_pre.n_iter[pairs].mean() < 0.8 * without.n_iter[pairs].mean()


def test_margins_carried_across_a_rebuild_equal_recomputed_ones():
    from cltm.probes.shared_logistic import _Atom, _atoms_of, _Blocks

    rng = np.random.default_rng(4)
    X, y, blocks = language_blocks(rng, n_languages=3, per_language=20, d=6)
    subsets = sweep_subsets(blocks) + [np.r_[blocks[0], blocks[2][:7]]]  # atoms of several shapes
    atoms = [
        _Atom(X[rows] - X[rows].mean(0), X[rows].mean(0), members, y[rows].astype(float))
        for rows, members in _atoms_of(subsets, len(X))
    ]
    nb = len(subsets)
    weights = np.ones(nb)
    sizes = np.array([len(s) for s in subsets], dtype=float)
    everything = _Blocks(atoms, np.arange(nb), nb, weights, weights, 1.0, sizes)
    u, c = rng.normal(size=(nb, X.shape[1])), rng.normal(size=nb)
    margins = everything.products(u, c)
    for p, rows in enumerate(subsets):  # the layout itself: every problem's margins are its rows' x . u + c
        got = margins[everything.problem_of == p]
        np.testing.assert_allclose(np.sort(got), np.sort(X[rows] @ u[p] + c[p]), atol=1e-9)
    keep = np.array([1, 3, 5, 6, nb - 1])
    part = _Blocks(atoms, keep, nb, weights, weights, 1.0, sizes)
    real = part.problem_of < len(keep)  # padding pairs weigh nothing; their margins are never read
    carried, recomputed = part.carry(margins, everything), part.products(u[keep], c[keep])
    np.testing.assert_allclose(carried[real], recomputed[real], atol=1e-9)
    # the transposed product: per problem, sum of r (x - its mean) and sum of r, for any per-pair r
    residual = rng.normal(size=len(everything.target)) * (everything.problem_of < nb)
    sum_w, sum_r = everything.transposed_products(residual)
    for p, rows in enumerate(subsets):
        mine = everything.problem_of == p
        r_of_row = {}  # each (row, problem) pair's residual, keyed by the row's margin (distinct here)
        for m, r in zip(margins[mine], residual[mine], strict=True):
            r_of_row[round(float(m), 9)] = r
        r_rows = np.array([r_of_row[round(float(m), 9)] for m in X[rows] @ u[p] + c[p]])
        np.testing.assert_allclose(sum_w[p], r_rows @ (X[rows] - X[rows].mean(0)), atol=1e-9)
        assert sum_r[p] == pytest.approx(r_rows.sum(), abs=1e-9)


def test_tolerance_beyond_float32_is_finished_in_float64():
    """float32 state cannot resolve tol=1e-9: those problems continue in float64 (atoms and state) from where
    they stopped and reach the exact optimum."""
    rng = np.random.default_rng(9)
    X, y, blocks = language_blocks(rng, n_languages=3, per_language=40, d=30)
    X[blocks[1]] += 25.0  # one language far from the others: offsets >> spread
    subsets = sweep_subsets(blocks)
    fit = fit_logistic_shared(X, y, subsets, tol=1e-9)
    assert fit.converged.all()
    for k, rows in enumerate(subsets):
        coef = sklearn_exact(X[rows], y[rows], 1.0)[-1].coef_[0]
        np.testing.assert_allclose(fit.coef[k], coef, atol=1e-5 * np.abs(coef).max(), rtol=0)


def test_between_directions_of_two_atoms_equal_the_eigendecomposition():
    from cltm.probes.shared_logistic import _between_directions

    rng = np.random.default_rng(12)
    n_atoms, d = 5, 7
    centres = rng.normal(size=(n_atoms, d)) * 3
    counts = rng.integers(5, 40, size=n_atoms).astype(float)
    problems = [(0, 1), (2, 3), (1, 4), (0, 2, 3)]  # pairs take the closed form, the triple the general one
    membership = np.zeros((len(problems), n_atoms))
    for p, atoms in enumerate(problems):
        membership[p, list(atoms)] = 1.0
    mean = membership @ (counts[:, None] * centres) / (membership @ counts)[:, None]
    scale = rng.uniform(0.5, 2.0, size=(len(problems), d))
    directions, between = _between_directions(membership, counts, centres, mean, scale)
    for p, atoms in enumerate(problems):
        mu = (centres[list(atoms)] - mean[p]) / scale[p]
        scatter = (counts[list(atoms)][:, None] * mu).T @ mu  # between-atom scatter, standardised space
        lam, vec = np.linalg.eigh(scatter)
        top = vec[:, -1]
        assert between[p, 0] == pytest.approx(lam[-1], rel=1e-10)
        assert abs(directions[p, 0] @ top) == pytest.approx(1.0, abs=1e-10)  # same line, either sign
