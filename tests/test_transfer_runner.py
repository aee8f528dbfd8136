"""run_matrix: fast paths equal the one-by-one loop, planted signs recovered, determinism, Dask, CLI."""

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cltm.cli import app
from cltm.transfer import run_matrix, write_results
from cltm.transfer.conditions import plan_conditions
from synthetic_manifest import speaker_grid


def _manifest(langs: list[str], speakers: int = 24, utts: int = 4) -> pl.DataFrame:
    return speaker_grid(langs, speakers, utts)


def _gender_embeddings(
    man: pl.DataFrame,
    direction: dict[str, float],
    *,
    layers: int = 2,
    dim: int = 24,
    strength: float = 0.8,
    seed: int = 0,
) -> np.ndarray:
    """Gender coded along axis 0 with a per-language sign, plus a language offset and noise."""
    rng = np.random.default_rng(seed)
    g = np.where(man["gender"].to_numpy() == "male", 1.0, -1.0)
    sign = np.array([direction[lang] for lang in man["language"].to_list()])
    offsets = {lang: rng.normal(scale=0.5, size=dim) for lang in direction}
    off = np.stack([offsets[lang] for lang in man["language"].to_list()])
    X = rng.normal(size=(layers, man.height, dim)) + off
    X[:, :, 0] += strength * g * sign
    return X.astype(np.float32)


