"""Listeners next to models: panel scores with two-way bootstrap intervals, agreement, cross-lingual drops.

Inputs: a validated listener table (:data:`cltm.human.listeners.LISTENER_COLUMNS`) and, optionally, model
predictions (:data:`cltm.transfer.tables.PREDICTIONS_COLUMNS`, from probes or fine-tuning). Outputs (the
fields of :class:`HumanComparison`, each a Parquet file):

* ``scores``: per listener group x stimulus language (``level = "group"``) and per stimulus language for the
  pooled native / non-native listeners (``level = "nativeness"``, group ``native`` / ``non-native``):
  accuracy, UAR and macro-F1 with two-way bootstrap intervals over listeners and utterances
  (:mod:`cltm.human.stats`). A listener is native for a stimulus when the group equals its language.
* ``listener_scores``: the same metrics per listener and stimulus language (no intervals), with the mean
  confidence and response time where the table has them.
* ``recall`` and ``confusion``: per-emotion recall and confusion counts for the same cells.
* ``model_scores``: accuracy / UAR / macro-F1 per model system and test language from the predictions
  (pooled over seeds and folds), with ``setting`` monolingual (trained on the test language, condition in
  ``mono_conditions``), cross-lingual (trained on one other language, condition in ``cross_conditions``),
  transfer (condition in ``transfer_conditions``, e.g. sequential: trained on j, then adapted on the test
  language) or other. By default only the utterances the listeners heard count (``same_utterances``).
* ``agreement``: Cohen's kappa and agreement rate (share of utterances with the same label) between each
  listener and each model system (``rater = "listener"``), and between the group's majority vote and the
  system (``rater = "majority"``), on the utterances both labelled. A system's label for an utterance is its
  majority prediction over seeds and folds; ties in either vote go to the class first in sorted order.
* ``utterance_agreement``: per utterance, group and system: the share of the group's listeners who gave the
  model's label (the per-utterance agreement rate), the majority vote, human and model correctness.
* ``drops``: cross-lingual drop per (from_language, stimulus language) pair: for listeners, the native
  group's accuracy on the stimulus language minus group from_language's; for a model (source, model, layer,
  probe), its monolingual accuracy on the stimulus language minus that of the model trained on from_language.
* ``rank_correlation``: per model (source, model, layer, probe), Spearman's rank correlation between the
  human and the model drops over the language pairs both have.

A model *system* is one (source, model, layer, probe, condition, train_languages). Column contracts and
the result object: :mod:`cltm.human.tables`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from cltm.human.labels import normalise_labels
from cltm.human.listeners import LISTENER_COLUMNS
from cltm.human.stats import (
    BootstrapSettings,
    percentile_interval,
    spearman,
    two_way_bootstrap,
)
from cltm.human.tables import (
    AGREEMENT_COLUMNS,
    CONFUSION_COLUMNS,
    DROPS_COLUMNS,
    LISTENER_SCORES_COLUMNS,
    METRICS,
    MODEL_KEYS,
    MODEL_SCORES_COLUMNS,
    RANK_COLUMNS,
    RECALL_COLUMNS,
    SCORES_COLUMNS,
    SYSTEM_KEYS,
    UTTERANCE_AGREEMENT_COLUMNS,
    HumanComparison,
    empty_table,
)
from cltm.probes.metrics import classification_metrics
from cltm.transfer.tables import PREDICTIONS_COLUMNS, conform

__all__ = [
    "CompareSettings",
    "best_layers",
    "compare",
    "kappa_table",
    "summary_lines",
]


@dataclass(frozen=True)
class CompareSettings:
    """How ``compare`` scores: bootstrap settings, which prediction conditions count as monolingual /
    cross-lingual / transfer (the engine's and fine-tuning's names by default), and whether models are
    scored only on the utterances the listeners heard."""

    bootstrap: BootstrapSettings = BootstrapSettings()
    mono_conditions: tuple[str, ...] = ("single",)
    cross_conditions: tuple[str, ...] = ("zero_shot",)
    transfer_conditions: tuple[str, ...] = ("sequential",)
    same_utterances: bool = True


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def kappa_table(pairs: pl.DataFrame, keys: list[str], a: str, b: str) -> pl.DataFrame:
    """Cohen's kappa and agreement rate of labels ``a`` vs ``b`` per group of ``keys`` (one polars pass).

    Same definition as :func:`cltm.human.stats.cohen_kappa` (NaN when the expected agreement is 1); returns
    ``keys`` + ``n_utts``, ``kappa``, ``agreement``.
    """
    base = pairs.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("n_utts"), (pl.col(a) == pl.col(b)).mean().alias("agreement")
    )
    share_a = pairs.group_by([*keys, a]).agg(pl.len().alias("_na")).rename({a: "_class"})
    share_b = pairs.group_by([*keys, b]).agg(pl.len().alias("_nb")).rename({b: "_class"})
    expected = (
        share_a.join(share_b, on=[*keys, "_class"], how="inner", nulls_equal=True)
        .group_by(keys)
        .agg((pl.col("_na").cast(pl.Float64) * pl.col("_nb")).sum().alias("_pe_num"))
    )
    out = base.join(expected, on=keys, how="left", nulls_equal=True).with_columns(
        (pl.col("_pe_num").fill_null(0.0) / pl.col("n_utts").cast(pl.Float64) ** 2).alias("_pe")
    )
    kappa = (
        pl.when((1 - pl.col("_pe")).abs() < 1e-12)
        .then(float("nan"))
        .otherwise((pl.col("agreement") - pl.col("_pe")) / (1 - pl.col("_pe")))
    )
    return out.with_columns(kappa.alias("kappa")).drop("_pe_num", "_pe")


def _vote(df: pl.DataFrame, keys: list[str], label: str, name: str) -> pl.DataFrame:
    """The most frequent ``label`` per group of ``keys``; ties go to the label first in sorted order."""
    return (
        df.group_by([*keys, label])
        .agg(pl.len().alias("_votes"))
        .sort([*keys, "_votes", label], descending=[False] * len(keys) + [True, False], nulls_last=True)
        .group_by(keys, maintain_order=True)
        .first()
        .select([*keys, pl.col(label).alias(name)])
    )


def _codes(values: pl.Series, classes: list[str]) -> np.ndarray:
    return values.replace_strict(classes, list(range(len(classes))), return_dtype=pl.Int64).to_numpy()


def _dense_ids(values: pl.Series) -> np.ndarray:
    return (values.rank("dense").cast(pl.Int64) - 1).to_numpy()


def _cell_rows(
    answers: pl.DataFrame,
    cell: dict,
    classes: list[str],
    boot: BootstrapSettings,
    rng: np.random.Generator,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Scores (with intervals), recall and confusion rows of one cell of answers."""
    true = answers["true"]
    response = answers["response"]
    point = classification_metrics(true.to_numpy(), response.to_numpy())
    reps = two_way_bootstrap(
        _dense_ids(answers["listener"]),
        _dense_ids(answers["utt_id"]),
        _codes(true, classes),
        _codes(response, classes),
        len(classes),
        boot,
        rng=rng,
    )
    sizes = {
        "n_listeners": answers["listener"].n_unique(),
        "n_utts": answers["utt_id"].n_unique(),
        "n_answers": answers.height,
    }
    scores = []
    for metric in METRICS:
        low, high = percentile_interval(reps[metric], boot.level)
        scores.append(
            {
                **cell,
                **sizes,
                "metric": metric,
                "value": point[metric],
                "ci_low": low,
                "ci_high": high,
                "ci_level": boot.level,
                "n_boot": boot.n_boot,
            }
        )
    counts = answers.group_by("true", "response").agg(pl.len().alias("count"))
    confusion = [
        {**cell, "true": t, "pred": p, "count": c} for t, p, c in counts.sort("true", "response").iter_rows()
    ]
    support = answers.group_by("true").agg(pl.len().alias("n"), pl.col("correct").mean().alias("recall"))
    recall = [{**cell, "class": t, "n": n, "recall": r} for t, n, r in support.sort("true").iter_rows()]
    return scores, recall, confusion


