"""Hostile inputs through every command (issue 15): extract, store, corpus, matrix (also --from-runs), probe,
report, finetune, human import / compare.

One table, one assertion set for every row: the command exits non-zero with the expected code (convention in
:mod:`cltm.cli._errors`), prints a message naming the problem, prints no traceback, and leaves every file that
existed before it ran byte for byte as it was, except the files the row says the command was asked to replace.
The fixtures are built once per module (:func:`base`) and copied for each row. A new row is one
:class:`Hostile` entry in ``ROWS``. The tests at the end are inputs that must still work (matrix / probe).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from cltm.cli import app
from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE
from cltm.extract import BatchSettings, ExtractSettings, OutputSettings, extract
from synthetic_manifest import speaker_grid

SR = 16000


@dataclass(frozen=True)
class Hostile:
    """One hostile input: ``setup(root)`` prepares files under ``root`` (it may return an object to keep alive
    while the command runs, e.g. a held lock); ``argv`` uses ``{root}`` for that directory."""

    id: str
    argv: list[str]
    message: str  # a regex the output must contain
    code: int = EXIT_USAGE
    setup: Callable[[Path], Any] | None = None
    replaces: tuple[str, ...] = ()  # paths (relative to root) the command was asked to replace
    env: dict[str, str] = field(default_factory=dict)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_hostile(row: Hostile, root: Path) -> None:
    """Run ``row`` in ``root`` and assert the table's contract."""
    keep = row.setup(root) if row.setup else None
    before = snapshot(root)
    argv = [a.replace("{root}", str(root)) for a in row.argv]
    try:
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "2000", **row.env})
    finally:
        if hasattr(keep, "release"):
            keep.release()
    output = result.output
    assert isinstance(result.exception, SystemExit) or result.exception is None, (
        f"{row.id}: raised {result.exception!r}"
    )
    assert "Traceback" not in output, output
    assert result.exit_code == row.code, f"{row.id}: exit {result.exit_code}, expected {row.code}\n{output}"
    flat = " ".join(output.split())
    assert re.search(row.message, flat), f"{row.id}: {row.message!r} not in:\n{output}"
    after = snapshot(root)
    for name, data in before.items():
        if name in row.replaces:
            continue
        assert name in after, f"{row.id}: {name} was deleted"
        assert after[name] == data, f"{row.id}: {name} was changed"