def _speaker_embeddings(man: pl.DataFrame, *, layers: int = 1, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spk = {s: rng.normal(size=dim) for s in man["speaker"].unique().sort().to_list()}
    base = np.stack([spk[s] for s in man["speaker"].to_list()])
    return np.stack([1.5 * base + rng.normal(size=base.shape) for _ in range(layers)]).astype(np.float32)


def test_gender_fast_path_equals_one_fit_per_cell():
    man = _manifest(["a", "b", "c"])
    X = _gender_embeddings(man, {"a": 1, "b": 1, "c": -1}, layers=1)
    naive = run_matrix(X, man, "gender", n=6, seeds=2, progress=False, naive=True)
    for solver in ("sklearn", "shared"):
        fast = run_matrix(X, man, "gender", n=6, seeds=2, progress=False, solver=solver)
        assert fast.runs.height == naive.runs.height == 2 * 3 * (2 + 2 * 2)
        cols = ["layer", "condition", "target", "donor", "seed", "n_train"]
        assert fast.runs.select(cols).equals(naive.runs.select(cols))
        # sklearn per distinct set is the naive loop's own estimator; the shared solver stops on the same
        # criterion and, on well-separated test rows, predicts the same labels
        np.testing.assert_allclose(fast.runs["f1"].to_numpy(), naive.runs["f1"].to_numpy(), atol=1e-9)
    # and the naive loop really trains on what plan_conditions says
    plans = plan_conditions(man, "gender", n=6, seeds=2)
    assert sorted((p.condition, p.target, p.donor, p.seed, p.n_train) for p in plans) == sorted(
        naive.runs.select("condition", "target", "donor", "seed", "n_train").iter_rows()
    )


def test_gender_shared_solver_agrees_with_naive_loop_in_the_sweep_regime():
    """Fewer training rows than dimensions and a weak signal (boundary rows exist): the benchmark's regime,
    where the target is mean |dPerf| <= 0.01 against one scikit-learn fit per cell."""
    langs = ["a", "b", "c", "d"]
    man = _manifest(langs, speakers=30, utts=4)
    X = _gender_embeddings(man, {"a": 1, "b": 1, "c": -1, "d": 1}, layers=2, dim=96, strength=1.5)
    shared = run_matrix(X, man, "gender", n=20, seeds=3, progress=False)
    naive = run_matrix(X, man, "gender", n=20, seeds=3, progress=False, naive=True)
    delta = np.abs(shared.runs["f1"].to_numpy() - naive.runs["f1"].to_numpy())
    assert naive.runs["f1"].std() > 0.02  # the task is not trivially solved: agreement means something
    assert delta.mean() <= 0.01, delta.mean()


def test_gender_batched_solver_option_agrees_with_sklearn():
    man = _manifest(["a", "b"])
    X = _gender_embeddings(man, {"a": 1, "b": 1}, layers=1)
    ref = run_matrix(X, man, "gender", n=6, seeds=1, progress=False)
    from cltm.transfer.evaluators import PROBES, ClassificationGroup

    assert "logreg" in PROBES and ClassificationGroup is not None
    batched = run_matrix(X, man, "gender", n=6, seeds=1, progress=False, solver="batched")
    assert np.abs(batched.runs["f1"].to_numpy() - ref.runs["f1"].to_numpy()).mean() <= 0.01


@pytest.mark.parametrize("probe", ["plda", "cosine"])
def test_speaker_composed_statistics_equal_training_on_the_data(probe):
    from cltm.transfer import ProbeSettings
    from cltm.transfer.evaluators import PLDA_LOCKSTEP_EXACT

    man = _manifest(["a", "b", "c"], speakers=16, utts=5)
    X = _speaker_embeddings(man)
    # plda's default lockstep fit caps EM and runs the PCA and scoring in float32 (within mean |dAUC| 0.002,
    # max 0.01 of the naive loop: tests/test_transfer_plda_lockstep.py); its exact settings are the naive fits
    exact = ProbeSettings(probe, lockstep=PLDA_LOCKSTEP_EXACT) if probe == "plda" else probe
    fast = run_matrix(X, man, "speaker", n=20, seeds=2, probe=exact, progress=False)
    naive = run_matrix(X, man, "speaker", n=20, seeds=2, probe=probe, progress=False, naive=True)
    assert fast.skipped.height == 0 and fast.runs.height == 2 * 3 * 6
    for col in ("auc", "eer", "min_dcf_01", "min_dcf_05"):
        np.testing.assert_allclose(fast.runs[col].to_numpy(), naive.runs[col].to_numpy(), atol=1e-9)
    default = run_matrix(X, man, "speaker", n=20, seeds=2, probe=probe, progress=False)
    d_auc = np.abs(default.runs["auc"].to_numpy() - naive.runs["auc"].to_numpy())
    assert d_auc.mean() <= 0.002 and d_auc.max() <= 0.01
    assert fast.runs["f1"].null_count() == fast.runs.height
    assert fast.runs["auc"].mean() > 0.7


def test_planted_structure_sign_pattern_is_recovered():
    # a1, a2 code gender along +axis0, c1 and c2 along -axis0: same-direction donors help, opposite ones hurt
    langs = ["a1", "a2", "c1", "c2"]
    man = _manifest(langs, speakers=60, utts=3)
    X = _gender_embeddings(man, {"a1": 1, "a2": 1, "c1": -1, "c2": -1}, layers=1, dim=10, strength=0.8)
    res = run_matrix(X, man, "gender", n=5, seeds=10, progress=False)
    cells = {(r["target"], r["donor"]): r for r in res.matrices.to_dicts()}
    same = {("a1", "a2"), ("a2", "a1"), ("c1", "c2"), ("c2", "c1")}
    for t in langs:
        for d in langs:
            if t == d:
                continue
            cell = cells[(t, d)]
            if (t, d) in same:
                assert cell["cltm"] > 0.3, (t, d, cell)
                assert cell["p_positive"] > 0.5
            else:
                assert cell["cltm"] < 0, (t, d, cell)
                assert cell["p_positive"] < 0.5
                # zero-shot from an opposite-coding donor is below chance
                assert cell["perf_zero_shot"] < 0.5
    props = res.properties.to_dicts()[0]
    assert props["share_positive"] == pytest.approx(4 / 12) and props["reciprocity"] == pytest.approx(2 / 6)


def test_same_seed_gives_identical_files(tmp_path):
    man = _manifest(["a", "b"])
    X = _gender_embeddings(man, {"a": 1, "b": -1})
    for name in ("one", "two"):
        res = run_matrix(X, man, "gender", n=5, seeds=2, progress=False)
        write_results(
            tmp_path / name,
            res.runs,
            res.matrices,
            res.properties,
            skipped=res.skipped,
            language_scores=res.language_scores,
        )
    for f in ("runs.parquet", "matrices.parquet", "properties.parquet", "language_scores.parquet"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    other = run_matrix(X, man, "gender", n=5, seeds=[5, 6], progress=False)
    assert not other.runs["f1"].equals(res.runs["f1"]) or not other.runs["config_hash"].equals(
        res.runs["config_hash"]
    )


@pytest.mark.parametrize("parallel", ["dask", "ray"])  # a 2-worker local cluster / local Ray with 2 CPUs
def test_cluster_back_ends_equal_serial(parallel):
    man = _manifest(["a", "b"])
    X = _gender_embeddings(man, {"a": 1, "b": -1}, layers=3)
    serial = run_matrix(X, man, "gender", n=5, seeds=2, progress=False)
    clustered = run_matrix(X, man, "gender", n=5, seeds=2, progress=False, parallel=parallel, n_jobs=2)
    assert clustered.runs.equals(serial.runs)
    assert clustered.matrices.equals(serial.matrices)


def test_too_little_data_language_is_reported_not_fatal():
    man = pl.concat([_manifest(["a", "b"]), _manifest(["tiny"], speakers=3, utts=1)])
    X = _gender_embeddings(man, {"a": 1, "b": 1, "tiny": 1}, layers=1)
    res = run_matrix(X, man, "gender", n=5, seeds=1, progress=False)
    assert res.skipped["language"].to_list() == ["tiny"]
    assert "tiny" not in set(res.runs["target"]) | set(res.runs["donor"])


def test_cache_rows_not_done_are_left_out(tmp_path):
    from cltm.store import Cache

    man = _manifest(["a", "b"])
    X = _gender_embeddings(man, {"a": 1, "b": 1}, layers=2, dim=8)
    cache = Cache.create(
        tmp_path / "c.zarr",
        manifest=man,
        n_layers=2,
        dim=8,
        pooling=("mean",),
        dtype="float32",
        attrs={"model_id": "tiny"},
    )
    done_rows = np.arange(man.height)[man["speaker"].to_numpy() != "a_s3"]
    cache.write_rows(done_rows, {"mean": X[:, done_rows]}, np.ones(len(done_rows), dtype=np.int32))
    res = run_matrix(Cache.open(tmp_path / "c.zarr"), None, "gender", n=5, seeds=1, progress=False)
    assert set(res.runs["model"]) == {"tiny"}
    plans = plan_conditions(man.filter(pl.col("speaker") != "a_s3"), "gender", n=5, seeds=1)
    assert res.runs.height == len(plans) * 2
    parallel = run_matrix(tmp_path / "c.zarr", None, "gender", n=5, seeds=1, progress=False, n_jobs=2)
    assert parallel.runs.equals(res.runs)
    # the h5 that `cltm store export` writes works as --embeddings (manifest inside the file)
    from cltm.store.tools import export_cache

    export_cache(Cache.open(tmp_path / "c.zarr"), tmp_path / "c.h5", "h5")
    r = CliRunner().invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(tmp_path / "c.h5"),
            "--task",
            "gender",
            "--n",
            "5",
            "--seeds",
            "1",
            "--layers",
            "0",
            "--out",
            str(tmp_path / "h5res"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    from_h5 = pl.read_parquet(tmp_path / "h5res" / "runs.parquet")
    # rows not done are dropped on load; subsets are drawn by utt_id, so the same cells come out
    layer0 = res.runs.filter(pl.col("layer") == 0)
    cols = ["condition", "target", "donor", "seed", "n_train", "f1", "accuracy"]
    assert from_h5.select(cols).equals(layer0.select(cols))


def test_cli_embeddings_and_from_runs(tmp_path):
    man = _manifest(["ca", "es"])
    X = _gender_embeddings(man, {"ca": 1, "es": 1})
    man.write_parquet(tmp_path / "manifest.parquet")
    np.save(tmp_path / "emb.npy", X)
    runner = CliRunner()
    out = tmp_path / "res"
    r = runner.invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(tmp_path / "emb.npy"),
            "--manifest",
            str(tmp_path / "manifest.parquet"),
            "--task",
            "gender",
            "--n",
            "5",
            "--seeds",
            "2",
            "--layers",
            "1",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "CLTM per layer" in r.output
    matrices = pl.read_parquet(out / "matrices.parquet")
    assert set(matrices["layer"]) == {1} and matrices.height == 4
    r2 = runner.invoke(
        app, ["matrix", "--from-runs", str(out / "runs.parquet"), "--out", str(tmp_path / "r2")]
    )
    assert r2.exit_code == 0, r2.output
    assert pl.read_parquet(tmp_path / "r2" / "matrices.parquet").equals(matrices)
    # bad input: a clean message, no traceback
    r3 = runner.invoke(
        app, ["matrix", "--embeddings", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "x")]
    )
    assert r3.exit_code != 0 and "--task" in r3.output and "Traceback" not in r3.output
    r4 = runner.invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(tmp_path / "emb.npy"),
            "--task",
            "gender",
            "--layers",
            "7",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r4.exit_code != 0 and "out of range" in r4.output


def test_seed_chunks_balance_layers_over_workers():
    from cltm.transfer.runner import seed_chunks

    seeds = list(range(10))
    assert seed_chunks(seeds, 12, 2) == [seeds]  # 12 layers already fill 2 workers evenly
    halves = seed_chunks(seeds, 13, 2)
    assert halves == [seeds[:5], seeds[5:]]  # 26 jobs: 13 rounds each instead of 7 and 6
    for n_layers, workers in [(13, 4), (3, 8), (1, 2), (5, 3)]:
        chunks = seed_chunks(seeds, n_layers, workers)
        assert [s for c in chunks for s in c] == seeds  # contiguous, complete, in order
        jobs = n_layers * len(chunks)
        assert -(-jobs // workers) * workers / jobs - 1 <= 0.25
    assert seed_chunks(seeds, 13, 1) == [seeds]
    assert seed_chunks([0, 1, 2], 13, 2) == [[0, 1, 2]]  # chunks keep at least two seeds
    assert all(len(c) >= 2 for c in seed_chunks(seeds, 3, 8))


def test_seed_chunked_parallel_run_equals_serial_and_counts_layers():
    man = _manifest(["a", "b"])
    X = _gender_embeddings(man, {"a": 1, "b": -1}, layers=3)
    serial = run_matrix(X, man, "gender", n=5, seeds=4, progress=False)
    done = []  # 3 layers x 2 seed chunks on 2 workers
    parallel = run_matrix(X, man, "gender", n=5, seeds=4, progress=done.append, n_jobs=2)
    assert parallel.runs.equals(serial.runs)
    assert parallel.confusion.equals(serial.confusion)
    assert sum(done) == 3
