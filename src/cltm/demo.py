"""The whole pipeline on the demo: synthetic corpus -> tiny encoder + fbank -> caches -> CLTMs -> report.

Everything here is offline. The tiny encoder is a small HuBERT with *random* (seed-fixed) weights: its layers
carry no learned knowledge of speech, so its CLTMs only show what a random projection of the signal keeps. The
log-mel ``fbank`` front-end is the classical baseline beside it. Real studies pass a real model id to
``cltm extract``.

Each step writes its artefact under ``out_dir`` and is skipped when that artefact is already complete, so a
demo that was interrupted resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

__all__ = ["DEMO_SIZES", "DemoSize", "DemoSummary", "run_demo"]


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: corpus size, tiny-model size and sweep settings."""

    languages: tuple[str, ...]
    speakers_per_gender: int
    utts_per_speaker: int
    hidden_size: int
    num_hidden_layers: int
    gender_n: int  # N per class
    speaker_n: int  # N utterances
    seeds: int


DEMO_SIZES: dict[str, DemoSize] = {
    "full": DemoSize(
        languages=("en", "de", "es", "it", "pl", "cs"),
        speakers_per_gender=6,
        utts_per_speaker=10,
        hidden_size=64,
        num_hidden_layers=4,
        # small N: the own-data gain Perf(i+i) - Perf(i) is largest on the steep part of the learning curve,
        # so fewer cells are unstable than at a larger N where Perf saturates
        gender_n=4,
        speaker_n=8,
        seeds=10,
    ),
    "quick": DemoSize(
        languages=("en", "de", "es", "pl"),
        speakers_per_gender=3,
        utts_per_speaker=8,
        hidden_size=32,
        num_hidden_layers=2,
        gender_n=3,
        speaker_n=6,
        seeds=3,
    ),
}

TINY_MODEL_NAME = "tiny-hubert-random"


@dataclass
class DemoSummary:
    """Where the demo put things, and what it measured on the way."""

    out_dir: Path
    manifest: Path
    caches: dict[str, Path]
    results_dir: Path
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: pl.DataFrame = field(default_factory=pl.DataFrame)


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def run_demo(
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> DemoSummary:
    """Run synthesis, extraction (tiny random HuBERT and fbank), gender and speaker CLTMs and the report."""
    import time

    from transformers.utils import logging as transformers_logging

    from cltm.corpus.synth import synthesize_corpus
    from cltm.extract import FBANK_ID, build_tiny_model, extract
    from cltm.progress import counting_progress
    from cltm.report import build_report
    from cltm.store import Cache
    from cltm.transfer import ExecutionSettings, MatrixResult, PlanSettings, run_matrix

    # transformers' own per-file bars would interleave with ours
    transformers_logging.disable_progress_bar()
    size = DEMO_SIZES["quick" if quick else "full"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    corpus_dir = out / "corpus"
    manifest = corpus_dir / "manifest.parquet"
    if manifest.exists():
        _say(log, f"[1/5] corpus: reusing {manifest}")
    else:
        _say(log, f"[1/5] corpus: synthesising {len(size.languages)} languages (espeak-ng) in {corpus_dir}")
        manifest = synthesize_corpus(
            corpus_dir,
            languages=size.languages,
            speakers_per_gender=size.speakers_per_gender,
            utts_per_speaker=size.utts_per_speaker,
            seed=seed,
            progress=progress,
        )
    seconds["corpus"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_dir = out / "model" / TINY_MODEL_NAME
    if not (model_dir / "config.json").exists():
        build_tiny_model(
            model_dir,
            arch="hubert",
            seed=seed,
            # base-style (group norm over time in the first conv, like HuBERT base and mHuBERT-147), and
            # weights 5x the usual init scale so the random blocks differ from one another: with std 0.02
            # every layer was near the identity (gender F1 0.54 at every layer, every cell unstable); with
            # these the layer curves differ and a third of the gender cells are stable
            norm="group",
            initializer_range=0.1,
            hidden_size=size.hidden_size,
            num_hidden_layers=size.num_hidden_layers,
            num_attention_heads=4 if size.hidden_size >= 64 else 2,
            intermediate_size=2 * size.hidden_size,
        )
    _say(
        log,
        f"[2/5] model: {TINY_MODEL_NAME} ({size.num_hidden_layers} blocks, hidden {size.hidden_size}) at "
        f"{model_dir}. NOTE: its weights are RANDOM (fixed seed), not trained: its layers show what a random "
        "encoder keeps, not what HuBERT learns. The fbank (log-mel) baseline runs beside it.",
    )
    seconds["model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    caches = {name: out / "cache" / f"{name}.zarr" for name in (TINY_MODEL_NAME, "fbank")}
    sources = {TINY_MODEL_NAME: model_dir, "fbank": FBANK_ID}
    for name, cache_path in caches.items():
        _say(log, f"[3/5] extract: {name} -> {cache_path}")
        from cltm.extract.settings import BatchSettings, ExtractSettings, ModelSettings

        settings = ExtractSettings(model=ModelSettings(device="cpu"), batching=BatchSettings(num_workers=0))
        with counting_progress("audio s", title=f"extract {name}", enabled=progress) as bar:
            task = bar.add_task(name, total=None)
            summary = extract(
                manifest,
                sources[name],
                cache_path,
                settings=settings,
                progress=lambda done, total, b=bar, t=task: b.update(t, completed=done, total=total),
            )
        if summary.n_failed:
            _say(log, f"      {summary.n_failed} utterance(s) failed; see `cltm store info {cache_path}`")
    seconds["extract"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    results = []
    for name, cache_path in caches.items():
        cache = Cache.open(cache_path)
        for task, n in (("gender", size.gender_n), ("speaker", size.speaker_n)):
            _say(log, f"[4/5] CLTM: {task} on {name}, {cache.n_layers} layer(s), N={n}, {size.seeds} seeds")
            with counting_progress("layers", title=f"CLTM {task}", enabled=progress, transient=True) as bar:
                bar_task = bar.add_task("layers", total=cache.n_layers)
                results.append(
                    run_matrix(
                        cache,
                        task=task,
                        plan=PlanSettings(n=n, seeds=size.seeds),
                        execution=ExecutionSettings(
                            model=name, progress=lambda k, b=bar, t=bar_task: b.advance(t, k)
                        ),
                    )
                )
    combined = MatrixResult.concat(results)
    results_dir = combined.write(out / "results")
    skipped = combined.skipped
    seconds["matrix"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _say(log, f"[5/5] report -> {out / 'report'}")
    report = build_report(results_dir, out / "report")
    seconds["report"] = time.perf_counter() - t0

    return DemoSummary(
        out_dir=out,
        manifest=manifest,
        caches=caches,
        results_dir=results_dir,
        report=report,
        seconds=seconds,
        skipped=skipped,
    )
