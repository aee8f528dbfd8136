"""Column contracts of the listener-vs-model comparison, the result object, and its readers/writers.

One Parquet file per table (``COMPARISON_FILES``: field -> file name and column contract); what each table
holds is described in :mod:`cltm.human.compare`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import polars as pl

from cltm.fileio import write_parquet_atomic
from cltm.transfer.tables import PREDICTIONS_COLUMNS, conform

__all__ = [
    "AGREEMENT_COLUMNS",
    "COMPARISON_FILES",
    "CONFUSION_COLUMNS",
    "DROPS_COLUMNS",
    "HumanComparison",
    "LISTENER_SCORES_COLUMNS",
    "METRICS",
    "MODEL_KEYS",
    "MODEL_SCORES_COLUMNS",
    "RANK_COLUMNS",
    "RECALL_COLUMNS",
    "SCORES_COLUMNS",
    "SYSTEM_KEYS",
    "UTTERANCE_AGREEMENT_COLUMNS",
    "empty_table",
    "read_comparison",
    "read_predictions",
]

#: One model system: the predictions of one trained configuration (pooled over seeds and folds).
SYSTEM_KEYS: tuple[str, ...] = ("source", "model", "layer", "probe", "condition", "train_languages")
#: One model (for drops and rank correlations): a system without condition and training languages.
MODEL_KEYS: tuple[str, ...] = ("source", "model", "layer", "probe")
METRICS: tuple[str, ...] = ("accuracy", "uar", "f1")

_CELL = {
    "task": pl.String(),
    "level": pl.String(),
    "group": pl.String(),
    "language": pl.String(),
    "native": pl.Boolean(),
}
_SYSTEM = {
    "source": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "condition": pl.String(),
    "train_languages": pl.String(),
}

SCORES_COLUMNS: dict[str, pl.DataType] = {
    **_CELL,
    "n_listeners": pl.Int64(),
    "n_utts": pl.Int64(),
    "n_answers": pl.Int64(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "ci_level": pl.Float64(),
    "n_boot": pl.Int64(),
}
LISTENER_SCORES_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "listener": pl.String(),
    "group": pl.String(),
    "language": pl.String(),
    "native": pl.Boolean(),
    "n_answers": pl.Int64(),
    **{m: pl.Float64() for m in METRICS},
    "mean_confidence": pl.Float64(),
    "mean_rt": pl.Float64(),
}
RECALL_COLUMNS: dict[str, pl.DataType] = {
    **_CELL,
    "class": pl.String(),
    "n": pl.Int64(),
    "recall": pl.Float64(),
}
CONFUSION_COLUMNS: dict[str, pl.DataType] = {
    **_CELL,
    "true": pl.String(),
    "pred": pl.String(),
    "count": pl.Int64(),
}
MODEL_SCORES_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    **_SYSTEM,
    "language": pl.String(),
    "setting": pl.String(),
    "n_utts": pl.Int64(),
    **{m: pl.Float64() for m in METRICS},
}
AGREEMENT_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "group": pl.String(),
    "language": pl.String(),
    "native": pl.Boolean(),
    "rater": pl.String(),
    "listener": pl.String(),
    **_SYSTEM,
    "n_utts": pl.Int64(),
    "kappa": pl.Float64(),
    "agreement": pl.Float64(),
}
UTTERANCE_AGREEMENT_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "group": pl.String(),
    "utt_id": pl.String(),
    "language": pl.String(),
    "native": pl.Boolean(),
    **_SYSTEM,
    "true": pl.String(),
    "model_pred": pl.String(),
    "majority": pl.String(),
    "n_listeners": pl.Int64(),
    "agreement_rate": pl.Float64(),
    "human_accuracy": pl.Float64(),
    "model_correct": pl.Boolean(),
}
DROPS_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "side": pl.String(),
    "source": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "from_language": pl.String(),
    "language": pl.String(),
    "reference_accuracy": pl.Float64(),
    "accuracy": pl.Float64(),
    "drop": pl.Float64(),
}
RANK_COLUMNS: dict[str, pl.DataType] = {
    "task": pl.String(),
    "source": pl.String(),
    "model": pl.String(),
    "layer": pl.Int64(),
    "probe": pl.String(),
    "n_pairs": pl.Int64(),
    "spearman": pl.Float64(),
}

#: field of HumanComparison -> (file name, column contract)
COMPARISON_FILES: dict[str, tuple[str, dict[str, pl.DataType]]] = {
    "scores": ("human_scores.parquet", SCORES_COLUMNS),
    "listener_scores": ("listener_scores.parquet", LISTENER_SCORES_COLUMNS),
    "recall": ("human_recall.parquet", RECALL_COLUMNS),
    "confusion": ("human_confusion.parquet", CONFUSION_COLUMNS),
    "model_scores": ("model_scores.parquet", MODEL_SCORES_COLUMNS),
    "agreement": ("agreement.parquet", AGREEMENT_COLUMNS),
    "utterance_agreement": ("utterance_agreement.parquet", UTTERANCE_AGREEMENT_COLUMNS),
    "drops": ("drops.parquet", DROPS_COLUMNS),
    "rank_correlation": ("rank_correlation.parquet", RANK_COLUMNS),
}


def empty_table(columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with exactly these columns."""
    return pl.DataFrame(schema=columns)


