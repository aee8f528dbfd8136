"""Hostile inputs to `cltm matrix` / `cltm probe` (issue 15 items 2, 4, 9, 11): a clear one-line message
and the documented exit code, never a traceback, never a changed pre-existing file, never a wrong label."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cltm.cli import app

LANGS = ("de", "en")
N_LAYERS, DIM = 2, 6


def _manifest(speakers: int = 8, utts: int = 4) -> pl.DataFrame:
    rows = []
    for lang in LANGS:
        for s in range(speakers):
            for u in range(utts):
                rows.append(
                    {
                        "utt_id": f"{lang}_{s}_{u}",
                        "path": "x.wav",
                        "language": lang,
                        "speaker": f"{lang}_s{s}",
                        "gender": "female" if s % 2 else "male",
                        "emotion": ["happy", "sad"][u % 2],
                        "score": float(u),
                    }
                )
    return pl.DataFrame(rows)


def _features(man: pl.DataFrame, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.where(man["gender"].to_numpy() == "male", 1.0, -1.0)
    X = rng.normal(size=(N_LAYERS, man.height, DIM))
    X[1, :, 0] += 1.5 * g
    return X.astype(np.float32)


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, Path]:
    """A cache, an .npz carrying utt_ids, matching manifests, a reordered and a foreign manifest."""
    from cltm.store import Cache

    man = _manifest()
    X = _features(man)
    cache = Cache.create(
        tmp_path / "c.zarr",
        manifest=man,
        n_layers=N_LAYERS,
        dim=DIM,
        dtype="float32",
        attrs={"model_id": "synthetic"},
        pooling=("mean",),
    )
    cache.write_rows(np.arange(man.height), {"mean": X}, np.ones(man.height, np.int32))
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "x.npz", embeddings=X, utt_id=np.array(man["utt_id"].to_list()))
    man.write_parquet(tmp_path / "npz" / "manifest.parquet")
    man.write_parquet(tmp_path / "manifest.parquet")
    man.reverse().write_parquet(tmp_path / "reordered.parquet")
    man.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("zz_1")).otherwise(pl.col("utt_id")).alias("utt_id")
    ).write_parquet(tmp_path / "foreign.parquet")
    bad = X.copy()
    bad[1, 3, :] = np.nan
    (tmp_path / "nan").mkdir()
    np.savez(tmp_path / "nan" / "x.npz", embeddings=bad)
    man.write_parquet(tmp_path / "nan" / "manifest.parquet")
    man.head(0).write_parquet(tmp_path / "empty.parquet")
    np.save(tmp_path / "empty.npy", np.zeros((N_LAYERS, 0, DIM), np.float32))
    blank = man.with_columns(
        pl.when(pl.col("speaker").str.ends_with("s0"))
        .then(pl.lit(""))
        .otherwise(pl.col("emotion"))
        .alias("emotion")
    )
    (tmp_path / "blank").mkdir()
    np.save(tmp_path / "blank" / "x.npy", X)
    blank.write_parquet(tmp_path / "blank" / "manifest.parquet")
    return {"dir": tmp_path, "cache": tmp_path / "c.zarr"}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


BASE = ["--seeds", "1", "--n", "3", "--quiet"]

#: (command words with {cache}/{dir} placeholders, expected exit code, message fragment)
CASES = [
    (["matrix", "--cache", "{cache}", "--task", "gender", "--n", "500"], 1, "too little training data"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--languages", "xx,yy"], 1, "not in the manifest"),
    (
        [
            "matrix",
            "--embeddings",
            "{dir}/empty.npy",
            "--manifest",
            "{dir}/empty.parquet",
            "--task",
            "gender",
        ],
        1,
        "manifest is empty",
    ),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--donors", "xx"], 2, "unknown donor"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--layers", "1-0"], 2, "is empty"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--layers", "7"], 2, "out of range"),
    (["matrix", "--cache", "{cache}", "--task", "utt_id"], 2, "cannot be a task"),
    (["matrix", "--cache", "{cache}", "--task", "score"], 2, "floating-point"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--probe", "svm"], 2, "unknown probe"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--metric", "eer"], 2, "does not apply"),
    (["matrix", "--cache", "{cache}", "--task", "gender", "--probe", "plda"], 2, "verification probe"),
    (
        ["matrix", "--cache", "{cache}", "--task", "gender", "--manifest", "{dir}/foreign.parquet"],
        2,
        "first differing row",
    ),
    (
        [
            "matrix",
            "--embeddings",
            "{dir}/npz/x.npz",
            "--manifest",
            "{dir}/foreign.parquet",
            "--task",
            "gender",
        ],
        2,
        "does not hold the utterances",
    ),
    (["probe", "--cache", "{cache}", "--task", "gender", "--layers", "1-0"], 2, "is empty"),
    (["probe", "--cache", "{cache}", "--task", "duration"], 2, "cannot be a task"),
    (["probe", "--cache", "{cache}", "--task", "emotion", "--classes", "happy,bored"], 2, "never occur"),
    (["probe", "--cache", "{cache}", "--task", "speaker", "--backend", "svm"], 2, "unknown backend"),
    (["probe", "--cache", "{cache}", "--task", "gender", "--n", "500"], 1, "too little training data"),
    (["probe", "--cache", "{cache}", "--task", "gender", "--languages", "xx"], 1, "not in the manifest"),
]


@pytest.mark.parametrize(
    ("words", "code", "fragment"), CASES, ids=[" ".join(c[0][:1] + c[0][3:6]) for c in CASES]
)
def test_hostile_input_gives_a_message_and_the_exit_code(corpus, words, code, fragment):
    root = corpus["dir"]
    out = root / "out"
    out.mkdir(exist_ok=True)
    (out / "runs.parquet").write_bytes(b"an earlier result")
    before = _snapshot(root)
    args = [w.format(cache=corpus["cache"], dir=root) for w in words]
    extra = ["--seeds", "1"] + (["--n", "3", "--quiet"] if words[0] == "matrix" and "--n" not in args else [])
    result = CliRunner().invoke(app, [*args, *extra, "--out", str(out)])
    text = result.output
    assert result.exit_code == code, text
    assert fragment in text, text
    assert "Traceback" not in text and result.exception is None or isinstance(result.exception, SystemExit)
    assert _snapshot(root) == before  # nothing pre-existing changed, nothing half-written


def _f1(out: Path, layer: int = 1) -> float:
    runs = pl.read_parquet(out / "runs.parquet")
    return runs.filter((pl.col("layer") == layer) & (pl.col("condition") == "single"))["f1"].mean()


def test_reordered_manifest_is_aligned_by_utt_id_not_by_position(corpus):
    root = corpus["dir"]
    runs = {}
    for name in ("manifest", "reordered"):
        out = root / name
        r = CliRunner().invoke(
            app,
            [
                "matrix",
                "--cache",
                str(corpus["cache"]),
                "--manifest",
                str(root / f"{name}.parquet"),
                "--task",
                "gender",
                "--out",
                str(out),
                *BASE,
            ],
        )
        assert r.exit_code == 0, r.output
        runs[name] = pl.read_parquet(out / "runs.parquet").drop("config_hash")
    assert runs["manifest"].equals(runs["reordered"])


def test_a_non_finite_row_is_excluded_and_counted_not_ruining_the_layer(corpus):
    root = corpus["dir"]
    clean = CliRunner().invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(root / "npz" / "x.npz"),
            "--task",
            "gender",
            "--out",
            str(root / "clean"),
            "--seeds",
            "1",
            "--n",
            "3",
        ],
    )
    nan = CliRunner().invoke(
        app,
        [
            "matrix",
            "--embeddings",
            str(root / "nan" / "x.npz"),
            "--task",
            "gender",
            "--out",
            str(root / "nan_out"),
            "--seeds",
            "1",
            "--n",
            "3",
        ],
    )
    assert clean.exit_code == 0 and nan.exit_code == 0, nan.output
    assert "1 row(s) have non-finite" in nan.output and "de_0_3" in nan.output
    assert _f1(root / "nan_out") > 0.7 and abs(_f1(root / "nan_out") - _f1(root / "clean")) < 0.2


def test_non_finite_rows_can_be_refused_in_the_api(corpus):
    from cltm.transfer import PlanSettings, run_matrix
    from cltm.transfer.embeddings import load_embeddings

    X, man = load_embeddings(corpus["dir"] / "nan" / "x.npz")
    with pytest.raises(ValueError, match="non-finite"):
        run_matrix(X, man, "gender", plan=PlanSettings(n=3, seeds=1, non_finite="refuse"))


def test_empty_labels_are_missing_not_a_class(corpus):
    root = corpus["dir"]
    r = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(root / "blank" / "x.npy"),
            "--task",
            "emotion",
            "--out",
            str(root / "blank_out"),
        ],
    )
    assert r.exit_code == 0, r.output
    classes = pl.read_parquet(root / "blank_out" / "confusion.parquet")["true"].unique().sort().to_list()
    assert classes == ["happy", "sad"]
