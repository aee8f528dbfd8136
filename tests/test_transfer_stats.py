"""CLTM statistics against hand computations and a Monte-Carlo estimate of the delta-method SE."""

import math

import numpy as np
import polars as pl
import pytest

from cltm.transfer.stats import delta_method_se, matrix_from_runs


def _runs(
    values: dict[tuple[str, str, str], list[float]], metric: str = "f1", task: str = "gender"
) -> pl.DataFrame:
    rows = []
    for (condition, target, donor), seeds in values.items():
        for seed, v in enumerate(seeds):
            rows.append(
                {
                    "task": task,
                    "model": "m",
                    "layer": 3,
                    "probe": "logreg",
                    "condition": condition,
                    "target": target,
                    "donor": donor,
                    "seed": seed,
                    metric: v,
                }
            )
    return pl.DataFrame(rows)


def _cell(matrices: pl.DataFrame, target: str, donor: str) -> dict:
    rows = matrices.filter((pl.col("target") == target) & (pl.col("donor") == donor)).to_dicts()
    assert len(rows) == 1
    return rows[0]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_cells_match_hand_computation():
    single = [0.60, 0.62, 0.58, 0.61]
    own = [0.80, 0.78, 0.83, 0.79]
    pair_b = [0.70, 0.69, 0.74, 0.66]
    pair_c = [0.55, 0.57, 0.52, 0.58]
    runs = _runs(
        {
            ("single", "a", "a"): single,
            ("self", "a", "a"): own,
            ("pair", "a", "b"): pair_b,
            ("pair", "a", "c"): pair_c,
            ("zero_shot", "a", "b"): [0.5, 0.52, 0.49, 0.51],
        }
    )
    m = matrix_from_runs(runs)

    def mean(x):
        return sum(x) / len(x)

    def var(x):
        mu = mean(x)
        return sum((v - mu) ** 2 for v in x) / (len(x) - 1)

    S = 4
    for donor, pair in (("b", pair_b), ("c", pair_c)):
        num = mean(pair) - mean(single)
        den = mean(own) - mean(single)
        vi, vii, vij = var(single) / S, var(own) / S, var(pair) / S
        var_r = (vij + vi) / den**2 + num**2 * (vii + vi) / den**4 - 2 * num * vi / den**3
        cell = _cell(m, "a", donor)
        assert cell["cltm"] == pytest.approx(num / den, rel=1e-12)
        assert cell["m"] == pytest.approx(num / mean(single), rel=1e-12)
        assert cell["cltm_se"] == pytest.approx(math.sqrt(var_r), rel=1e-9)
        assert cell["p_positive"] == pytest.approx(_phi((num / den) / math.sqrt(var_r)), rel=1e-9)
        assert cell["perf_single"] == pytest.approx(mean(single))
        assert cell["perf_pair"] == pytest.approx(mean(pair))
        assert cell["n_seeds"] == 4
        assert cell["unstable"] is False
    diag = _cell(m, "a", "a")
    assert diag["cltm"] == 1.0 and diag["cltm_se"] == 0.0 and diag["p_positive"] == 1.0
    assert diag["m"] == pytest.approx((mean(own) - mean(single)) / mean(single))
    assert diag["perf_zero_shot"] == pytest.approx(mean(single))
    assert _cell(m, "a", "b")["perf_zero_shot"] == pytest.approx(0.505)
    assert _cell(m, "a", "c")["perf_zero_shot"] is None


def test_delta_method_se_against_monte_carlo():
    rng = np.random.default_rng(0)
    mu_i, mu_ii, mu_ij = 0.60, 0.80, 0.72
    sd_i, sd_ii, sd_ij = 0.02, 0.03, 0.025
    S, reps = 10, 40000
    single = rng.normal(mu_i, sd_i, size=(reps, S)).mean(1)
    own = rng.normal(mu_ii, sd_ii, size=(reps, S)).mean(1)
    pair = rng.normal(mu_ij, sd_ij, size=(reps, S)).mean(1)
    ratio = (pair - single) / (own - single)
    se = delta_method_se(mu_i, mu_ii, mu_ij, sd_i**2, sd_ii**2, sd_ij**2, S, S, S)
    assert float(se) == pytest.approx(ratio.std(), rel=0.05)


