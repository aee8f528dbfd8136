"""`cltm demo --quick` end to end: corpus -> tiny random HuBERT + fbank -> caches -> CLTMs -> report."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from cltm.cli import app
from cltm.demo import DEMO_SIZES, TINY_MODEL_NAME
from cltm.store import Cache


def test_quick_demo_produces_results_and_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output, "the demo must say plainly that the tiny model's weights are random"
    assert str(out / "report" / "index.html") in result.output.replace("\n", "")

    size = DEMO_SIZES["quick"]
    manifest = pl.read_parquet(out / "corpus" / "manifest.parquet")
    assert set(manifest["language"]) == set(size.languages)
    assert set(manifest["gender"]) == {"female", "male"}

    caches = {name: Cache.open(out / "cache" / f"{name}.zarr") for name in (TINY_MODEL_NAME, "fbank")}
    assert caches[TINY_MODEL_NAME].n_layers == size.num_hidden_layers + 1  # hidden states incl. index 0
    assert caches["fbank"].n_layers == 1
    for cache in caches.values():
        assert cache.done.all(), "every demo utterance is extracted"

    runs = pl.read_parquet(out / "results" / "runs.parquet")
    matrices = pl.read_parquet(out / "results" / "matrices.parquet")
    assert (out / "results" / "properties.parquet").exists()
    for name, cache in caches.items():
        for task in ("gender", "speaker"):
            sub = matrices.filter((pl.col("model") == name) & (pl.col("task") == task))
            assert sorted(sub["layer"].unique()) == list(range(cache.n_layers)), (name, task)
            languages = set(sub["target"])
            assert len(languages) >= 2, (name, task, languages)
            assert sub.height == cache.n_layers * len(languages) ** 2  # a full square per layer
            diagonal = sub.filter(pl.col("target") == pl.col("donor"))
            assert (diagonal["cltm"] == 1.0).all()
            seeds = runs.filter((pl.col("model") == name) & (pl.col("task") == task))["seed"].unique()
            assert seeds.len() == size.seeds
    speaker_runs = runs.filter(pl.col("task") == "speaker")
    assert speaker_runs["auc"].is_between(0, 1).all() and speaker_runs["eer"].is_between(0, 1).all()

    index = out / "report" / "index.html"
    html = index.read_text()
    sources = re.findall(r'(?:src|href)="([^"#:]+)"', html)
    assert any(s.endswith(".png") for s in sources)
    missing = [s for s in sources if not (index.parent / s).exists()]
    assert not missing, f"report links that do not resolve: {missing[:5]}"

    # a second run reuses the corpus and caches and, with the same seeds, gives identical matrices
    from cltm.demo import run_demo

    manifest_mtime = (out / "corpus" / "manifest.parquet").stat().st_mtime_ns
    again = run_demo(out, quick=True, progress=False, log=None)
    assert again.manifest.stat().st_mtime_ns == manifest_mtime, "the corpus is reused, not re-synthesised"
    assert pl.read_parquet(again.results_dir / "matrices.parquet").equals(matrices)