@dataclass
class HumanComparison:
    """The tables of a listener-vs-model comparison (module docstring; contracts in ``COMPARISON_FILES``)."""

    scores: pl.DataFrame = field(default_factory=lambda: empty_table(SCORES_COLUMNS))
    listener_scores: pl.DataFrame = field(default_factory=lambda: empty_table(LISTENER_SCORES_COLUMNS))
    recall: pl.DataFrame = field(default_factory=lambda: empty_table(RECALL_COLUMNS))
    confusion: pl.DataFrame = field(default_factory=lambda: empty_table(CONFUSION_COLUMNS))
    model_scores: pl.DataFrame = field(default_factory=lambda: empty_table(MODEL_SCORES_COLUMNS))
    agreement: pl.DataFrame = field(default_factory=lambda: empty_table(AGREEMENT_COLUMNS))
    utterance_agreement: pl.DataFrame = field(
        default_factory=lambda: empty_table(UTTERANCE_AGREEMENT_COLUMNS)
    )
    drops: pl.DataFrame = field(default_factory=lambda: empty_table(DROPS_COLUMNS))
    rank_correlation: pl.DataFrame = field(default_factory=lambda: empty_table(RANK_COLUMNS))

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write every table as ``out_dir/<file>`` (atomic, conformed to its contract)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, (file, columns) in COMPARISON_FILES.items():
            write_parquet_atomic(conform(getattr(self, name), columns), out / file)
        return out


def read_comparison(directory: str | os.PathLike[str]) -> HumanComparison:
    """Read the tables written by :meth:`HumanComparison.write` (``cltm human compare --out DIR``)."""
    directory = Path(directory)
    if not (directory / COMPARISON_FILES["scores"][0]).is_file():
        raise FileNotFoundError(
            f"{directory}: no {COMPARISON_FILES['scores'][0]}; write it with `cltm human compare --out DIR`"
        )
    tables = {}
    for f in fields(HumanComparison):
        file, columns = COMPARISON_FILES[f.name]
        path = directory / file
        tables[f.name] = conform(pl.read_parquet(path), columns) if path.is_file() else empty_table(columns)
    return HumanComparison(**tables)


def read_predictions(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read ``predictions.parquet`` (a file, or a results directory holding one), checked against the
    predictions contract's required columns."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; write predictions with `cltm probe|matrix ... --predictions` or "
            "`cltm finetune`"
        )
    df = pl.read_parquet(path)
    missing = [c for c in ("utt_id", "true", "pred") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a predictions table (missing column(s) {', '.join(missing)})")
    return conform(df, PREDICTIONS_COLUMNS)