def test_unstable_when_own_data_gain_is_within_noise():
    noisy = _runs(
        {
            ("single", "a", "a"): [0.70, 0.75, 0.65, 0.72],
            ("self", "a", "a"): [0.71, 0.68, 0.74, 0.73],
            ("pair", "a", "b"): [0.7, 0.7, 0.72, 0.69],
            ("single", "b", "b"): [0.60, 0.61, 0.60, 0.61],
            ("self", "b", "b"): [0.80, 0.81, 0.80, 0.79],
            ("pair", "b", "a"): [0.7, 0.7, 0.72, 0.69],
        }
    )
    m = matrix_from_runs(noisy)
    assert _cell(m, "a", "b")["unstable"] is True
    assert _cell(m, "a", "a")["unstable"] is True  # the flag belongs to the row's denominator
    assert _cell(m, "b", "a")["unstable"] is False
    # one seed: no variance, only the absolute floor decides
    one = _runs({("single", "a", "a"): [0.7], ("self", "a", "a"): [0.7005], ("pair", "a", "b"): [0.71]})
    m1 = matrix_from_runs(one)
    assert _cell(m1, "a", "b")["unstable"] is True and _cell(m1, "a", "b")["cltm_se"] is None
    one_ok = _runs({("single", "a", "a"): [0.7], ("self", "a", "a"): [0.8], ("pair", "a", "b"): [0.75]})
    assert _cell(matrix_from_runs(one_ok), "a", "b")["unstable"] is False


def test_lower_is_better_metric_enters_as_one_minus_value():
    runs = _runs(
        {
            ("single", "a", "a"): [0.30, 0.32],
            ("self", "a", "a"): [0.20, 0.22],
            ("pair", "a", "b"): [0.25, 0.27],
        },
        metric="eer",
        task="speaker",
    )
    cell = _cell(matrix_from_runs(runs, "eer"), "a", "b")
    # Perf = 1 - EER: (0.74 - 0.69) / (0.79 - 0.69)
    assert cell["cltm"] == pytest.approx(0.5)
    assert cell["metric"] == "eer"


def test_default_metric_is_auc_for_speaker_and_f1_otherwise():
    spk = _runs(
        {
            ("single", "a", "a"): [0.8, 0.82],
            ("self", "a", "a"): [0.9, 0.91],
            ("pair", "a", "b"): [0.85, 0.86],
        },
        metric="auc",
        task="speaker",
    )
    assert matrix_from_runs(spk)["metric"].unique().to_list() == ["auc"]
    gen = _runs(
        {("single", "a", "a"): [0.8, 0.82], ("self", "a", "a"): [0.9, 0.91], ("pair", "a", "b"): [0.85, 0.86]}
    )
    assert matrix_from_runs(gen)["metric"].unique().to_list() == ["f1"]


def test_aggregated_runs_give_the_same_matrix_as_per_seed_runs():
    rng = np.random.default_rng(1)
    values = {}
    for t in "abc":
        values[("single", t, t)] = list(0.6 + 0.02 * rng.normal(size=5))
        values[("self", t, t)] = list(0.8 + 0.02 * rng.normal(size=5))
        for d in "abc":
            if d != t:
                values[("pair", t, d)] = list(0.7 + 0.05 * rng.normal(size=5))
    per_seed = _runs(values)
    agg = (
        per_seed.group_by("task", "model", "layer", "probe", "condition", "target", "donor")
        .agg(
            pl.col("f1").mean(),
            pl.col("f1").var(ddof=1).alias("f1_var"),
            pl.len().cast(pl.Int64).alias("seed_count"),
        )
        .with_columns(pl.lit(None, pl.Int64).alias("seed"))
    )
    a = matrix_from_runs(per_seed).sort("target", "donor")
    b = matrix_from_runs(agg).sort("target", "donor")
    for col in ("cltm", "cltm_se", "m", "p_positive"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-10)
    assert a["unstable"].to_list() == b["unstable"].to_list()


def test_cells_without_a_pair_run_are_left_out_and_targets_need_single_and_self():
    runs = _runs(
        {
            ("single", "a", "a"): [0.6, 0.61],
            ("self", "a", "a"): [0.8, 0.82],
            ("pair", "a", "b"): [0.7, 0.71],
            ("single", "b", "b"): [0.6, 0.6],
        }
    )
    m = matrix_from_runs(runs)
    assert sorted(zip(m["target"], m["donor"], strict=True)) == [("a", "a"), ("a", "b")]