# ------------------------------------------------------------------------------------------------ fixtures
def _corpus(root: Path, n: int = 4) -> None:
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(corpus / f"u{i}.wav", (0.2 * rng.standard_normal(6000)).astype(np.float32), SR)
    pl.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(n)],
            "path": [f"u{i}.wav" for i in range(n)],
            "language": ["en"] * n,
        }
    ).write_parquet(corpus / "manifest.parquet")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Every row's inputs, built once: a tiny corpus, a model directory with code in its pickled weights, a
    tiny local encoder (``tiny/``), the engine fixture (``eng/``), a results set and broken copies of it,
    listener tables and emotion-corpus trees. Each row works in its own copy."""
    root = tmp_path_factory.mktemp("hostile-base")
    _corpus(root)
    import torch

    from cltm.extract import build_tiny_model

    model_dir = build_tiny_model(root / "pickled", seed=0)
    from safetensors.torch import load_file

    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    weights["evil"] = _Evil()
    torch.save(weights, Path(model_dir) / "pytorch_model.bin")
    (Path(model_dir) / "model.safetensors").unlink()
    build_engine(root / "eng")
    _results(root)
    _human(root)
    _presets(root)
    build_tiny_model(root / "tiny", seed=0)
    return root


class _Evil:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (print, ("this must never run",))


def _cache(root: Path) -> None:
    """An fbank cache of the corpus (built where the row runs: the manifest hash covers absolute paths)."""
    extract(
        root / "corpus" / "manifest.parquet",
        "fbank",
        root / "feats.zarr",
        settings=ExtractSettings(
            batching=BatchSettings(num_workers=0), output=OutputSettings(chunk_rows=2, pool=("mean",))
        ),
    )


def _chunk(root: Path, layer: int = 0, chunk: int = 1) -> Path:
    return root / "feats.zarr" / "pooled" / "mean" / "c" / str(layer) / str(chunk) / "0"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[9] ^= 0x01
    path.write_bytes(bytes(data))


def _lock(root: Path):
    from cltm.store.lock import shard_lock

    return shard_lock(root / "feats.zarr", "shard-0-of-1").acquire()


def _empty_manifest(root: Path) -> None:
    pl.read_parquet(root / "corpus" / "manifest.parquet").head(0).write_parquet(root / "empty.parquet")


def _validated_only(root: Path) -> None:
    locale = root / "cv" / "ca"
    (locale / "clips").mkdir(parents=True)
    (locale / "validated.tsv").write_text("client_id\tpath\tsentence\ngender\n")


# ---------------------------------------------------------------------------------------- engine fixtures
LANGS = ("de", "en")
N_LAYERS, DIM = 2, 6


def engine_manifest(speakers: int = 8, utts: int = 4) -> pl.DataFrame:
    """Two languages, balanced gender and emotion, a float column (not a task)."""
    return speaker_grid(
        LANGS, speakers, utts, lambda lang, s, u: {"emotion": ["happy", "sad"][u % 2], "score": float(u)}
    )


def engine_features(man: pl.DataFrame, seed: int = 0) -> np.ndarray:
    """[layers, utts, dim]; layer 1 carries gender."""
    rng = np.random.default_rng(seed)
    g = np.where(man["gender"].to_numpy() == "male", 1.0, -1.0)
    X = rng.normal(size=(N_LAYERS, man.height, DIM))
    X[1, :, 0] += 1.5 * g
    return X.astype(np.float32)


def build_engine(eng: Path) -> None:
    """Under ``eng``: a cache, an .npz with utt_ids, matching / reordered / foreign / empty manifests, an .npz
    with a NaN row and a blank-label .npy (for the tests at the end), and ``out/`` with an earlier result."""
    from cltm.store import Cache

    eng.mkdir()
    man = engine_manifest()
    X = engine_features(man)
    cache = Cache.create(
        eng / "c.zarr",
        manifest=man,
        n_layers=N_LAYERS,
        dim=DIM,
        dtype="float32",
        attrs={"model_id": "synthetic"},
        pooling=("mean",),
    )
    cache.write_rows(np.arange(man.height), {"mean": X}, np.ones(man.height, np.int32))
    (eng / "npz").mkdir()
    np.savez(eng / "npz" / "x.npz", embeddings=X, utt_id=np.array(man["utt_id"].to_list()))
    man.write_parquet(eng / "npz" / "manifest.parquet")
    man.write_parquet(eng / "manifest.parquet")
    man.reverse().write_parquet(eng / "reordered.parquet")
    man.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("zz_1")).otherwise(pl.col("utt_id")).alias("utt_id")
    ).write_parquet(eng / "foreign.parquet")
    bad = X.copy()
    bad[1, 3, :] = np.nan
    (eng / "nan").mkdir()
    np.savez(eng / "nan" / "x.npz", embeddings=bad)
    man.write_parquet(eng / "nan" / "manifest.parquet")
    man.head(0).write_parquet(eng / "empty.parquet")
    np.save(eng / "empty.npy", np.zeros((N_LAYERS, 0, DIM), np.float32))
    blank = man.with_columns(
        pl.when(pl.col("speaker").str.ends_with("s0"))
        .then(pl.lit(""))
        .otherwise(pl.col("emotion"))
        .alias("emotion")
    )
    (eng / "blank").mkdir()
    np.save(eng / "blank" / "x.npy", X)
    blank.write_parquet(eng / "blank" / "manifest.parquet")
    (eng / "out").mkdir()
    (eng / "out" / "runs.parquet").write_bytes(b"an earlier result")


def _invoke(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output


def _results(root: Path) -> None:
    """A real results set (``results/``) and broken runs tables derived from it."""
    eng = root / "eng"
    _invoke(
        [
            "matrix",
            "--cache",
            str(eng / "c.zarr"),
            "--task",
            "gender",
            "--out",
            str(root / "results"),
            "--seeds",
            "1",
            "--n",
            "3",
            "--quiet",
        ]
    )
    runs = pl.read_parquet(root / "results" / "runs.parquet")
    (root / "runs").mkdir()
    (root / "runs" / "empty.parquet").write_bytes(b"")
    (root / "runs" / "ragged.csv").write_text(
        "type,lang_src,lang_tgt,f1_mean,f1_var,seed_count\nsingle,de,de,0.9,0.01,10\nself,de,de,0.9\n"
    )
    pl.concat([runs, runs]).write_parquet(root / "runs" / "duplicated.parquet")
    torn = root / "torn"
    shutil.copytree(root / "results", torn)
    (torn / "matrices.parquet").unlink()
    (root / "notresults").mkdir()
    (root / "notresults" / "notes.txt").write_text("not a results set")


def _human(root: Path) -> None:
    """A listening-test table over the engine manifest, its imported listener table."""
    hum = root / "human"
    hum.mkdir()
    man = engine_manifest()
    utts = man["utt_id"].to_list()[:8]
    pl.DataFrame(
        {
            "subject": [f"l{i % 2}" for i in range(8)],
            "L1": [["de", "en"][i % 2] for i in range(8)],
            "stimulus": utts,
            "answer": ["happy"] * 8,
        }
    ).write_csv(hum / "answers.csv")
    pl.DataFrame(
        {"subject": ["l0"], "L1": ["de"], "stimulus": ["nobody_0_0"], "answer": ["happy"]}
    ).write_csv(hum / "unknown.csv")
    _invoke(
        [
            "human",
            "import",
            str(hum / "answers.csv"),
            "--manifest",
            str(root / "eng" / "manifest.parquet"),
            "--map",
            HUMAN_MAP,
            "--out",
            str(hum / "listeners.parquet"),
        ]
    )


def _presets(root: Path) -> None:
    """An EmoDB tree without audio, one with a file, and two manifests sharing utt_ids."""
    (root / "emodb-empty" / "wav").mkdir(parents=True)
    (root / "emodb" / "wav").mkdir(parents=True)
    sf.write(root / "emodb" / "wav" / "03a01Fa.wav", np.zeros(1600, np.float32), SR)
    shutil.copy(root / "corpus" / "manifest.parquet", root / "again.parquet")


EXTRACT = [
    "extract",
    "--manifest",
    "{root}/corpus/manifest.parquet",
    "--model",
    "fbank",
    "--pool",
    "mean",
    "-q",
]
ROWS: list[Hostile] = [
    # --- extract
    Hostile(
        "extract-force-into-the-corpus-dir",
        [*EXTRACT, "--out", "{root}/corpus", "--force"],
        "not a cltm cache",
    ),
    Hostile("extract-out-is-a-file", [*EXTRACT, "--out", "{root}/corpus/u0.wav"], "not a directory"),
    Hostile(
        "extract-resume-with-another-dtype",
        [*EXTRACT, "--out", "{root}/feats.zarr", "--dtype", "bfloat16", "--num-workers", "0"],
        "compute_dtype: cache has 'float32', this run has 'bfloat16'",
    ),
    Hostile(
        "extract-resume-without-frames-layers-of-the-cache",
        [*EXTRACT, "--out", "{root}/feats.zarr", "--frames-layers", "0"],
        r"frames_layers: cache has \[\], this run has \[0\]",
    ),
    Hostile(
        "extract-tiny-max-seconds",
        [*EXTRACT, "--out", "{root}/n.zarr", "--max-seconds", "0.001"],
        "at least 0.5",
    ),
    Hostile(
        "extract-empty-manifest",
        ["extract", "--manifest", "{root}/empty.parquet", "--model", "fbank", "--out", "{root}/e.zarr", "-q"],
        "empty.parquet has no rows",
        setup=_empty_manifest,
    ),
    Hostile(
        "extract-missing-manifest",
        ["extract", "--manifest", "{root}/nope.parquet", "--model", "fbank", "--out", "{root}/e.zarr"],
        "nope.parquet does not exist",
    ),
    Hostile(
        "extract-beside-a-running-writer",
        [*EXTRACT, "--out", "{root}/feats.zarr", "--num-workers", "0"],
        r"being written by pid \d+ on host",
        code=EXIT_FAILED,
        setup=_lock,
    ),
    Hostile(
        "extract-force-beside-a-running-writer",
        [*EXTRACT, "--out", "{root}/feats.zarr", "--force", "--dtype", "float16"],
        r"refusing --force: .*being written by pid \d+",
        code=EXIT_FAILED,
        setup=_lock,
    ),
    Hostile(
        "extract-pickled-weights",
        [*EXTRACT, "--out", "{root}/p.zarr", "--model", "{root}/pickled"],
        "pickled weights .* cltm never runs pickled code",
    ),
    Hostile(
        "extract-bad-frames-layers",
        [*EXTRACT, "--out", "{root}/n.zarr", "--frames-layers", "5"],
        "out of range",
    ),
    Hostile("extract-bad-pool", [*EXTRACT, "--out", "{root}/n.zarr", "--pool", "max"], "--pool: use mean"),
    Hostile(
        "extract-every-input-fails",
        [*EXTRACT, "--out", "{root}/n.zarr", "--num-workers", "0"],
        r"no row of the manifest could be extracted",
        code=EXIT_FAILED,
        setup=lambda r: [f.unlink() for f in (r / "corpus").glob("*.wav")],
    ),
    Hostile(
        "extract-model-dir-without-weights",
        [*EXTRACT, "--out", "{root}/n.zarr", "--model", "{root}/noweights"],
        "no file named model.safetensors",
        setup=lambda r: (
            (r / "noweights").mkdir() or shutil.copy(r / "pickled" / "config.json", r / "noweights")
        ),
    ),
    # --- store
    Hostile("info-no-cache", ["store", "info", "{root}/nope.zarr"], "no such cache"),
    Hostile(
        "info-corrupt-zarr-json",
        ["store", "info", "{root}/feats.zarr"],
        "zarr.json cannot be read",
        setup=lambda r: (r / "feats.zarr" / "zarr.json").write_text("{oops"),
    ),
    Hostile(
        "verify-corrupt-zarr-json",
        ["store", "verify", "{root}/feats.zarr"],
        "zarr.json cannot be read",
        code=EXIT_FAILED,
        setup=lambda r: (r / "feats.zarr" / "zarr.json").write_text("{oops"),
    ),
    Hostile(
        "verify-truncated-chunk",
        ["store", "verify", "{root}/feats.zarr"],
        r"pooled/mean/c/0/1/0 is 5 bytes, expected 320",
        code=EXIT_FAILED,
        setup=lambda r: _chunk(r).write_bytes(b"12345"),
    ),
    Hostile(
        "verify-missing-array-metadata",
        ["store", "verify", "{root}/feats.zarr"],
        "missing pooled/mean/zarr.json",
        code=EXIT_FAILED,
        setup=lambda r: (r / "feats.zarr" / "pooled" / "mean" / "zarr.json").unlink(),
    ),
    Hostile(
        "verify-missing-manifest",
        ["store", "verify", "{root}/feats.zarr"],
        "missing manifest.parquet",
        code=EXIT_FAILED,
        setup=lambda r: (r / "feats.zarr" / "manifest.parquet").unlink(),
    ),
    Hostile(
        "verify-flipped-byte",
        ["store", "verify", "{root}/feats.zarr"],
        r"pooled/mean/c/0/1/0 does not match the checksum",
        code=EXIT_FAILED,
        setup=lambda r: _flip(_chunk(r)),
    ),
    Hostile(
        "verify-deleted-chunk",
        ["store", "verify", "{root}/feats.zarr"],
        r"chunk pooled/mean/c/0/1/0 missing: layer 0 \(mean\) of done rows 2 \(u2\), 3 \(u3\)",
        code=EXIT_FAILED,
        setup=lambda r: _chunk(r).unlink(),
    ),
    Hostile(
        "export-over-the-cache-metadata",
        ["store", "export", "{root}/feats.zarr", "--out", "{root}/feats.zarr/zarr.json", "--force"],
        "inside the cache",
    ),
    Hostile(
        "export-over-an-existing-file",
        ["store", "export", "{root}/feats.zarr", "--out", "{root}/corpus/manifest.parquet"],
        "already exists; use --force",
    ),
    Hostile(
        "export-unknown-format",
        ["store", "export", "{root}/feats.zarr", "--out", "{root}/x.bin", "--format", "bin"],
        "--format: use one of h5, npz",
    ),
    Hostile(
        "human-compare-not-a-listener-table",
        ["human", "compare", "--listeners", "{root}/results/runs.parquet", "--out", "{root}/eng/out", "-q"],
        r"runs.parquet: not a listener table \(missing column\(s\) listener, group",
    ),
    # --- corpus
    Hostile(
        "synth-out-is-a-file",
        ["corpus", "synth", "--out", "{root}/corpus/manifest.parquet", "-q"],
        "exists and is a file",
    ),
    Hostile(
        "commonvoice-validated-only-locale",
        ["corpus", "import", "commonvoice", "{root}/cv", "--out", "{root}/m.parquet"],
        r"missing Common Voice TSV file\(s\).*train\.tsv.*--splits validated",
        code=EXIT_USAGE,
        setup=_validated_only,
    ),
    Hostile(
        "commonvoice-unknown-split",
        ["corpus", "import", "commonvoice", "{root}/cv", "--out", "{root}/m.parquet", "--splits", "holdout"],
        "unknown split.*holdout.*train, dev, test, validated",
        code=EXIT_USAGE,
        setup=_validated_only,
    ),
    Hostile(
        "commonvoice-not-a-directory",
        ["corpus", "import", "commonvoice", "{root}/nothing", "--out", "{root}/m.parquet"],
        "not a directory",
        code=EXIT_USAGE,
    ),
]

# --- matrix / probe on the engine fixture: "--out" already holds an earlier result that must survive.
CACHE = "{root}/eng/c.zarr"
ENGINE_ROWS = [
    (
        "matrix-too-little-data",
        ["matrix", "--cache", CACHE, "--task", "gender", "--n", "500"],
        1,
        "too little training data",
    ),
    (
        "matrix-unknown-languages",
        ["matrix", "--cache", CACHE, "--task", "gender", "--languages", "xx,yy"],
        1,
        "not in the manifest",
    ),
    (
        "matrix-empty-manifest",
        [
            "matrix",
            "--embeddings",
            "{root}/eng/empty.npy",
            "--manifest",
            "{root}/eng/empty.parquet",
            "--task",
            "gender",
        ],
        1,
        "manifest is empty",
    ),
    (
        "matrix-unknown-donor",
        ["matrix", "--cache", CACHE, "--task", "gender", "--donors", "xx"],
        2,
        "unknown donor",
    ),
    (
        "matrix-empty-layer-range",
        ["matrix", "--cache", CACHE, "--task", "gender", "--layers", "1-0"],
        2,
        "is empty",
    ),
    (
        "matrix-layer-out-of-range",
        ["matrix", "--cache", CACHE, "--task", "gender", "--layers", "7"],
        2,
        "out of range",
    ),
    ("matrix-utt-id-as-task", ["matrix", "--cache", CACHE, "--task", "utt_id"], 2, "cannot be a task"),
    ("matrix-float-task", ["matrix", "--cache", CACHE, "--task", "score"], 2, "floating-point"),
    (
        "matrix-unknown-probe",
        ["matrix", "--cache", CACHE, "--task", "gender", "--probe", "svm"],
        2,
        "unknown probe",
    ),
    (
        "matrix-metric-mismatch",
        ["matrix", "--cache", CACHE, "--task", "gender", "--metric", "eer"],
        2,
        "does not apply",
    ),
    (
        "matrix-verification-probe",
        ["matrix", "--cache", CACHE, "--task", "gender", "--probe", "plda"],
        2,
        "verification probe",
    ),
    (
        "matrix-foreign-manifest-for-cache",
        ["matrix", "--cache", CACHE, "--task", "gender", "--manifest", "{root}/eng/foreign.parquet"],
        2,
        "first differing row",
    ),
    (
        "matrix-foreign-manifest-for-npz",
        [
            "matrix",
            "--embeddings",
            "{root}/eng/npz/x.npz",
            "--manifest",
            "{root}/eng/foreign.parquet",
            "--task",
            "gender",
        ],
        2,
        "does not hold the utterances",
    ),
    (
        "probe-empty-layer-range",
        ["probe", "--cache", CACHE, "--task", "gender", "--layers", "1-0"],
        2,
        "is empty",
    ),
    ("probe-duration-as-task", ["probe", "--cache", CACHE, "--task", "duration"], 2, "cannot be a task"),
    (
        "probe-classes-never-occur",
        ["probe", "--cache", CACHE, "--task", "emotion", "--classes", "happy,bored"],
        2,
        "never occur",
    ),
    (
        "probe-unknown-backend",
        ["probe", "--cache", CACHE, "--task", "speaker", "--backend", "svm"],
        2,
        "unknown backend",
    ),
    (
        "probe-too-little-data",
        ["probe", "--cache", CACHE, "--task", "gender", "--n", "500"],
        1,
        "too little training data",
    ),
    (
        "probe-unknown-language",
        ["probe", "--cache", CACHE, "--task", "gender", "--languages", "xx"],
        1,
        "not in the manifest",
    ),
]
for _id, _words, _code, _message in ENGINE_ROWS:
    _extra = ["--n", "3", "--quiet"] if _words[0] == "matrix" and "--n" not in _words else []
    ROWS.append(
        Hostile(_id, [*_words, "--seeds", "1", *_extra, "--out", "{root}/eng/out"], _message, code=_code)
    )

FROM_RUNS = ["matrix", "--out", "{root}/eng/out", "--quiet", "--from-runs"]
REPORT = ["report", "--out", "{root}/eng/out", "-q"]
FINETUNE = [
    "finetune",
    "--model",
    "{root}/tiny",
    "--n",
    "1",
    "--cells",
    "de:en",
    "--seeds",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
ENG_MAN = "{root}/eng/manifest.parquet"
EARLIER = ["--out", "{root}/eng/out"]  # holds an unreadable earlier runs.parquet
HUMAN_IMPORT = ["human", "import", "--manifest", ENG_MAN, "--out", "{root}/human/listeners.parquet"]
HUMAN_MAP = "listener=subject,group=L1,utt_id=stimulus,response=answer"
ROWS += [
    # --- matrix --from-runs
    Hostile(
        "from-runs-zero-byte-file",
        [*FROM_RUNS, "{root}/runs/empty.parquet"],
        r"empty.parquet: the file is empty \(0 bytes\)",
    ),
    Hostile(
        "from-runs-ragged-csv",
        [*FROM_RUNS, "{root}/runs/ragged.csv"],
        "ragged.csv: line 3 has 4 field.s., the header has 6",
    ),
    Hostile(
        "from-runs-duplicate-condition-rows",
        [*FROM_RUNS, "{root}/runs/duplicated.parquet"],
        r"duplicated.parquet: rows 1, 17 repeat condition 'single' of target 'de', donor 'de', seed 0",
    ),
    Hostile(
        "matrix-out-is-a-file",
        ["matrix", "--from-runs", "{root}/results/runs.parquet", "--out", "{root}/corpus/u0.wav", "--quiet"],
        "--out .*u0.wav: exists and is not a directory",
    ),
    Hostile(
        "probe-out-is-a-file",
        ["probe", "--cache", CACHE, "--task", "gender", "--seeds", "1", "--out", "{root}/corpus/u0.wav"],
        "--out .*u0.wav: exists and is not a directory",
    ),
    # --- report
    Hostile(
        "report-missing-dir", ["report", "{root}/nope", "--out", "{root}/eng/out"], "nope: not a directory"
    ),
    Hostile("report-not-a-results-dir", [*REPORT, "{root}/notresults"], "notresults: no results tables"),
    Hostile(
        "report-torn-results-set",
        [*REPORT, "{root}/torn"],
        "torn: matrices.parquet listed in results-set.json but missing",
    ),
    Hostile(
        "report-bad-layers", [*REPORT, "{root}/results", "--layers", "9"], "--layers: layer 9 is out of range"
    ),
    Hostile(
        "report-bad-format",
        [*REPORT, "{root}/results", "--format", "gif"],
        r"--format: figure format\(s\) \['gif'\] not supported",
    ),
    Hostile(
        "report-human-not-a-comparison",
        [*REPORT, "{root}/results", "--human", "{root}/results"],
        "no human_scores.parquet; write it with `cltm human compare",
    ),
    Hostile(
        "report-out-is-a-file",
        ["report", "{root}/results", "--out", "{root}/corpus/manifest.parquet", "-q"],
        "--out: .*manifest.parquet exists and is not a directory",
    ),
    Hostile(
        "report-missing-families",
        [*REPORT, "{root}/results", "--families", "{root}/nope.tsv"],
        "--families: .*nope.tsv: file not found",
    ),
    # --- finetune
    Hostile(
        "finetune-missing-manifest",
        [*FINETUNE, *EARLIER, "--manifest", "{root}/nope.parquet", "--task", "gender"],
        "--manifest.: file .*nope.parquet. does not exist",
    ),
    Hostile(
        "finetune-unknown-task-column",
        [*FINETUNE, "--out", "{root}/ft", "--manifest", ENG_MAN, "--task", "accent"],
        "task 'accent': the manifest has no 'accent' column",
    ),
    Hostile(
        "finetune-bad-conditions",
        [*FINETUNE, *EARLIER, "--manifest", ENG_MAN, "--task", "gender", "--conditions", "single,twice"],
        r"unknown condition\(s\) \['twice'\]",
    ),
    Hostile(
        "finetune-bad-lora-targets",
        [
            *FINETUNE,
            "--manifest",
            ENG_MAN,
            "--task",
            "gender",
            "--peft",
            "lora",
            "--lora-targets",
            "nothing_here",
            "--out",
            "{root}/ft",
        ],
        r"LoRA target module\(s\) \['nothing_here'\] are not linear layers",
    ),
    Hostile(
        "finetune-corrupt-earlier-runs",
        [*FINETUNE, *EARLIER, "--manifest", ENG_MAN, "--task", "gender"],
        r"eng/out: its earlier runs \(runs.parquet, runs.parts/\) cannot be read",
    ),
    Hostile(
        "finetune-layer-out-of-range",
        [*FINETUNE, "--manifest", ENG_MAN, "--task", "gender", "--layer", "9", "--out", "{root}/ft"],
        r"--layer 9: .*tiny has hidden states 0\.\.3",
    ),
    Hostile(
        "finetune-zero-byte-manifest",
        [*FINETUNE, "--manifest", "{root}/runs/empty.parquet", "--task", "gender", "--out", "{root}/ft"],
        "cannot read manifest .*empty.parquet: .*parquet",
    ),
    Hostile(
        "finetune-bad-seeds",
        [*FINETUNE, "--manifest", ENG_MAN, "--task", "gender", "--seeds", "x", "--out", "{root}/ft"],
        "--seeds: 'x': give a count",
    ),
    # --- human
    Hostile(
        "human-import-bad-map",
        [*HUMAN_IMPORT, "{root}/human/answers.csv", "--map", "listener=subject,speaker"],
        "--map entry 'speaker' is not FIELD=COLUMN",
    ),
    Hostile(
        "human-import-unknown-utt-ids",
        [*HUMAN_IMPORT, "{root}/human/unknown.csv", "--map", HUMAN_MAP],
        r"row 0 \(utt_id 'nobody_0_0'\): unknown utt_id 'nobody_0_0': not in the manifest",
    ),
    Hostile(
        "human-import-missing-table",
        [*HUMAN_IMPORT, "{root}/human/nope.csv", "--map", HUMAN_MAP],
        "cannot read listener table .*nope.csv: .* no such file",
    ),
    Hostile(
        "human-import-missing-manifest",
        [
            "human",
            "import",
            "{root}/human/answers.csv",
            "--map",
            HUMAN_MAP,
            "--manifest",
            "{root}/nope.parquet",
            "--out",
            "{root}/human/listeners.parquet",
        ],
        "cannot read manifest .*nope.parquet: .* no such file",
    ),
    Hostile(
        "human-compare-missing-listeners",
        ["human", "compare", "--listeners", "{root}/human/nope.parquet", "--out", "{root}/eng/out", "-q"],
        "cannot read listener table .*nope.parquet: .* no such file",
    ),
    Hostile(
        "human-compare-missing-predictions",
        [
            "human",
            "compare",
            "--listeners",
            "{root}/human/listeners.parquet",
            "--predictions",
            "{root}/nope",
            "--out",
            "{root}/eng/out",
            "-q",
        ],
        "cannot read predictions .*nope: .* no such file",
    ),
    Hostile(
        "human-compare-not-a-listener-table",
        ["human", "compare", "--listeners", "{root}/results/runs.parquet", "--out", "{root}/eng/out", "-q"],
        r"runs.parquet: not a listener table \(missing column\(s\) listener, group",
    ),
    # --- corpus
    Hostile(
        "emodb-empty-tree",
        ["corpus", "import", "emodb", "{root}/emodb-empty", "--out", "{root}/again.parquet"],
        "emodb-empty: no audio file follows the Berlin Database",
    ),
    Hostile(
        "emodb-unknown-emotion",
        [
            "corpus",
            "import",
            "emodb",
            "{root}/emodb",
            "--out",
            "{root}/again.parquet",
            "--emotions",
            "happy,grumpy",
        ],
        "--emotions: unknown emotion 'grumpy'",
    ),
    Hostile(
        "combine-repeated-utt-id",
        [
            "corpus",
            "combine",
            "{root}/corpus/manifest.parquet",
            "{root}/again.parquet",
            "--out",
            "{root}/eng/manifest.parquet",
        ],
        "utt_id 'u0' is in both .*corpus/manifest.parquet and .*again.parquet",
    ),
    Hostile(
        "combine-missing-file",
        ["corpus", "combine", "{root}/nope.parquet", "--out", "{root}/eng/manifest.parquet"],
        "nope.parquet: no such file",
    ),
    Hostile(
        "info-zero-byte-manifest",
        ["corpus", "info", "{root}/runs/empty.parquet"],
        "cannot read manifest .*empty.parquet",
    ),
    Hostile(
        "info-unknown-task-column",
        ["corpus", "info", ENG_MAN, "--task", "accent"],
        "--task.: task 'accent' needs the manifest column 'accent'",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input(row: Hostile, base: Path, tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(base, root)
    _cache(root)
    check_hostile(row, root)


def test_the_table_checks_can_fail(base: Path, tmp_path: Path) -> None:
    """The contract itself: a command that succeeds, or changes a file it was not asked to, is caught."""
    root = tmp_path / "w"
    shutil.copytree(base, root)
    _cache(root)
    ok = Hostile("succeeds", ["store", "info", "{root}/feats.zarr"], "rows")
    with pytest.raises(AssertionError, match="exit 0"):
        check_hostile(ok, root)
    export = Hostile(
        "replaces",
        ["store", "export", "{root}/feats.zarr", "--out", "{root}/corpus/manifest.parquet", "--force"],
        "wrote",
        code=0,
    )
    with pytest.raises(AssertionError, match="manifest.parquet was changed"):
        check_hostile(export, root)


# ------------------------------------------------------------- matrix / probe: inputs that must still work
@pytest.fixture()
def eng(base: Path, tmp_path: Path) -> Path:
    """A private copy of the engine fixture (these tests write results beside it)."""
    shutil.copytree(base / "eng", tmp_path / "eng")
    return tmp_path / "eng"


def _matrix(*args: str) -> Any:
    return CliRunner().invoke(app, ["matrix", *args, "--seeds", "1", "--n", "3"])  # not --quiet: warnings


def _f1(out: Path, layer: int = 1) -> float:
    runs = pl.read_parquet(out / "runs.parquet")
    return runs.filter((pl.col("layer") == layer) & (pl.col("condition") == "single"))["f1"].mean()


def test_reordered_manifest_is_aligned_by_utt_id_not_by_position(eng: Path) -> None:
    runs = {}
    for name in ("manifest", "reordered"):
        r = _matrix(
            "--cache",
            str(eng / "c.zarr"),
            "--manifest",
            str(eng / f"{name}.parquet"),
            "--task",
            "gender",
            "--out",
            str(eng / name),
        )
        assert r.exit_code == 0, r.output
        runs[name] = pl.read_parquet(eng / name / "runs.parquet").drop("config_hash")
    assert runs["manifest"].equals(runs["reordered"])


def test_a_non_finite_row_is_excluded_and_counted_not_ruining_the_layer(eng: Path) -> None:
    clean = _matrix(
        "--embeddings", str(eng / "npz" / "x.npz"), "--task", "gender", "--out", str(eng / "clean")
    )
    nan = _matrix(
        "--embeddings", str(eng / "nan" / "x.npz"), "--task", "gender", "--out", str(eng / "nan_out")
    )
    assert clean.exit_code == 0 and nan.exit_code == 0, nan.output
    assert "1 row(s) have non-finite" in nan.output and "de_0_3" in nan.output
    assert _f1(eng / "nan_out") > 0.7 and abs(_f1(eng / "nan_out") - _f1(eng / "clean")) < 0.2


def test_non_finite_rows_can_be_refused_in_the_api(eng: Path) -> None:
    from cltm.transfer import PlanSettings, run_matrix
    from cltm.transfer.embeddings import load_embeddings

    X, man = load_embeddings(eng / "nan" / "x.npz")
    with pytest.raises(ValueError, match="non-finite"):
        run_matrix(X, man, "gender", plan=PlanSettings(n=3, seeds=1, non_finite="refuse"))


def test_empty_labels_are_missing_not_a_class(eng: Path) -> None:
    r = CliRunner().invoke(
        app,
        ["probe", "--embeddings", str(eng / "blank" / "x.npy"), "--task", "emotion", "--out", str(eng / "o")],
    )
    assert r.exit_code == 0, r.output
    classes = pl.read_parquet(eng / "o" / "confusion.parquet")["true"].unique().sort().to_list()
    assert classes == ["happy", "sad"]
