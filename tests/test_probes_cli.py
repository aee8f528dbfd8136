"""`cltm probe` (the engine's single condition per layer, language and pooled) on a small synthetic cache."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from cltm.cli import app
from cltm.probes import metrics
from cltm.transfer import PlanSettings, run_matrix
from cltm.transfer.runner import layer_scores

N_LAYERS, DIM = 4, 12


def synthetic(seed=0, languages=("de", "en", "fr"), speakers=16, utts=4):
    """Layer 2 carries gender and speaker identity; layer 0 is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for lang in languages:
        for s in range(speakers):
            for u in range(utts):
                rows.append(
                    {
                        "utt_id": f"{lang}_{s}_{u}",
                        "path": f"{lang}/{s}/{u}.wav",
                        "language": lang,
                        "speaker": f"{lang}_spk{s}",
                        "gender": "female" if s % 2 else "male",
                        "emotion": ["happy", "sad", "calm"][u % 3],
                    }
                )
    manifest = pl.DataFrame(rows)
    n = manifest.height
    spk_codes = np.unique(manifest["speaker"].to_numpy(), return_inverse=True)[1]
    gender = (manifest["gender"] == "female").to_numpy().astype(float)
    spk_vec = rng.normal(size=(spk_codes.max() + 1, DIM))
    feats = rng.normal(size=(N_LAYERS, n, DIM)).astype(np.float32)
    feats[2] += 2.5 * spk_vec[spk_codes] * 0.6
    feats[2, :, 0] += 3.0 * (2 * gender - 1)
    feats[1, :, 0] += 0.8 * (2 * gender - 1)
    return manifest, feats


def make_cache(tmp_path, manifest, feats, *, not_done=()):
    from cltm.store import Cache

    cache = Cache.create(
        tmp_path / "c.zarr",
        manifest=manifest,
        n_layers=N_LAYERS,
        dim=DIM,
        dtype="float32",
        attrs={"model_id": "synthetic"},
        pooling=("mean",),
    )
    rows = np.setdiff1d(np.arange(manifest.height), np.asarray(not_done, dtype=np.int64))
    cache.write_rows(rows, {"mean": feats[:, rows]}, np.ones(len(rows), np.int32))
    return tmp_path / "c.zarr"


def _probe(feats, manifest, task, layers=None, probe=None):
    """The engine in `cltm probe`'s configuration: single condition, every training row, pooled."""
    plan = PlanSettings(n=None, seeds=(0,), layers=layers, conditions=("single",), pooled=True)
    res = run_matrix(feats, manifest, task, plan=plan, probe=probe)
    return layer_scores(res).rename({"target": "language"})


def test_layerwise_gender_matches_a_direct_loop():
    manifest, feats = synthetic()
    scores = _probe(feats, manifest, "gender", layers="0,2")
    assert set(scores["layer"].to_list()) == {0, 2}
    assert set(scores["language"].to_list()) == {"de", "en", "fr", "pooled"}
    # the direct way: the same split, one sklearn pipeline per (layer, language)
    from cltm.corpus.sampling import speaker_disjoint_split

    split = speaker_disjoint_split(manifest.with_row_index("r"), test_fraction=0.25, seed=0)
    for row in scores.iter_rows(named=True):
        lang = split if row["language"] == "pooled" else split.filter(pl.col("language") == row["language"])
        tr = lang.filter(pl.col("split") == "train")["r"].to_numpy()
        te = lang.filter(pl.col("split") == "test")["r"].to_numpy()
        X, y = feats[row["layer"]], manifest["gender"].to_numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
        pred = model.fit(X[tr], y[tr]).predict(X[te])
        assert row["f1"] == pytest.approx(metrics.macro_f1(y[te], pred), abs=1e-9)
        assert row["n_train"] == len(tr) and row["n_test"] == len(te)
    best = scores.filter(pl.col("language") == "pooled").sort("f1")["layer"][-1]
    assert best == 2


def test_layerwise_speaker_prefers_the_identity_layer():
    manifest, feats = synthetic(1)
    scores = _probe(feats, manifest, "speaker", probe="cosine")
    pooled = scores.filter(pl.col("language") == "pooled").sort("layer")
    assert pooled["eer"].to_list()[2] < pooled["eer"].to_list()[0]
    assert {"auc", "eer", "min_dcf_01", "min_dcf_05"} <= set(scores.columns)


def test_cli_probe_writes_parquet_curve_and_table(tmp_path):
    manifest, feats = synthetic(2)
    cache = make_cache(tmp_path, manifest, feats, not_done=[0, 1])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--cache",
            str(cache),
            "--task",
            "gender",
            "--out",
            str(out),
            "--layers",
            "1,2",
            "--n",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out / "probe.parquet")
    assert set(table["layer"].to_list()) == {1, 2}
    assert (table.filter(pl.col("language") != "pooled")["n_train"] == 12).all()  # 6 per class
    assert (out / "layer_curve.png").stat().st_size > 1000
    assert "f1 per layer" in result.output and "2 of" in result.output

    wsum = CliRunner().invoke(
        app,
        [
            "probe",
            "--cache",
            str(cache),
            "--task",
            "emotion",
            "--out",
            str(tmp_path / "w"),
            "--probe",
            "wsum",
        ],
    )
    assert wsum.exit_code == 0, wsum.output
    weights = pl.read_parquet(tmp_path / "w" / "layer_weights.parquet")
    assert weights.group_by("language").agg(pl.col("weight").sum())["weight"].to_numpy() == pytest.approx(1.0)

    spk = CliRunner().invoke(
        app,
        [
            "probe",
            "--cache",
            str(cache),
            "--task",
            "speaker",
            "--out",
            str(tmp_path / "s"),
            "--backend",
            "plda",
        ],
    )
    assert spk.exit_code == 0, spk.output
    assert "eer" in pl.read_parquet(tmp_path / "s" / "probe.parquet").columns


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "age"], "column 'age'"),
        (["--task", "utt_id"], "cannot be a task"),
        (["--task", "gender", "--layers", "2-0"], "is empty"),
        (["--task", "gender", "--layers", "9"], "out of range"),
        (["--task", "gender", "--probe", "svm"], "unknown probe"),
        (["--task", "speaker", "--backend", "x"], "unknown backend"),
    ],
)
def test_cli_probe_bad_input_is_a_clean_error(tmp_path, args, message):
    manifest, feats = synthetic(3, languages=("de",))
    cache = make_cache(tmp_path, manifest, feats)
    result = CliRunner().invoke(app, ["probe", "--cache", str(cache), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_probe_missing_cache(tmp_path):
    result = CliRunner().invoke(
        app, ["probe", "--cache", str(tmp_path / "nope"), "--task", "gender", "--out", "o"]
    )
    assert result.exit_code != 0 and "nope" in result.output
