"""The speaker sweep's PLDA fast path (all distinct models of a (layer, seed) fitted in lockstep) against the
naive loop (one exact PLDA fitted on each cell's training rows)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from cltm.transfer import ProbeSettings, run_matrix
from cltm.transfer.evaluators import PLDA_LOCKSTEP_DEFAULTS, PLDA_LOCKSTEP_EXACT, plda_lockstep_settings
from synthetic_manifest import speaker_grid

DIM = 24
METRICS = ("auc", "eer", "min_dcf_01", "min_dcf_05")
KEYS = ["layer", "condition", "target", "donor", "seed"]
N = 14


def _corpus() -> tuple[pl.DataFrame, np.ndarray]:
    """Three languages of 16 speakers; with N = 14 each N-subset holds 4 speakers with uneven counts (4, 4, 4,
    2: few speakers, and EM has work to do after the moment start); per-language offsets and anisotropic
    noise (so pairs differ from their parts and the PCA to 10 of 24 dims picks directions)."""
    man = speaker_grid(["a", "b", "c"], 16, 8)
    rng = np.random.default_rng(3)
    langs = man["language"].to_list()
    speakers = man["speaker"].to_list()
    spk = {s: rng.normal(scale=0.7, size=DIM) * np.linspace(1.6, 0.3, DIM) for s in sorted(set(speakers))}
    off = {lang: rng.normal(scale=0.8, size=DIM) for lang in "abc"}
    noise = {lang: rng.uniform(0.4, 1.6, size=DIM) for lang in "abc"}
    X = np.stack(
        [
            spk[s] + off[lang] + rng.normal(size=DIM) * noise[lang]
            for s, lang in zip(speakers, langs, strict=True)
        ]
    )
    return man, X[None].astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


def _sweep(man, X, probe: ProbeSettings, naive: bool = False):
    return run_matrix(X, man, "speaker", n=N, seeds=2, probe=probe, progress=False, naive=naive)


def _aligned(fast, naive) -> pl.DataFrame:
    ref = naive.runs.select(*KEYS, *[pl.col(m).alias(f"ref_{m}") for m in METRICS])
    joined = fast.runs.select(*KEYS, *METRICS).join(ref, on=KEYS, how="inner", nulls_equal=True)
    assert joined.height == fast.runs.height == naive.runs.height > 0
    return joined


@pytest.fixture(scope="module")
def naive_runs(corpus):
    man, X = corpus
    return _sweep(man, X, ProbeSettings("plda", backend_params={"n_components": 10}), naive=True)


def test_training_sets_are_few_speaker_ones(corpus, naive_runs):
    man, X = corpus
    runs = naive_runs.runs
    assert set(runs["condition"].unique()) == {"single", "self", "pair", "zero_shot"}
    assert sorted(runs["target"].unique()) == ["a", "b", "c"]
    from cltm.transfer.conditions import plan_conditions

    # every N-subset really holds few speakers, with uneven counts
    for plan in plan_conditions(man, "speaker", n=N, seeds=[0, 1]):
        if plan.condition == "single":
            counts = man[np.asarray(plan.train_rows)]["speaker"].value_counts()["count"]
            assert 3 <= len(counts) <= 4 and counts.min() < counts.max(), counts.to_list()
    # the task is not solved perfectly: agreement in AUC means something
    assert 0.6 < runs["auc"].mean() < 0.99


def test_default_fast_path_is_within_tolerance_of_one_exact_fit_per_cell(corpus, naive_runs):
    man, X = corpus
    fast = _sweep(man, X, ProbeSettings("plda", backend_params={"n_components": 10}))
    joined = _aligned(fast, naive_runs)
    d_auc = (joined["auc"] - joined["ref_auc"]).abs().to_numpy()
    assert d_auc.mean() <= 0.002 and d_auc.max() <= 0.01, (d_auc.mean(), d_auc.max())
    d_eer = (joined["eer"] - joined["ref_eer"]).abs().to_numpy()
    assert d_eer.max() <= 0.05


def test_exact_lockstep_settings_equal_the_naive_loop(corpus, naive_runs):
    # the wiring itself (parts of each training set, which model scores which trial list) is exact: with the
    # exact settings every metric equals the one-fit-per-cell loop
    man, X = corpus
    probe = ProbeSettings("plda", backend_params={"n_components": 10}, lockstep=PLDA_LOCKSTEP_EXACT)
    joined = _aligned(_sweep(man, X, probe), naive_runs)
    for m in METRICS:
        np.testing.assert_allclose(joined[m].to_numpy(), joined[f"ref_{m}"].to_numpy(), atol=1e-9)


def test_the_em_cap_is_what_the_tolerance_is_about(corpus, naive_runs):
    # no EM step after the moment start moves AUCs by more than the default cap does: the test data is one
    # where the cap matters, so the tolerance test above could fail
    man, X = corpus
    runs = {}
    for steps in (0, PLDA_LOCKSTEP_DEFAULTS["em_steps"]):
        probe = ProbeSettings("plda", backend_params={"n_components": 10}, lockstep={"em_steps": steps})
        joined = _aligned(_sweep(man, X, probe), naive_runs)
        runs[steps] = (joined["auc"] - joined["ref_auc"]).abs().to_numpy()
    assert runs[0].max() > 0
    assert runs[0].mean() > runs[PLDA_LOCKSTEP_DEFAULTS["em_steps"]].mean()


def test_plda_full_fast_path_within_tolerance(corpus):
    man, X = corpus
    fast = _sweep(man, X, ProbeSettings("plda_full"))
    naive = _sweep(man, X, ProbeSettings("plda_full"), naive=True)
    d = (lambda j: (j["auc"] - j["ref_auc"]).abs().to_numpy())(_aligned(fast, naive))
    assert d.mean() <= 0.002 and d.max() <= 0.01


def test_lockstep_options_are_checked_and_hashed(corpus):
    settings = plda_lockstep_settings({"n_components": 10}, {"device": "cpu", "em_steps": 2})
    assert settings.n_components == 10 and settings.em_steps == 2
    assert settings.pca_dtype == PLDA_LOCKSTEP_DEFAULTS["pca_dtype"]
    with pytest.raises(ValueError, match="unknown lockstep option"):
        plda_lockstep_settings({}, {"em_step": 2})
    with pytest.raises(ValueError, match="backend_params"):
        plda_lockstep_settings({}, {"n_components": 5})
    man, X = corpus
    few = man.filter(pl.col("language").is_in(["a", "b"]))
    Xf = X[:, : few.height]
    default = run_matrix(Xf, few, "speaker", n=N, seeds=1, probe="plda", progress=False)
    capped_probe = ProbeSettings("plda", lockstep={"em_steps": 1})
    capped = run_matrix(Xf, few, "speaker", n=N, seeds=1, probe=capped_probe, progress=False)
    naive = run_matrix(Xf, few, "speaker", n=N, seeds=1, probe="plda", progress=False, naive=True)
    explicit = ProbeSettings("plda", lockstep=dict(PLDA_LOCKSTEP_DEFAULTS))
    same = run_matrix(Xf, few, "speaker", n=N, seeds=1, probe=explicit, progress=False)
    # the hash names the effective lockstep settings: a cap changes it, the naive (exact) loop differs,
    # the defaults spelled out do not change the results
    hashes = [r.runs["config_hash"][0] for r in (default, capped, naive)]
    assert len(set(hashes)) == 3
    assert same.runs.drop("config_hash").equals(default.runs.drop("config_hash"))
    with pytest.raises(ValueError, match="unknown lockstep option"):
        run_matrix(Xf, few, "speaker", n=N, seeds=1, probe=ProbeSettings("plda", lockstep={"x": 1}))
    # a probe that does not fit in lockstep would ignore the settings: refused, not silently dropped
    for probe in ("cosine", "plda+asnorm"):
        ignored = ProbeSettings(probe, lockstep={"device": "cpu"})
        with pytest.raises(ValueError, match="would ignore them"):
            run_matrix(Xf, few, "speaker", n=N, seeds=1, probe=ignored)
