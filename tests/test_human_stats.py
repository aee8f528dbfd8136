"""Listener statistics: batched metrics vs cltm.probes.metrics, the two-way bootstrap vs an explicit resample,
its coverage on simulated panels, Cohen's kappa vs scikit-learn, Spearman vs scipy."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

import cltm.human.stats as stats
from cltm.human.compare import kappa_table
from cltm.human.stats import (
    BootstrapSettings,
    cohen_kappa,
    confusion_metrics,
    percentile_interval,
    spearman,
    two_way_bootstrap,
)
from cltm.probes.metrics import accuracy, macro_f1, uar


def _library(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(true, pred), "uar": uar(true, pred), "f1": macro_f1(true, pred)}


@pytest.mark.parametrize("seed", range(6))
def test_confusion_metrics_equal_the_library_on_expanded_answers(seed):
    rng = np.random.default_rng(seed)
    n_classes = 4
    # some classes absent from truth or predictions: the class sets of UAR and F1 must follow the library
    true = rng.choice([0, 1, 2] if seed % 2 else [0, 1, 2, 3], size=30)
    pred = rng.choice([0, 1, 3], size=30)
    weights = rng.integers(0, 4, size=(5, 30))
    weights[:, 0] = 1  # never an empty replicate
    cm = np.zeros((5, n_classes, n_classes))
    for b in range(5):
        np.add.at(cm[b], (true, pred), weights[b])
    batched = confusion_metrics(cm)
    for b in range(5):
        expected = _library(np.repeat(true, weights[b]), np.repeat(pred, weights[b]))
        for name, value in expected.items():
            assert batched[name][b] == pytest.approx(value, abs=1e-12), (name, b)


def test_two_way_bootstrap_equals_an_explicit_resample(monkeypatch):
    """Each replicate equals the library metrics on the answers of the drawn listeners x drawn utterances."""
    rng = np.random.default_rng(3)
    n_listeners, n_utts = 5, 8
    pairs = [(ll, u) for ll in range(n_listeners) for u in range(n_utts) if rng.random() < 0.8]
    listener = np.array([p[0] for p in pairs]) * 7 + 2  # sparse codes: densified inside
    utterance = np.array([p[1] for p in pairs])
    true = utterance % 3
    response = np.where(rng.random(len(pairs)) < 0.6, true, rng.integers(0, 3, len(pairs)))

    drawn = []
    original = stats._multiplicities

    def recording(generator, b, n):
        counts = original(generator, b, n)
        drawn.append(counts)
        return counts

    monkeypatch.setattr(stats, "_multiplicities", recording)
    reps = two_way_bootstrap(listener, utterance, true, response, 3, BootstrapSettings(n_boot=40, chunk=16))
    dense_listener = np.unique(listener, return_inverse=True)[1]
    b_total = 0
    for m_listener, m_utt in zip(drawn[0::2], drawn[1::2], strict=True):
        assert m_listener.shape[1] == n_listeners and m_utt.shape[1] == n_utts
        assert (m_listener.sum(axis=1) == n_listeners).all() and (m_utt.sum(axis=1) == n_utts).all()
        for b in range(m_listener.shape[0]):
            # slow path: repeat each answer once per drawn copy of its listener and of its utterance
            times = (m_listener[b, dense_listener] * m_utt[b, utterance]).astype(int)
            if times.sum() == 0:
                assert np.isnan(reps["accuracy"][b_total])
            else:
                expected = _library(np.repeat(true, times), np.repeat(response, times))
                for name, value in expected.items():
                    assert reps[name][b_total] == pytest.approx(value, abs=1e-12)
            b_total += 1
    assert b_total == 40


def _simulated_panel(rng, mu, sd_listener, sd_utt, n_listeners, n_utts, n_classes):
    ability = rng.normal(0, sd_listener, n_listeners)
    difficulty = rng.normal(0, sd_utt, n_utts)
    p = 1 / (1 + np.exp(-(mu + ability[:, None] + difficulty[None, :])))
    correct = rng.random(p.shape) < p
    listener, utterance = np.meshgrid(np.arange(n_listeners), np.arange(n_utts), indexing="ij")
    true = utterance % n_classes
    wrong = (true + rng.integers(1, n_classes, size=true.shape)) % n_classes
    response = np.where(correct, true, wrong)
    return listener.ravel(), utterance.ravel(), true.ravel(), response.ravel()


def test_two_way_intervals_cover_the_true_panel_accuracy_at_about_the_nominal_rate():
    mu, sd_listener, sd_utt = 1.0, 0.6, 1.2
    # population accuracy E[sigmoid(mu + a + d)], a + d ~ N(0, sd_listener^2 + sd_utt^2): Gauss-Hermite
    z, w = np.polynomial.hermite_e.hermegauss(120)
    truth = float(np.sum(w / np.sqrt(2 * np.pi) / (1 + np.exp(-(mu + np.hypot(sd_listener, sd_utt) * z)))))
    level = 0.9
    settings = BootstrapSettings(n_boot=300, level=level)
    rng = np.random.default_rng(2024)
    n_panels = 200
    covered = 0
    widths = []
    for _ in range(n_panels):
        panel = _simulated_panel(rng, mu, sd_listener, sd_utt, n_listeners=12, n_utts=40, n_classes=4)
        reps = two_way_bootstrap(*panel, 4, settings, rng=rng)
        low, high = percentile_interval(reps["accuracy"], level)
        covered += low <= truth <= high
        widths.append(high - low)
    coverage = covered / n_panels
    # nominal 0.90; the pigeonhole scheme is a little conservative; a listener-only or utterance-only
    # resample covers far less with this much utterance variance
    assert 0.82 <= coverage <= 0.99, coverage
    assert 0.05 < np.mean(widths) < 0.5


def test_percentile_interval_ignores_nan_replicates():
    values = np.array([np.nan, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert percentile_interval(values, 0.5) == pytest.approx(tuple(np.quantile(values[1:], [0.25, 0.75])))
    assert all(np.isnan(percentile_interval(np.array([np.nan]), 0.9)))


@pytest.mark.parametrize("seed", range(8))
def test_cohen_kappa_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = np.array(["angry", "happy", "neutral", "sad"])[: 2 + seed % 3]
    a = rng.choice(classes, size=50)
    b = np.where(rng.random(50) < 0.5, a, rng.choice(classes, size=50))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    labels = classes[:2]
    expected = cohen_kappa_score(a, b, labels=labels)
    assert cohen_kappa(a, b, labels=labels) == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(cohen_kappa_score(["a", "b"], ["b", "a"]))
    assert np.isnan(cohen_kappa(["a", "a"], ["a", "a"]))  # expected agreement 1: undefined
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa(["a"], ["a", "b"])


def test_kappa_table_equals_the_pure_function_per_group():
    rng = np.random.default_rng(7)
    rows = []
    for group in ("g1", "g2", "g3"):
        a = rng.choice(["x", "y", "z"], size=25)
        b = np.where(rng.random(25) < 0.6, a, rng.choice(["x", "y", "z"], size=25))
        rows += [{"group": group, "a": x, "b": y} for x, y in zip(a, b, strict=True)]
    rows += [{"group": "same", "a": "x", "b": "x"}] * 3
    df = pl.DataFrame(rows)
    table = kappa_table(df, ["group"], "a", "b")
    for group, part in df.group_by("group"):
        row = table.filter(pl.col("group") == group[0]).row(0, named=True)
        expected = cohen_kappa(part["a"].to_numpy(), part["b"].to_numpy())
        assert row["n_utts"] == part.height
        assert row["agreement"] == pytest.approx(float((part["a"] == part["b"]).mean()))
        if np.isnan(expected):
            assert np.isnan(row["kappa"])
        else:
            assert row["kappa"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_spearman_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    if seed % 2:
        x = np.round(x)  # ties get average ranks
        y = np.round(y)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_degenerate_inputs():
    assert np.isnan(spearman([1.0], [2.0]))
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_bootstrap_settings_are_checked():
    with pytest.raises(ValueError, match="n_boot"):
        BootstrapSettings(n_boot=0)
    with pytest.raises(ValueError, match="level"):
        BootstrapSettings(level=1.0)
