"""The benchmark's careful naive loop against scikit-learn called directly, run by run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_matrix.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_matrix", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_careful_loop_equals_sklearn_fitted_per_run(bench):
    man, X = bench.synthetic_corpus(3, 12, 4, 10, 1, seed=3)
    seeds = [0, 1]
    runs, fits = bench.careful_loop(X, man, n=6, seeds=seeds)
    plans = bench.language_plans(man, "gender", n=6, seeds=seeds)
    langs = list(plans)
    L = len(langs)
    assert fits == len(seeds) * (L + L + L * (L - 1) // 2)  # distinct sets only, per layer and seed
    assert runs.height == len(seeds) * L * (2 + 2 * (L - 1))
    y = (man["gender"].to_numpy() == "male").astype(int)
    for run in runs.iter_rows(named=True):
        seed, target, donor = run["seed"], run["target"], run["donor"]
        train = {
            "single": plans[target].rows_n[seed],
            "self": plans[target].rows_2n[seed],
            "pair": np.r_[plans[target].rows_n[seed], plans[donor].rows_n[seed]],
            "zero_shot": plans[donor].rows_n[seed],
        }[run["condition"]]
        Xl = X[run["layer"]]
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
        model.fit(Xl[train], y[train])
        test = plans[target].test_rows
        pred = model.predict(Xl[test])
        assert run["n_train"] == len(train)
        assert run["f1"] == pytest.approx(f1_score(y[test], pred, average="macro"), abs=1e-12)
        assert run["accuracy"] == pytest.approx(accuracy_score(y[test], pred), abs=1e-12)


def test_matmul_peak_is_measured(bench):
    assert bench.matmul_peak_gflops(size=128, repeats=2) > 0
