"""The one engine: every registered probe in `probe` and `matrix`, multi-class results, K-fold, planted
cross-lingual emotion structure, estimator objects, dev early stopping."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from cltm.cli import app
from cltm.probes.classifiers import MLPProbe
from cltm.transfer import PlanSettings, ProbeSettings, canonical_probe_name, probe_names, run_matrix
from synthetic_manifest import speaker_grid

EMOTIONS = ("angry", "happy", "neutral", "sad")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny MLPs train ~10x faster on one thread on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _emotion_set(langs=("aa", "bb", "cc"), speakers=8, utts=8, flip=("cc",), layers=3, dim=10, seed=0):
    """4 emotions planted on layer 1 (layer 0 is noise): languages share the emotion directions, except
    those in ``flip`` whose directions are opposite (negative transfer by construction)."""
    rng = np.random.default_rng(seed)
    man = speaker_grid(langs, speakers, utts, lambda lang, s, u: {"emotion": EMOTIONS[(u + s) % 4]})
    code = np.array([EMOTIONS.index(e) for e in man["emotion"].to_list()])
    directions = rng.normal(size=(4, dim)) * 2.0
    sign = np.array([-1.0 if lang in flip else 1.0 for lang in man["language"].to_list()])
    X = rng.normal(size=(layers, man.height, dim))
    X[1] += sign[:, None] * directions[code]
    return man, X.astype(np.float32)


def _speaker_set(langs=("aa", "bb"), speakers=16, utts=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    man, _ = _emotion_set(langs, speakers=speakers, utts=utts, layers=2, dim=dim, seed=seed)
    spk = {s: rng.normal(size=dim) * 2 for s in man["speaker"].unique().sort().to_list()}
    X = np.stack([spk[s] for s in man["speaker"].to_list()]) + rng.normal(size=(man.height, dim))
    return man, X[None].astype(np.float32)


@pytest.mark.parametrize("name", probe_names("classification"))
def test_every_classifier_runs_in_matrix_and_probe(name, tmp_path):
    man, X = _emotion_set(speakers=6, utts=8)
    kw = {"probe": ProbeSettings(name=name, max_epochs=30)}
    res = run_matrix(X[:2], man, "emotion", plan=PlanSettings(n=2, seeds=1), **kw)
    assert res.runs["probe"].unique().to_list() == [name]
    assert res.matrices.height > 0 and res.runs["uar"].null_count() == 0
    np.save(tmp_path / "x.npy", X[:2])
    man.write_parquet(tmp_path / "manifest.parquet")
    out = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(tmp_path / "x.npy"),
            "--task",
            "emotion",
            "--out",
            str(tmp_path / "p"),
            "--probe",
            name,
            "--max-epochs",
            "30",
        ],
    )
    assert out.exit_code == 0, out.output
    assert pl.read_parquet(tmp_path / "p" / "probe.parquet")["probe"].unique().to_list() == [name]


@pytest.mark.parametrize("name", probe_names("verification"))
def test_every_backend_runs_in_matrix_and_probe(name, tmp_path):
    man, X = _speaker_set()
    params = {"n_components": 4} if name.split("+")[0] in ("plda", "lda_cosine") else {}
    res = run_matrix(
        X,
        man,
        "speaker",
        plan=PlanSettings(n=16, seeds=1),
        probe=ProbeSettings(name=name, backend_params=params),
    )
    assert res.runs["probe"].unique().to_list() == [name]
    assert res.runs["auc"].null_count() == 0 and res.matrices.height > 0
    np.save(tmp_path / "x.npy", X)
    man.write_parquet(tmp_path / "manifest.parquet")
    out = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(tmp_path / "x.npy"),
            "--task",
            "speaker",
            "--out",
            str(tmp_path / "p"),
            "--probe",
            name,
        ],
    )
    assert out.exit_code == 0, out.output


def test_old_spellings_are_aliases_with_the_canonical_name_in_tables():
    assert canonical_probe_name("lda-cosine") == "lda_cosine"
    assert canonical_probe_name("plda-snorm") == "plda+snorm"
    assert canonical_probe_name("cosine_asnorm") == "cosine+asnorm"
    man, X = _speaker_set()
    res = run_matrix(X, man, "speaker", n=16, seeds=1, probe="lda-cosine", backend_params={"n_components": 4})
    assert res.runs["probe"].unique().to_list() == ["lda_cosine"]


@pytest.mark.parametrize("probe", ["logreg", "lda", "mlp"])
def test_planted_cross_lingual_emotion_structure_is_recovered_per_layer(probe):
    man, X = _emotion_set()
    res = run_matrix(
        X[:2],
        man,
        "emotion",
        n=10,
        seeds=1 if probe == "mlp" else 2,
        probe=ProbeSettings(name=probe, hidden=(16,), max_epochs=150),
        conditions=("single", "zero_shot"),
        metric="uar",
    )
    runs = res.runs
    zs = (
        runs.filter(pl.col("condition") == "zero_shot")
        .group_by("layer", "target", "donor")
        .agg(pl.col("uar").mean())
    )

    def cell(layer, t, d):
        return zs.filter((pl.col("layer") == layer) & (pl.col("target") == t) & (pl.col("donor") == d))[
            "uar"
        ][0]

    # layer 1: aa and bb share directions (transfer well above chance), cc is opposite (below chance)
    assert cell(1, "aa", "bb") > 0.8 and cell(1, "bb", "aa") > 0.8
    assert cell(1, "aa", "cc") < 0.25 and cell(1, "cc", "bb") < 0.25
    # layer 0 is noise: around chance (0.25) everywhere
    assert abs(cell(0, "aa", "bb") - 0.25) < 0.2
    single1 = runs.filter((pl.col("condition") == "single") & (pl.col("layer") == 1))["uar"].mean()
    assert single1 > 0.9


def test_uar_matches_sklearn_and_confusion_sums_to_test_size():
    man, X = _emotion_set()
    res = run_matrix(X[1:2], man, "emotion", n=4, seeds=2, predictions=True, probe="lda")
    keys = ["layer", "condition", "target", "donor", "seed"]
    sizes = res.confusion.group_by(keys).agg(pl.col("count").sum())
    test_size = (
        man.height // 3 - len(res.predictions.filter(pl.col("target") == "aa")) // 0 if False else None
    )
    assert test_size is None
    joined = res.runs.join(sizes, on=keys, how="left")
    assert joined["count"].null_count() == 0
    for r in joined.iter_rows(named=True):
        preds = res.predictions.filter(
            (pl.col("condition") == r["condition"])
            & (pl.col("target") == r["target"])
            & (pl.col("donor") == r["donor"])
            & (pl.col("seed") == r["seed"])
        )
        assert preds.height == r["count"]  # confusion counts sum to the run's test size
        assert r["uar"] == pytest.approx(balanced_accuracy_score(preds["true"], preds["pred"]), abs=1e-12)
        scores = np.array(preds["scores"].to_list())
        assert scores.shape == (preds.height, 4) and np.allclose(scores.sum(1), 1.0)
    assert set(res.predictions["train_languages"].unique().to_list()) >= {"aa", "aa+bb"}


def test_kfold_tests_every_speaker_exactly_once():
    man, X = _emotion_set(speakers=6)
    res = run_matrix(
        X[1:2], man, "emotion", n=None, seeds=1, folds=3, conditions=("single",), predictions=True
    )
    assert sorted(res.runs["fold"].unique().to_list()) == [0, 1, 2]
    single = res.predictions.filter(pl.col("condition") == "single")
    per_utt = single.group_by("utt_id").len()
    assert per_utt.height == man.height and (per_utt["len"] == 1).all()
    spk = dict(zip(man["utt_id"], man["speaker"], strict=True))
    folds_of = (
        single.with_columns(pl.col("utt_id").replace_strict(spk).alias("spk"))
        .group_by("spk")
        .agg(pl.col("fold").n_unique())
    )
    assert (folds_of["fold"] == 1).all() and folds_of.height == man["speaker"].n_unique()
    # Perf is the mean over folds x seeds: 3 runs per (layer, target)
    assert (res.runs.group_by("target").len()["len"] == 3).all()


def test_estimator_object_and_dev_early_stopping():
    man, X = _emotion_set(speakers=6)
    man = man.with_columns(
        pl.when(pl.col("speaker").str.ends_with("s5"))
        .then(pl.lit("dev"))
        .when(pl.col("speaker").str.ends_with("s4"))
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    res = run_matrix(
        X[1:2],
        man,
        "emotion",
        n=None,
        seeds=1,
        conditions=("single",),
        probe=MLPProbe(hidden=(16,), max_epochs=150),
    )
    assert res.runs["probe"].unique().to_list() == ["mlp"] and res.runs["uar"].min() > 0.5
    dev = set(man.filter(pl.col("split") == "dev")["utt_id"].to_list())
    preds = run_matrix(
        X[1:2], man, "emotion", n=None, seeds=1, conditions=("single",), predictions=True
    ).predictions
    assert not dev & set(preds["utt_id"].to_list())  # dev rows are never tested on

    seen = {}

    class Spy(MLPProbe):
        def fit(self, X, y, X_val=None, y_val=None):
            seen["dev"] = None if X_val is None else len(X_val)
            return super().fit(X, y, X_val=X_val, y_val=y_val)

    run_matrix(
        X[1:2],
        man,
        "emotion",
        n=None,
        seeds=1,
        conditions=("single",),
        languages=["aa"],
        probe=Spy(hidden=(4,), max_epochs=3),
    )
    assert seen["dev"] == man.filter((pl.col("split") == "dev") & (pl.col("language") == "aa")).height


def test_wsum_gives_layer_weights_per_run():
    man, X = _emotion_set(speakers=6)
    res = run_matrix(
        X,
        man,
        "emotion",
        n=None,
        seeds=1,
        conditions=("single",),
        probe=ProbeSettings(name="wsum", max_epochs=40),
    )
    assert res.runs["layer"].null_count() == res.runs.height
    w = res.layer_weights
    sums = w.group_by("target", "seed").agg(pl.col("weight").sum())["weight"].to_numpy()
    assert np.allclose(sums, 1.0)
    best = w.group_by("layer").agg(pl.col("weight").mean()).sort("weight")["layer"][-1]
    assert best == 1


def test_per_class_recall_matches_sklearn():
    from sklearn.metrics import recall_score

    from cltm.transfer import per_class_recall

    man, X = _emotion_set()
    res = run_matrix(
        X[:2], man, "emotion", n=4, seeds=1, predictions=True, probe="lda", conditions=("single",)
    )
    recall = per_class_recall(res.confusion)
    for (layer, target), part in recall.group_by("layer", "target"):
        preds = res.predictions.filter((pl.col("layer") == layer) & (pl.col("target") == target))
        expected = recall_score(preds["true"], preds["pred"], labels=list(EMOTIONS), average=None)
        got = dict(zip(part["true"], part["recall"], strict=True))
        assert [got[c] for c in EMOTIONS] == pytest.approx(expected.tolist(), abs=1e-12)


def test_matrix_summary_averages_stable_cells_only(capsys):
    from cltm.cli.matrix import print_summary
    from cltm.transfer import MATRICES_COLUMNS, matrix_properties
    from cltm.transfer.tables import conform

    keys = {"task": "gender", "model": "m", "layer": 0, "probe": "logreg", "metric": "f1"}
    cells = [  # target a's own-data gain is noise: its whole row is unstable
        ("a", "b", 0.5, True),
        ("a", "c", -9.0, True),
        ("b", "a", 0.1, False),
        ("c", "a", 0.3, False),
        ("b", "c", 0.5, False),
        ("a", "a", 1.0, True),
    ]
    matrices = pl.DataFrame(
        [{**keys, "target": t, "donor": d, "cltm": v, "unstable": u} for t, d, v, u in cells]
    )
    properties, _ = matrix_properties(conform(matrices, MATRICES_COLUMNS))
    row = properties.row(0, named=True)
    assert row["mean_offdiag"] == pytest.approx(-7.6 / 5)  # the unstable row drags the plain mean
    assert row["n_stable"] == 3
    assert row["mean_offdiag_stable"] == pytest.approx(0.3)
    assert row["median_offdiag_stable"] == pytest.approx(0.3)
    print_summary(properties)  # the printed headline is the stable one
    printed = capsys.readouterr().out
    assert "0.300" in printed and "3/" in printed and "-1.520" not in printed


def test_code_metrics_fast_path_equals_classification_metrics():
    from cltm.probes.metrics import classification_metrics
    from cltm.transfer.evaluators import _metrics_from_codes

    rng = np.random.default_rng(0)
    for _ in range(500):
        k, n = int(rng.integers(2, 6)), int(rng.integers(1, 30))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        fast, reference = _metrics_from_codes(y, p), classification_metrics(y, p)
        assert fast == pytest.approx(reference, abs=1e-12)

    from cltm.probes.metrics import binary_metrics_by_column

    for _ in range(200):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        y, pred = rng.integers(0, 2, n), rng.integers(0, 2, (n, k))
        for c, fast in enumerate(binary_metrics_by_column(y, pred)):
            assert fast == pytest.approx(classification_metrics(y, pred[:, c]), abs=1e-12)


@pytest.mark.parametrize(
    ("task", "probe"), [("emotion", "lda"), ("emotion", "mlp"), ("speaker", "cosine+asnorm")]
)
def test_one_fit_per_training_set_equals_one_fit_per_problem(task, probe):
    if task == "speaker":
        man, X = _speaker_set()
        kw = {"n": 16}
    else:
        man, X = _emotion_set(speakers=6)
        kw = {"n": 3}
    settings = ProbeSettings(name=probe, hidden=(8,), max_epochs=10)
    fast = run_matrix(X[:1], man, task, seeds=2, probe=settings, **kw)
    naive = run_matrix(X[:1], man, task, seeds=2, probe=settings, naive=True, **kw)
    assert fast.runs.height == naive.runs.height > 0
    assert fast.runs.drop("config_hash").equals(naive.runs.drop("config_hash"))


def test_classes_restricts_a_task_and_kfold_names_the_speakers_it_needs():
    man, X = _emotion_set(speakers=6)
    # bb has no "sad": without --classes it is left out, with the shared classes it is kept
    man = man.with_columns(
        pl.when((pl.col("language") == "bb") & (pl.col("emotion") == "sad"))
        .then(pl.lit(None))
        .otherwise(pl.col("emotion"))
        .alias("emotion")
    )
    plain = run_matrix(X[1:2], man, "emotion", n=None, seeds=1, conditions=("single",))
    assert "bb" in plain.skipped["language"].to_list()
    assert "--classes" in plain.skipped.filter(pl.col("language") == "bb")["reason"][0]
    kept = run_matrix(
        X[1:2], man, "emotion", n=None, seeds=1, conditions=("single",), classes=("angry", "happy", "neutral")
    )
    assert kept.skipped.height == 0 and sorted(kept.confusion["true"].unique().to_list()) == [
        "angry",
        "happy",
        "neutral",
    ]
    with pytest.raises(ValueError, match="never occur"):
        run_matrix(
            X[1:2], man, "emotion", n=None, seeds=1, conditions=("single",), classes=("angry", "bored")
        )
    # one class per speaker, 3 speakers per class: 4 folds cannot all test both classes
    per_speaker = man.with_columns(
        pl.when(pl.col("speaker").str.slice(-1).cast(pl.Int64) % 2 == 0)
        .then(pl.lit("angry"))
        .otherwise(pl.lit("happy"))
        .alias("emotion")
    )
    few = run_matrix(X[1:2], per_speaker, "emotion", n=None, seeds=1, conditions=("single",), folds=4)
    reasons = " ".join(few.skipped["reason"].to_list())
    assert "--folds 4 needs at least 4 speakers per class" in reasons


def test_zero_shot_condition_on_its_own_in_the_cli(tmp_path):
    man, X = _emotion_set(speakers=6)
    np.save(tmp_path / "x.npy", X[:2])
    man.write_parquet(tmp_path / "manifest.parquet")
    out = CliRunner().invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(tmp_path / "x.npy"),
            "--task",
            "emotion",
            "--n",
            "4",
            "--seeds",
            "1",
            "--conditions",
            "zero_shot",
            "--metric",
            "uar",
            "--out",
            str(tmp_path / "zs"),
        ],
    )
    assert out.exit_code == 0, out.output
    runs = pl.read_parquet(tmp_path / "zs" / "runs.parquet")
    assert runs["condition"].unique().to_list() == ["zero_shot"] and runs.height == 2 * 3 * 2
    bad = CliRunner().invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(tmp_path / "x.npy"),
            "--task",
            "emotion",
            "--conditions",
            "zero",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert bad.exit_code == 2 and "unknown condition" in bad.output


def test_device_option_moves_the_plda_fits_and_is_refused_where_it_would_be_ignored(tmp_path):
    import torch

    man, X = _speaker_set(speakers=12, utts=6)
    np.save(tmp_path / "x.npy", X)
    man.write_parquet(tmp_path / "manifest.parquet")
    base = ["matrix", "--embeddings", str(tmp_path / "x.npy"), "--n", "24", "--seeds", "1", "--quiet"]
    default = CliRunner().invoke(app, [*base, "--task", "speaker", "--out", str(tmp_path / "default")])
    on_cpu = CliRunner().invoke(
        app, [*base, "--task", "speaker", "--device", "cpu", "--out", str(tmp_path / "cpu")]
    )
    assert default.exit_code == 0 and on_cpu.exit_code == 0, default.output + on_cpu.output
    a = pl.read_parquet(tmp_path / "default" / "runs.parquet")
    b = pl.read_parquet(tmp_path / "cpu" / "runs.parquet")
    assert a.height > 0 and np.allclose(a["auc"].to_numpy(), b["auc"].to_numpy(), atol=1e-12)
    gender = CliRunner().invoke(
        app, [*base, "--task", "gender", "--device", "cpu", "--out", str(tmp_path / "g")]
    )
    assert gender.exit_code == 2 and "applies to the PLDA back-ends" in gender.output
    speaker = [*base, "--task", "speaker"]
    cosine = CliRunner().invoke(
        app, [*speaker, "--probe", "cosine", "--device", "cpu", "--out", str(tmp_path / "c")]
    )
    assert cosine.exit_code == 2 and "'cosine' always runs on the CPU" in cosine.output
    cuda = CliRunner().invoke(
        app, [*base, "--task", "speaker", "--device", "cuda", "--out", str(tmp_path / "cuda")]
    )
    if torch.cuda.is_available():  # on a GPU machine the same sweep runs there
        assert cuda.exit_code == 0, cuda.output
    else:
        assert cuda.exit_code == 2 and "sees no CUDA device" in cuda.output
    bad = CliRunner().invoke(app, [*speaker, "--device", "tpu", "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "cpu or cuda" in bad.output
