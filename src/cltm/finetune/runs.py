"""Bookkeeping of fine-tuning runs: which runs exist, the runs table on disk, resume and rank part files.

A run is one (condition, target, donor, seed) of one configuration. Results go to ``DIR/runs.parquet`` in the
CLTM engine's runs-table contract (:data:`cltm.transfer.tables.RUNS_COLUMNS`, ``source = "finetune"``),
written atomically after every finished run, so a crash loses at most the run in flight and a re-run skips
what is done. With several processes (``torchrun``/``accelerate launch``) each rank writes its own part file
``DIR/runs.parts/rank-XXXXX.parquet``; readers merge them, and rank 0 folds them into ``runs.parquet`` at the
end.

On request (``--predictions``) the per-utterance predictions of classification runs go to
``DIR/predictions.parquet`` (:data:`cltm.transfer.tables.PREDICTIONS_COLUMNS`, ``source = "finetune"``) the
same way, with part files ``DIR/predictions.parts/rank-XXXXX.parquet``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from cltm.fileio import stable_hash, write_parquet_atomic
from cltm.transfer.tables import PREDICTIONS_COLUMNS, RUNS_COLUMNS, conform

RUNS_FILE = "runs.parquet"
PARTS_DIR = "runs.parts"
PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS_PARTS_DIR = "predictions.parts"
#: Columns that identify one run inside one output directory (together with ``config_hash``).
RUN_KEY: tuple[str, ...] = ("task", "model", "layer", "probe", "condition", "target", "donor", "seed")
#: Columns that identify one prediction row (one utterance of one run).
PREDICTION_KEY: tuple[str, ...] = ("utt_id", *RUN_KEY, "fold")


class FinetuneError(ValueError):
    """A fine-tuning request that cannot run as asked; the message says why and what to do."""


config_hash = stable_hash


def empty_runs() -> pl.DataFrame:
    return pl.DataFrame(schema=RUNS_COLUMNS)


def merge_runs(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate runs tables; a run present twice keeps its last copy."""
    frames = [conform(f, RUNS_COLUMNS, keep_extra=True) for f in frames if f is not None and f.height]
    if not frames:
        return empty_runs()
    merged = pl.concat(frames, how="diagonal_relaxed")
    return merged.unique(subset=[*RUN_KEY, "config_hash"], keep="last", maintain_order=True)


def merge_predictions(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate predictions tables; an utterance of a run present twice keeps its last copy."""
    frames = [conform(f, PREDICTIONS_COLUMNS) for f in frames if f is not None and f.height]
    if not frames:
        return pl.DataFrame(schema=PREDICTIONS_COLUMNS)
    return pl.concat(frames).unique(subset=list(PREDICTION_KEY), keep="last", maintain_order=True)


def part_path(out_dir: str | Path, rank: int, parts_dir: str = PARTS_DIR) -> Path:
    return Path(out_dir) / parts_dir / f"rank-{rank:05d}.parquet"


def _read_with_parts(out: Path, file: str, parts_dir: str) -> list[pl.DataFrame]:
    frames = []
    if (out / file).exists():
        frames.append(pl.read_parquet(out / file))
    parts = out / parts_dir
    if parts.is_dir():
        frames.extend(pl.read_parquet(p) for p in sorted(parts.glob("rank-*.parquet")))
    return frames


def read_finetune_runs(out_dir: str | Path) -> pl.DataFrame:
    """All finished runs of a fine-tune output directory: ``runs.parquet`` plus any rank part files."""
    return merge_runs(_read_with_parts(Path(out_dir), RUNS_FILE, PARTS_DIR))


def read_finetune_predictions(out_dir: str | Path) -> pl.DataFrame:
    """All per-utterance predictions of a fine-tune output directory (``predictions.parquet`` + parts)."""
    return merge_predictions(_read_with_parts(Path(out_dir), PREDICTIONS_FILE, PREDICTIONS_PARTS_DIR))


def consolidate(out_dir: str | Path) -> pl.DataFrame:
    """Fold rank part files into ``runs.parquet`` and ``predictions.parquet`` (atomically), then remove
    them. Run on one process only."""
    out = Path(out_dir)
    runs = read_finetune_runs(out)
    write_parquet_atomic(runs, out / RUNS_FILE)
    if (out / PREDICTIONS_PARTS_DIR).is_dir():
        write_parquet_atomic(read_finetune_predictions(out), out / PREDICTIONS_FILE)
    for parts_dir in (PARTS_DIR, PREDICTIONS_PARTS_DIR):
        parts = out / parts_dir
        if parts.is_dir():
            for p in parts.glob("rank-*.parquet"):
                p.unlink()
            try:
                parts.rmdir()
            except OSError:
                pass
    return runs


def run_key(row: dict) -> tuple:
    return tuple(row[c] for c in RUN_KEY) + (row["config_hash"],)


def finished_keys(runs: pl.DataFrame) -> set[tuple]:
    if runs.height == 0:
        return set()
    return {run_key(r) for r in runs.select(*RUN_KEY, "config_hash").iter_rows(named=True)}


def predicted_keys(predictions: pl.DataFrame) -> set[tuple]:
    """The runs (``RUN_KEY`` values) that have per-utterance predictions."""
    if predictions.height == 0:
        return set()
    return set(predictions.select(*RUN_KEY).unique().iter_rows())


def check_same_config(
    runs: pl.DataFrame, *, task: str, model: str, probe: str, hash_: str, out_dir, layer: int | None = None
) -> None:
    """Refuse to mix two configurations of one (task, model, layer, probe) in one directory.

    ``matrix_from_runs`` averages every seed of a (task, model, layer, probe) group; runs with another lr, N
    or manifest would silently enter that average.
    """
    if runs.height == 0:
        return
    same = (pl.col("task") == task) & (pl.col("model") == model) & (pl.col("probe") == probe)
    if layer is not None:  # runs at another layer form their own matrix: they may share the directory
        same = same & (pl.col("layer") == layer)
    other = runs.filter(same & (pl.col("config_hash") != hash_))
    if other.height:
        at = "" if layer is None else f" at layer {layer}"
        raise FinetuneError(
            f"{out_dir} already holds {other.height} {probe} run(s){at} of task {task!r}, model {model!r} "
            f"made with another configuration (config_hash {other['config_hash'][0]}, this one is {hash_}): "
            "a different N, learning rate, precision, manifest, ... Use a new --out directory to keep the "
            "CLTMs comparable."
        )