def _frame(rows: list[dict], columns: dict[str, pl.DataType]) -> pl.DataFrame:
    if not rows:
        return empty_table(columns)
    return conform(pl.DataFrame(rows, infer_schema_length=None), columns)


# ----------------------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------------------


def _human_tables(
    listeners: pl.DataFrame,
    classes: list[str],
    boot: BootstrapSettings,
    progress: Callable[[int, int], None] | None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    task = listeners["task"][0]
    cells: list[tuple[dict, pl.DataFrame]] = []
    for (group, language), part in listeners.sort("group", "language").group_by(
        "group", "language", maintain_order=True
    ):
        cell = {
            "task": task,
            "level": "group",
            "group": group,
            "language": language,
            "native": part["native"][0],
        }
        cells.append((cell, part))
    for (language, native), part in listeners.sort("language", "native", descending=[False, True]).group_by(
        "language", "native", maintain_order=True
    ):
        name = "native" if native else "non-native"
        cells.append(
            (
                {"task": task, "level": "nativeness", "group": name, "language": language, "native": native},
                part,
            )
        )
    rng = np.random.default_rng(boot.seed)
    scores, recall, confusion = [], [], []
    for done, (cell, part) in enumerate(cells, start=1):
        s, r, c = _cell_rows(part, cell, classes, boot, rng)
        scores += s
        recall += r
        confusion += c
        if progress is not None:
            progress(done, len(cells))
    return (
        _frame(scores, SCORES_COLUMNS),
        _frame(recall, RECALL_COLUMNS),
        _frame(confusion, CONFUSION_COLUMNS),
    )


def _listener_scores(listeners: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for (listener, group, language), part in listeners.sort("listener", "language").group_by(
        "listener", "group", "language", maintain_order=True
    ):
        metrics = classification_metrics(part["true"].to_numpy(), part["response"].to_numpy())
        rows.append(
            {
                "task": part["task"][0],
                "listener": listener,
                "group": group,
                "language": language,
                "native": part["native"][0],
                "n_answers": part.height,
                **{m: metrics[m] for m in METRICS},
                "mean_confidence": part["confidence"].mean(),
                "mean_rt": part["rt"].mean(),
            }
        )
    return _frame(rows, LISTENER_SCORES_COLUMNS)


def _prepare_predictions(
    predictions: pl.DataFrame, listeners: pl.DataFrame, settings: CompareSettings
) -> pl.DataFrame:
    task = listeners["task"][0]
    preds = conform(predictions, PREDICTIONS_COLUMNS)
    preds = preds.filter(pl.col("task").is_null() | (pl.col("task") == task))
    preds = preds.with_columns(normalise_labels(task, preds["true"]), normalise_labels(task, preds["pred"]))
    heard = listeners.select(
        "utt_id", pl.col("language").alias("_lang"), pl.col("true").alias("_true")
    ).unique("utt_id")
    preds = preds.join(heard, on="utt_id", how="left")
    mismatch = preds.filter(pl.col("_true").is_not_null() & (pl.col("_true") != pl.col("true")))
    if mismatch.height:
        examples = ", ".join(
            f"{u!r} (predictions {t!r}, manifest {m!r})"
            for u, t, m in mismatch.select("utt_id", "true", "_true").unique("utt_id").head(5).iter_rows()
        )
        raise ValueError(
            f"{mismatch['utt_id'].n_unique()} utterance(s) have another true label in the predictions "
            f"than in the listener table: {examples}; use predictions made on the same manifest"
        )
    # the test language is the run's target; the manifest's language where a table leaves it out
    preds = preds.with_columns(pl.coalesce("target", "_lang").alias("target"))
    if settings.same_utterances:
        preds = preds.filter(pl.col("_true").is_not_null())
    return preds.drop("_lang", "_true").with_columns(pl.col("source").fill_null("model"))


def _setting(settings: CompareSettings) -> pl.Expr:
    single = ~pl.col("train_languages").str.contains(r"[+>]")
    return (
        pl.when(
            pl.col("condition").is_in(list(settings.mono_conditions))
            & (pl.col("train_languages") == pl.col("language"))
        )
        .then(pl.lit("monolingual"))
        .when(
            pl.col("condition").is_in(list(settings.cross_conditions))
            & single
            & (pl.col("train_languages") != pl.col("language"))
        )
        .then(pl.lit("cross-lingual"))
        .when(pl.col("condition").is_in(list(settings.transfer_conditions)))
        .then(pl.lit("transfer"))
        .otherwise(pl.lit("other"))
    )


def _model_scores(preds: pl.DataFrame, task: str, settings: CompareSettings) -> pl.DataFrame:
    rows = []
    keys = [*SYSTEM_KEYS, "target"]
    for key, part in preds.sort(keys, nulls_last=True).group_by(keys, maintain_order=True):
        metrics = classification_metrics(part["true"].to_numpy(), part["pred"].to_numpy())
        rows.append(
            {
                "task": task,
                **dict(zip(SYSTEM_KEYS, key[:-1], strict=True)),
                "language": key[-1],
                "n_utts": part["utt_id"].n_unique(),
                **{m: metrics[m] for m in METRICS},
            }
        )
    if not rows:
        return empty_table(MODEL_SCORES_COLUMNS)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return conform(frame.with_columns(_setting(settings).alias("setting")), MODEL_SCORES_COLUMNS)


def _agreement(listeners: pl.DataFrame, preds: pl.DataFrame, task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    model = _vote(preds, [*SYSTEM_KEYS, "utt_id"], "pred", "model_pred")
    per_listener = listeners.select(
        "group", "language", "native", "listener", "utt_id", "true", "response"
    ).join(model, on="utt_id", how="inner")
    if per_listener.is_empty():
        return empty_table(AGREEMENT_COLUMNS), empty_table(UTTERANCE_AGREEMENT_COLUMNS)
    cell = ["group", "language", "native"]
    listener_kappa = kappa_table(per_listener, [*cell, "listener", *SYSTEM_KEYS], "response", "model_pred")
    majority = _vote(listeners, ["group", "language", "native", "utt_id"], "response", "majority")
    per_utt = (
        per_listener.group_by([*cell, "utt_id", *SYSTEM_KEYS])
        .agg(
            pl.col("true").first(),
            pl.col("model_pred").first(),
            pl.len().cast(pl.Int64).alias("n_listeners"),
            (pl.col("response") == pl.col("model_pred")).mean().alias("agreement_rate"),
            (pl.col("response") == pl.col("true")).mean().alias("human_accuracy"),
        )
        .join(majority, on=[*cell, "utt_id"], how="left", nulls_equal=True)
        .with_columns(
            (pl.col("model_pred") == pl.col("true")).alias("model_correct"), pl.lit(task).alias("task")
        )
    )
    majority_kappa = kappa_table(per_utt, [*cell, *SYSTEM_KEYS], "majority", "model_pred")
    agreement = pl.concat(
        [
            listener_kappa.with_columns(pl.lit("listener").alias("rater")),
            majority_kappa.with_columns(
                pl.lit("majority").alias("rater"), pl.lit(None, pl.String).alias("listener")
            ),
        ],
        how="diagonal_relaxed",
    ).with_columns(pl.lit(task).alias("task"))
    order = ["group", "language", "rater", "listener", *SYSTEM_KEYS]
    return (
        conform(agreement, AGREEMENT_COLUMNS).sort(order, nulls_last=True),
        conform(per_utt, UTTERANCE_AGREEMENT_COLUMNS).sort(
            ["group", "utt_id", *SYSTEM_KEYS], nulls_last=True
        ),
    )


def _drops(scores: pl.DataFrame, model_scores: pl.DataFrame, task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    groups = scores.filter((pl.col("level") == "group") & (pl.col("metric") == "accuracy")).select(
        pl.col("group").alias("from_language"), "language", "native", pl.col("value").alias("accuracy")
    )
    native = groups.filter("native").select("language", pl.col("accuracy").alias("reference_accuracy"))
    human = (
        groups.filter(~pl.col("native"))
        .join(native, on="language", how="inner")
        .with_columns(
            (pl.col("reference_accuracy") - pl.col("accuracy")).alias("drop"),
            pl.lit("human").alias("side"),
            pl.lit(task).alias("task"),
        )
    )
    model_parts = []
    if not model_scores.is_empty():
        # pooled over conditions of the same kind (e.g. several seeds' tables): mean per pair
        mono = (
            model_scores.filter(pl.col("setting") == "monolingual")
            .group_by([*MODEL_KEYS, "language"])
            .agg(pl.col("accuracy").mean().alias("reference_accuracy"))
        )
        cross = (
            model_scores.filter(pl.col("setting") == "cross-lingual")
            .group_by([*MODEL_KEYS, pl.col("train_languages").alias("from_language"), "language"])
            .agg(pl.col("accuracy").mean())
        )
        model_parts.append(
            cross.join(mono, on=[*MODEL_KEYS, "language"], how="inner", nulls_equal=True).with_columns(
                (pl.col("reference_accuracy") - pl.col("accuracy")).alias("drop"),
                pl.lit("model").alias("side"),
                pl.lit(task).alias("task"),
            )
        )
    drops = conform(pl.concat([human, *model_parts], how="diagonal_relaxed"), DROPS_COLUMNS).sort(
        ["side", *MODEL_KEYS, "language", "from_language"], nulls_last=True
    )
    human_d = drops.filter(pl.col("side") == "human").select(
        pl.col("from_language").str.to_lowercase().alias("_from"),
        pl.col("language").str.to_lowercase().alias("_to"),
        pl.col("drop").alias("human_drop"),
    )
    rows = []
    model_d = drops.filter(pl.col("side") == "model").with_columns(
        pl.col("from_language").str.to_lowercase().alias("_from"),
        pl.col("language").str.to_lowercase().alias("_to"),
    )
    for key, part in model_d.group_by(list(MODEL_KEYS), maintain_order=True):
        joined = part.join(human_d, on=["_from", "_to"], how="inner")
        rows.append(
            {
                "task": task,
                **dict(zip(MODEL_KEYS, key, strict=True)),
                "n_pairs": joined.height,
                "spearman": spearman(joined["human_drop"].to_numpy(), joined["drop"].to_numpy())
                if joined.height
                else float("nan"),
            }
        )
    rank = _frame(rows, RANK_COLUMNS).sort(list(MODEL_KEYS), nulls_last=True)
    return drops, rank


def compare(
    listeners: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    settings: CompareSettings = CompareSettings(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> HumanComparison:
    """Score the listener panel and compare it with model predictions on the same utterances.

    ``listeners``: a validated listener table (``cltm human import``); ``predictions``: a predictions table
    (None: listeners only). ``progress(done, total)`` is called after each bootstrapped cell.
    """
    listeners = conform(listeners, LISTENER_COLUMNS)
    if listeners.is_empty():
        raise ValueError("the listener table has no answers")
    tasks = listeners["task"].unique().to_list()
    if len(tasks) != 1:
        raise ValueError(f"the listener table mixes tasks {tasks}; compare one task at a time")
    task = tasks[0]
    classes = sorted(set(listeners["true"].to_list()) | set(listeners["response"].to_list()))
    scores, recall, confusion = _human_tables(listeners, classes, settings.bootstrap, progress)
    result = HumanComparison(
        scores=scores, listener_scores=_listener_scores(listeners), recall=recall, confusion=confusion
    )
    if predictions is not None:
        preds = _prepare_predictions(predictions, listeners, settings)
        if preds.is_empty():
            raise ValueError(
                "no prediction is for an utterance the listeners heard (check the task and that the "
                "predictions were made on the same manifest)"
            )
        result.model_scores = _model_scores(preds, task, settings)
        result.agreement, result.utterance_agreement = _agreement(listeners, preds, task)
    result.drops, result.rank_correlation = _drops(scores, result.model_scores, task)
    return result


def best_layers(model_scores: pl.DataFrame, metric: str = "accuracy") -> pl.DataFrame:
    """Per (source, model, probe): the layer with the highest mean monolingual ``metric`` over languages
    (ties to the lower layer). Columns source, model, probe, layer, ``metric``."""
    mono = model_scores.filter(pl.col("setting") == "monolingual")
    if mono.is_empty():
        return pl.DataFrame(
            schema={
                "source": pl.String,
                "model": pl.String,
                "probe": pl.String,
                "layer": pl.Int64,
                metric: pl.Float64,
            }
        )
    keys = ["source", "model", "probe"]
    return (
        mono.group_by([*keys, "layer"])
        .agg(pl.col(metric).mean())
        .sort([*keys, metric, "layer"], descending=[False, False, False, True, False], nulls_last=True)
        .group_by(keys, maintain_order=True)
        .first()
        .sort(keys)
    )


def summary_lines(result: HumanComparison) -> list[str]:
    """Plain-text summary: panel accuracy per cell, agreement and rank correlation at the best layer."""
    lines = []
    scores = result.scores.filter(pl.col("metric") == "accuracy")
    for level, title in (("group", "listener group"), ("nativeness", "native / non-native")):
        part = scores.filter(pl.col("level") == level)
        if part.is_empty():
            continue
        lines.append(
            f"accuracy per {title} x stimulus language ({part['ci_level'][0]:.0%} two-way bootstrap CI):"
        )
        for row in part.iter_rows(named=True):
            mark = " (native)" if row["native"] and level == "group" else ""
            lines.append(
                f"  {row['group']:>12} on {row['language']:<8}{mark:9} {row['value']:.3f} "
                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]  "
                f"{row['n_listeners']} listeners, {row['n_utts']} utts"
            )
    best = best_layers(result.model_scores)
    for row in best.iter_rows(named=True):
        key = (
            (pl.col("source") == row["source"])
            & (pl.col("model") == row["model"])
            & (pl.col("probe") == row["probe"])
        )
        at_best = key & (pl.col("layer") == row["layer"])
        lines.append(
            f"model {row['model']} ({row['source']}, {row['probe']}): best layer {row['layer']} "
            f"(mean monolingual accuracy {row['accuracy']:.3f})"
        )
        agree = result.agreement.filter(at_best & (pl.col("rater") == "majority"))
        if not agree.is_empty():
            lines.append(
                f"  majority-vote vs model: mean kappa {agree['kappa'].mean():.3f}, "
                f"mean agreement {agree['agreement'].mean():.3f} "
                f"over {agree.height} (group, language, system) rows"
            )
        rank = result.rank_correlation.filter(at_best)
        for r in rank.iter_rows(named=True):
            few = " (too few pairs to interpret)" if r["n_pairs"] < 4 else ""
            lines.append(
                f"  Spearman(human drop, model drop) = {r['spearman']:.3f} over {r['n_pairs']} language pairs"
                + few
            )
    return lines
