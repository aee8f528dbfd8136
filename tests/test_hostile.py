"""Hostile inputs through the storage-side commands (extract, store info/verify/export, corpus import/synth).

One table, one assertion set for every row (issue 15): the command exits non-zero with the expected code,
prints a message naming the problem, prints no traceback, and leaves every file that existed before it ran
byte for byte as it was, except the files the row says the command was asked to replace. Rows for other
commands (matrix, probe, report) are added by appending :class:`Hostile` entries to ``ROWS`` (or to another
module's table run through :func:`check_hostile`).
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
    """A tiny corpus and a model directory with code in its pickled weights."""
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
        code=EXIT_FAILED,
        setup=_validated_only,
    ),
    Hostile(
        "commonvoice-unknown-split",
        ["corpus", "import", "commonvoice", "{root}/cv", "--out", "{root}/m.parquet", "--splits", "holdout"],
        "unknown split.*holdout.*train, dev, test, validated",
        code=EXIT_FAILED,
        setup=_validated_only,
    ),
    Hostile(
        "commonvoice-not-a-directory",
        ["corpus", "import", "commonvoice", "{root}/nothing", "--out", "{root}/m.parquet"],
        "not a directory",
        code=EXIT_FAILED,
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
