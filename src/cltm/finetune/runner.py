"""Fine-tune chosen CLTM cells the published way, on exactly the probe sweep's subsets and test sets.

For every cell ``target:donor`` and seed, the chosen conditions (:data:`FINETUNE_CONDITIONS`): by default the
CLTM's three, ``single`` (N of the target; the monolingual model), ``self`` (2N of the target) and ``pair``
(N of the target + N of the donor); also ``zero_shot`` (N of the donor only, tested on the target) and
``sequential`` (train on N of the donor, then adapt that model on N of the target). Subsets, test sets and
trial lists come from :func:`cltm.transfer.plan_conditions`, the single source both the probe sweep and this
path use, so a fine-tuned cell and a probed cell are measured on the same rows (``sequential``'s two stages
are the donor's and the target's own N rows). ``single``/``self`` of a target run once per seed however many
cells share the target. Each run starts from a fresh copy of the pre-trained (possibly truncated) encoder.

Processes: under ``torchrun``/``accelerate launch`` with W processes, rank r takes pending runs r, r+W, ...
(each run is independent, so there is no gradient synchronisation); every rank writes its own part file and
rank 0 merges them.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from transformers import set_seed

from cltm.finetune.model import PooledEncoderClassifier, truncate_encoder
from cltm.finetune.peft_modes import apply_peft
from cltm.finetune.runs import (
    PARTS_DIR,
    PREDICTIONS_FILE,
    PREDICTIONS_PARTS_DIR,
    RUN_KEY,
    RUNS_FILE,
    FinetuneError,
    check_same_config,
    config_hash,
    consolidate,
    finished_keys,
    merge_predictions,
    merge_runs,
    part_path,
    predicted_keys,
    read_finetune_predictions,
    read_finetune_runs,
    run_key,
    write_parquet_atomic,
)
from cltm.finetune.train import TrainLog, TrainSettings, embed_utterances, predict_logits, train_classifier
from cltm.progress import counting_progress
from cltm.tasks import VERIFICATION_TASKS
from cltm.transfer.conditions import ConditionPlan

#: Every condition a fine-tune run can have, in run order. The CLTM needs the first three.
FINETUNE_CONDITIONS: tuple[str, ...] = ("single", "self", "pair", "zero_shot", "sequential")
CLTM_CONDITIONS: tuple[str, ...] = ("single", "self", "pair")


@dataclass(frozen=True, eq=False)
class Stage:
    """One training stage of a run: manifest rows and the languages they come from."""

    rows: np.ndarray
    languages: tuple[str, ...]


@dataclass(eq=False)
class SequentialPlan(ConditionPlan):
    """A ``sequential`` run: ``stages`` train one after the other, each from the previous stage's weights;
    ``train_rows`` holds every stage's rows (so ``n_train`` counts both)."""

    stages: tuple[Stage, ...] = ()


def training_stages(plan: ConditionPlan) -> list[Stage]:
    """The stages a plan trains in order: one for the CLTM conditions and ``zero_shot``, two for
    ``sequential`` (the donor's N, then the target's N)."""
    if isinstance(plan, SequentialPlan):
        return list(plan.stages)
    languages = {
        "single": (plan.target,),
        "self": (plan.target,),
        "pair": (plan.target, plan.donor),
        "zero_shot": (plan.donor,),
    }
    if plan.condition not in languages:
        raise FinetuneError(f"condition {plan.condition!r} has no training recipe here")
    return [Stage(np.asarray(plan.train_rows, dtype=np.int64), languages[plan.condition])]


def train_languages(plan: ConditionPlan) -> str:
    """The ``train_languages`` value of a plan's predictions: "+" inside a stage, ">" between stages
    (``en`` single, ``en+de`` pair, ``de`` zero-shot, ``de>en`` sequential)."""
    return ">".join("+".join(stage.languages) for stage in training_stages(plan))


def parse_conditions(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"single,zero_shot,sequential"`` -> a tuple in run order; unknown names raise FinetuneError."""
    names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else [str(c) for c in spec]
    names = [c for c in names if c]
    unknown = [c for c in names if c not in FINETUNE_CONDITIONS]
    if unknown or not names:
        raise FinetuneError(
            f"unknown condition(s) {unknown or '(none given)'}; choose from {', '.join(FINETUNE_CONDITIONS)}"
        )
    return tuple(c for c in FINETUNE_CONDITIONS if c in names)


# --- choosing cells
def all_cells(languages: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered (target, donor) pair of distinct languages (``--cells all``)."""
    langs = sorted(set(languages), key=str)
    if len(langs) < 2:
        raise FinetuneError(f"--cells all needs at least two languages; the manifest has {langs}")
    return [(t, d) for t in langs for d in langs if t != d]


def parse_cells(spec: str) -> list[tuple[str, str]]:
    """``"en:es,en:de"`` -> ``[("en", "es"), ("en", "de")]`` (order kept, duplicates dropped)."""
    cells: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise FinetuneError(
                f"cell {item!r} is not TARGET:DONOR (e.g. `en:es`); cells are comma-separated"
            )
        if parts[0] == parts[1]:
            raise FinetuneError(
                f"cell {item!r}: target and donor are the same language (the diagonal is 1 by "
                "definition); name a different donor"
            )
        if tuple(parts) not in cells:
            cells.append((parts[0], parts[1]))
    if not cells:
        raise FinetuneError(f"no cells in {spec!r}; write them as TARGET:DONOR,TARGET:DONOR")
    return cells


def _one_matrix_family(
    matrix_dir: str | Path, *, task: str, model: str | None, probe: str | None
) -> pl.DataFrame:
    """The ``matrices.parquet`` rows of one (task, model, probe) of a probe sweep's output directory."""
    from cltm.transfer.tables import MatrixResult, ResultsError

    try:
        result = MatrixResult.read(matrix_dir)
    except ResultsError as err:  # a wrong --from-matrix is a usage error, like every other bad option
        raise FinetuneError(f"--from-matrix: {err}") from None
    matrices = result.matrices.filter(pl.col("task") == task)
    if matrices.height == 0:
        raise FinetuneError(f"{matrix_dir}/matrices.parquet has no rows for task {task!r}")
    for column, wanted in (("model", model), ("probe", probe)):
        if wanted is not None:
            matrices = matrices.filter(pl.col(column) == wanted)
        values = matrices[column].unique().to_list()
        if len(values) > 1:
            raise FinetuneError(
                f"{matrix_dir}: several {column}s for task {task!r} ({', '.join(map(str, values))});"
                f" pick one ({column}=..., on the command line --matrix-{column})"
            )
        if not values:
            raise FinetuneError(f"{matrix_dir}: no rows with {column} {wanted!r} for task {task!r}")
    return matrices


def best_layer(
    matrix_dir: str | Path, *, task: str, model: str | None = None, probe: str | None = None
) -> int:
    """The probed layer with the highest monolingual performance: the mean over target languages of
    ``perf_single`` (N of the target, tested on it) in a probe sweep's ``matrices.parquet``; ties go to the
    shallower layer (a shorter encoder to fine-tune)."""
    matrices = _one_matrix_family(matrix_dir, task=task, model=model, probe=probe)
    per_layer = (
        matrices.filter((pl.col("target") == pl.col("donor")) & pl.col("perf_single").is_not_null())
        .group_by("layer")
        .agg(pl.col("perf_single").mean().alias("perf"))
        .sort(["perf", "layer"], descending=[True, False])
    )
    if per_layer.height == 0:
        raise FinetuneError(f"{matrix_dir}: no layer of task {task!r} has a perf_single value")
    return int(per_layer["layer"][0])


def cells_from_matrix(
    matrix_dir: str | Path,
    *,
    task: str,
    top: int,
    layer: int | None = None,
    by: str = "abs",
    model: str | None = None,
    probe: str | None = None,
) -> list[tuple[str, str]]:
    """The ``top`` off-diagonal cells of a probe sweep's ``matrices.parquet`` for ``task`` at ``layer``.

    ``by="abs"``: largest |CLTM| first (the cells where the language matters most); ``by="unstable"``: cells
    flagged unstable first, then the largest standard error (the cells the probe cannot decide). ``layer``
    defaults to the deepest layer in the table (the one the published fine-tune measures); ``model``/``probe``
    must be given when the table holds more than one.
    """
    if by not in ("abs", "unstable"):
        raise FinetuneError(f"--by must be 'abs' or 'unstable', got {by!r}")
    matrices = _one_matrix_family(matrix_dir, task=task, model=model, probe=probe)
    if layer is None:
        layer = int(matrices["layer"].max())
    cells = matrices.filter(
        (pl.col("layer") == layer) & (pl.col("target") != pl.col("donor")) & pl.col("cltm").is_not_null()
    )
    if cells.height == 0:
        layers = sorted(matrices["layer"].unique().to_list())
        raise FinetuneError(f"{matrix_dir}: no off-diagonal cells at layer {layer}; layers present: {layers}")
    if by == "abs":
        cells = cells.sort(pl.col("cltm").abs(), "target", "donor", descending=[True, False, False])
    else:
        cells = cells.sort(
            pl.col("unstable").fill_null(False),
            pl.col("cltm_se").fill_null(0.0),
            "target",
            "donor",
            descending=[True, True, False, False],
        )
    return [(r["target"], r["donor"]) for r in cells.head(top).iter_rows(named=True)]


# --- planning runs
def label_column(task: str) -> str:
    """The manifest column a task trains on: ``gender``, ``speaker`` (speaker-ID), or the task's own."""
    return task


def plan_finetune_runs(
    manifest: pl.DataFrame,
    task: str,
    cells: Sequence[tuple[str, str]],
    *,
    n: int,
    seeds: Sequence[int],
    test_fraction: float = 0.25,
    conditions: Sequence[str] = CLTM_CONDITIONS,
) -> list:
    """The plans of every cell's chosen conditions for every seed, deduplicated, in a stable order.

    Delegates the subsets, test sets and trials to :func:`cltm.transfer.plan_conditions`; ``sequential``
    runs (:class:`SequentialPlan`) chain the donor's and the target's N rows of the same per-language plans.
    """
    from cltm.transfer.conditions import plan_conditions

    conditions = parse_conditions(conditions)
    languages = sorted({lang for cell in cells for lang in cell})
    planned = plan_conditions(
        manifest,
        task,
        n=n,
        seeds=list(seeds),
        languages=languages,
        cells=list(cells),
        test_fraction=test_fraction,
        zero_shot="zero_shot" in conditions,
    )
    own = {(c, t, t) for t, _ in cells for c in ("single", "self") if c in conditions}
    crossed = {(c, t, d) for t, d in cells for c in ("pair", "zero_shot", "sequential") if c in conditions}
    wanted = own | crossed
    chosen: dict[tuple, object] = {}
    for plan in planned:
        key = (plan.condition, plan.target, plan.donor)
        if key in wanted and (*key, int(plan.seed)) not in chosen:
            chosen[(*key, int(plan.seed))] = plan
    by_language = planned.languages
    for _, target, donor in sorted(k for k in wanted if k[0] == "sequential"):
        if target not in by_language or donor not in by_language:
            continue
        for seed in seeds:
            first, second = by_language[donor].rows_n[int(seed)], by_language[target].rows_n[int(seed)]
            chosen[("sequential", target, donor, int(seed))] = SequentialPlan(
                task=task,
                condition="sequential",
                target=target,
                donor=donor,
                seed=int(seed),
                train_rows=np.concatenate([first, second]),
                test_rows=by_language[target].test_rows,
                trials=by_language[target].trials,
                n_train=len(first) + len(second),
                stages=(Stage(first, (donor,)), Stage(second, (target,))),
            )
    missing = sorted(wanted - {k[:3] for k in chosen})
    if missing:
        skipped = getattr(planned, "skipped", None)
        reasons = (
            "; ".join(f"{r['language']}: {r['reason']}" for r in skipped.iter_rows(named=True))
            if skipped is not None and skipped.height
            else "too few utterances or speakers"
        )
        raise FinetuneError(
            "the sampler could not plan "
            + ", ".join(f"{c} {t}" if t == d else f"{c} {t}:{d}" for c, t, d in missing)
            + f" with n={n} ({reasons}); see `cltm corpus info`, or lower --n"
        )
    order = {c: i for i, c in enumerate(FINETUNE_CONDITIONS)}

    def first_language(plan) -> str:  # runs that first train on N of the same language follow each other
        return str(plan.donor) if plan.condition in ("zero_shot", "sequential") else plan.target

    return sorted(
        chosen.values(),
        key=lambda p: (int(p.seed), first_language(p), order[p.condition], p.target, str(p.donor)),
    )


# --- audio access
class ManifestWaves(Sequence):
    """Waveforms of some manifest rows, decoded on access (DataLoader workers can decode in parallel).

    Waveforms shorter than the model's receptive field are zero-padded to it (the encoder would fail
    otherwise).
    """

    def __init__(self, manifest: pl.DataFrame, rows: np.ndarray, *, sampling_rate: int, min_samples: int = 0):
        self.rows = np.asarray(rows, dtype=np.int64)
        cols = manifest.select(
            "path",
            *(
                pl.col(c) if c in manifest.columns else pl.lit(None, pl.Float64).alias(c)
                for c in ("start", "end")
            ),
        )
        self._items = [cols.row(int(r)) for r in self.rows]
        self.sampling_rate, self.min_samples = sampling_rate, min_samples

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        from cltm.audio import load_audio

        path, start, end = self._items[index]
        wave = load_audio(path, target_sr=self.sampling_rate, start=start, end=end)
        if len(wave) < self.min_samples:
            wave = np.pad(wave, (0, self.min_samples - len(wave)))
        return wave


# --- one run
def _class_index(values: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64)


def task_labels(manifest: pl.DataFrame, task: str) -> pl.Series:
    """The labels a task trains on, one per manifest row, as text (genders normalised as the planner does)."""
    from cltm.tasks import get_task

    column = label_column(task)
    if column not in manifest.columns:
        raise FinetuneError(f"the manifest has no {column!r} column for task {task!r}")
    # the planner classifies labels normalised by the task registry; train on the same values
    return get_task(task, label=column).normalise(manifest[column]).cast(pl.String)


def dev_rows(
    manifest: pl.DataFrame, labels: pl.Series, languages: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """Rows of the manifest's ``dev`` split in ``languages`` whose label is one of ``classes``.

    Early stopping selects on the languages a stage trains on and never on anything else: a zero-shot model
    never sees the target language, not even for model selection.
    """
    if "split" not in manifest.columns:
        raise FinetuneError(
            "early stopping (--patience) needs a `split` column with `dev` rows; the manifest has none"
        )
    frame = manifest.select(pl.col("split").cast(pl.String), pl.col("language").cast(pl.String)).with_columns(
        labels.alias("_label")
    )
    keep = frame.with_row_index("_row").filter(
        (pl.col("split") == "dev")
        & pl.col("language").is_in(list(languages))
        & pl.col("_label").is_in(classes)
    )
    have = set(keep["language"].unique().to_list())
    lacking = [lang for lang in languages if lang not in have]
    if lacking:
        raise FinetuneError(
            f"early stopping (--patience) needs dev-split rows for {', '.join(lacking)}: mark some of its "
            "(speaker-disjoint) rows split=dev in the manifest, or leave --patience at 0"
        )
    return keep["_row"].to_numpy().astype(np.int64)


# conditions whose (only or first) stage is "N of one language": what a later run may load instead of training
_REUSABLE_FIRST_STAGE = frozenset({"single", "zero_shot", "sequential"})


class StageCache:
    """The model state after a first training stage, kept so the next run with the same first stage loads it.

    A zero-shot model from donor j, the first stage of every sequential run from j and j's own ``single``
    model are the same training (N of j, same seed, same classes and settings): with plans ordered by that
    language (:func:`plan_finetune_runs`) it trains once per seed instead of once per run. One entry: a full
    fine-tune's state is as large as the model.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._state: dict[str, torch.Tensor] | None = None
        self._log: TrainLog | None = None
        self.hits = 0

    def get(self, key: tuple) -> tuple[dict[str, torch.Tensor], TrainLog] | None:
        if self._key is None or key != self._key:
            return None
        self.hits += 1
        return self._state, self._log

    def put(self, key: tuple, model: torch.nn.Module, log: TrainLog) -> None:
        self._key, self._log = key, log
        self._state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class RunOutput:
    """What one run gives: its metric columns (plus training facts), and for classification the test
    utterances' predictions (utt_id, true, pred, classes, scores) in test-row order."""

    metrics: dict
    predictions: pl.DataFrame | None = None
    logs: list[TrainLog] = field(default_factory=list)


def run_one(
    plan,
    *,
    manifest: pl.DataFrame,
    task: str,
    base_encoder: torch.nn.Module,
    sampling_rate: int,
    min_samples: int,
    pass_attention_mask: bool,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    on_stage: Callable[[int, str, PooledEncoderClassifier], None] | None = None,
    stage_cache: StageCache | None = None,
) -> RunOutput:
    """Train one run from a fresh copy of ``base_encoder`` and score it on the plan's test set / trials.

    Stages (:func:`training_stages`) train one after the other on the same model: ``sequential``'s second
    stage starts from the weights (encoder, PEFT parameters and head) the first one left, with a fresh
    optimiser and schedule (and dropout seeded by the stage). ``on_stage(index, "start" | "end", model)`` is
    called around every stage. ``stage_cache``: a first stage trained before on the same rows, seed, classes
    and settings is loaded instead of trained again (a sequential run's donor stage is the donor's own
    ``single`` model and every ``zero_shot`` model from that donor).
    ``metrics`` holds the metric columns plus ``train_steps`` and ``train_loss`` (mean over the last
    epoch's steps of the last stage), and with early stopping ``best_epoch`` and ``dev_uar`` (last stage).
    """
    labels = task_labels(manifest, task)
    stages = training_stages(plan)
    stage_values = [labels.gather(stage.rows).to_list() for stage in stages]
    verification = task in VERIFICATION_TASKS
    if verification:
        if settings.patience:
            raise FinetuneError("early stopping (--patience) is for classification tasks, not speaker")
        if len(stages) > 1:
            raise FinetuneError(
                "sequential transfer is for classification tasks: speaker IDs differ by stage"
            )
        classes = sorted(set(stage_values[0]))
        test_rows = None
    else:
        test_rows = np.asarray(plan.test_rows, dtype=np.int64)
        seen = {v for values in stage_values for v in values} | set(labels.gather(test_rows).to_list())
        classes = sorted(v for v in seen if v is not None)
    # the head, PEFT parameters, dropout and SpecAugment masks (numpy): seeded alike in every condition
    set_seed(int(plan.seed))
    model = PooledEncoderClassifier(
        copy.deepcopy(base_encoder),
        max(2, len(classes)),
        embed_last_k=settings.embed_last_k,
        pass_attention_mask=pass_attention_mask,
    )
    apply_peft(model, settings.peft, **settings.peft_options())

    def waves(rows):
        return ManifestWaves(manifest, rows, sampling_rate=sampling_rate, min_samples=min_samples)

    logs: list[TrainLog] = []
    for index, (stage, values) in enumerate(zip(stages, stage_values, strict=True)):
        if index > 0:  # later stages draw dropout from their own seed, however the first stage was made
            set_seed(int(plan.seed) * 1000 + index)
        if on_stage is not None:
            on_stage(index, "start", model)
        key = (
            id(base_encoder),
            settings,
            int(plan.seed),
            stage.languages,
            stage.rows.tobytes(),
            tuple(classes),
        )
        reused = stage_cache.get(key) if stage_cache is not None and index == 0 else None
        if reused is not None:  # the same first stage trained for an earlier run (e.g. the donor's single)
            model.load_state_dict(reused[0])
            logs.append(reused[1])
        else:
            dev = None
            if settings.patience and not verification:
                rows = dev_rows(manifest, labels, stage.languages, classes)
                dev = (waves(rows), _class_index(labels.gather(rows).to_list(), classes))
            logs.append(
                train_classifier(
                    model,
                    waves(stage.rows),
                    _class_index(values, classes),
                    settings,
                    seed=int(plan.seed),
                    device=device,
                    num_workers=num_workers,
                    dev=dev,
                )
            )
            if stage_cache is not None and index == 0 and plan.condition in _REUSABLE_FIRST_STAGE:
                stage_cache.put(key, model, logs[-1])
        if on_stage is not None:
            on_stage(index, "end", model)
    predictions = None
    if verification:
        metrics = _score_trials(model, plan.trials, manifest, waves, settings, device, num_workers)
    else:
        from cltm.probes.metrics import classification_metrics

        logits = predict_logits(model, waves(test_rows), settings, device=device, num_workers=num_workers)
        truth = _class_index(labels.gather(test_rows).to_list(), classes)
        predicted = logits.argmax(axis=1)
        metrics = classification_metrics(truth, predicted)
        if len(classes) == 2:  # binary tasks also get the threshold-free AUC of the positive-class margin
            from cltm.probes.metrics import roc_auc

            if 0 < truth.sum() < len(truth):
                metrics["auc"] = roc_auc(truth, logits[:, 1] - logits[:, 0])
        scores = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        predictions = pl.DataFrame(
            {
                "utt_id": manifest["utt_id"].cast(pl.String).gather(test_rows),
                "true": [classes[i] for i in truth],
                "pred": [classes[i] for i in predicted],
                "classes": [list(classes)] * len(test_rows),
                "scores": scores.tolist(),
            },
            schema_overrides={"classes": pl.List(pl.String), "scores": pl.List(pl.Float64)},
        )
    log = logs[-1]
    steps_per_epoch = max(1, log.steps // max(1, log.epochs_run or settings.epochs))
    metrics["train_steps"] = sum(lg.steps for lg in logs)
    metrics["train_loss"] = float(np.mean(log.losses[-steps_per_epoch:]))
    if log.best_epoch is not None:
        metrics["best_epoch"] = log.best_epoch
        metrics["dev_uar"] = log.dev_scores[log.best_epoch - 1][0]
    del model
    return RunOutput(metrics, predictions, logs)


def _score_trials(model, trials: pl.DataFrame, manifest, waves, settings, device, num_workers) -> dict:
    from cltm.probes.metrics import verification_metrics

    if trials is None or trials.height == 0:
        raise FinetuneError("speaker task: the plan has no trials to score")
    if {"enroll_row", "test_row"} <= set(trials.columns):  # the planner already resolved utt_ids to rows
        enroll_rows, test_rows = trials["enroll_row"].to_numpy(), trials["test_row"].to_numpy()
    else:
        row_of = dict(zip(manifest["utt_id"].to_list(), range(manifest.height), strict=True))
        unknown = [
            u for u in set(trials["enroll"].to_list()) | set(trials["test"].to_list()) if u not in row_of
        ]
        if unknown:
            raise FinetuneError(f"trial utterances not in the manifest: {sorted(unknown)[:5]}")
        enroll_rows = np.array([row_of[u] for u in trials["enroll"].to_list()], dtype=np.int64)
        test_rows = np.array([row_of[u] for u in trials["test"].to_list()], dtype=np.int64)
    rows, inverse = np.unique(np.concatenate([enroll_rows, test_rows]), return_inverse=True)
    emb = embed_utterances(model, waves(rows), settings, device=device, num_workers=num_workers)
    enroll, test = emb[inverse[: len(enroll_rows)]], emb[inverse[len(enroll_rows) :]]
    scores = np.einsum("ij,ij->i", enroll, test)  # cosine: embeddings are L2-normalised
    return verification_metrics(trials["label"].to_numpy().astype(np.int64), scores)


# --- the campaign
@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did: the full runs table of ``out_dir`` and how many runs ran or were
    skipped."""

    runs: pl.DataFrame
    out_dir: Path
    ran: int
    skipped: int
    plans: list = field(default_factory=list)
    is_main_process: bool = True  # False on ranks > 0 of a multi-process launch (they should print nothing)
    predictions: pl.DataFrame | None = None  # out_dir/predictions.parquet when asked for
    reused_stages: int = 0  # first stages loaded from an earlier run instead of trained (StageCache)


def _process_state(device: str):
    try:
        from accelerate import PartialState
    except ImportError as err:
        raise FinetuneError(
            "cltm finetune needs `accelerate` (and `peft` for --peft lora): pip install 'cltm[finetune]'"
        ) from err

    return PartialState(cpu=device == "cpu")


def run_finetune(
    manifest: pl.DataFrame | str | Path,
    model: str | Path,
    task: str,
    cells: Sequence[tuple[str, str]],
    *,
    n: int,
    seeds: Sequence[int],
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    model_name: str | None = None,
    test_fraction: float = 0.25,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    plans: list | None = None,
    conditions: Sequence[str] = CLTM_CONDITIONS,
    predictions: bool = False,
) -> FinetuneResult:
    """Fine-tune every chosen cell's ``conditions`` for every seed; write ``out_dir/runs.parquet``; resume.

    ``manifest``: a DataFrame or a manifest file (read with :func:`cltm.corpus.read_manifest`). ``model``: a
    hub id or a local directory (loaded with :func:`cltm.extract.load_model`); ``model_name`` is what the
    ``model`` column says (default: ``model`` as given; use the probe sweep's model id to compare the two
    CLTMs cell by cell). ``plans`` overrides the planner (for callers that already hold ConditionPlans). Runs
    already in ``out_dir`` with the same configuration are skipped. ``settings.layer`` = K cuts the encoder
    after block K (the ``layer`` column then says K). ``predictions``: also write every classification run's
    per-utterance predictions to ``out_dir/predictions.parquet`` (runs without them are run again).
    """
    from cltm.corpus import manifest_hash, read_manifest
    from cltm.extract.models import FBANK_ID, load_model

    settings = settings or TrainSettings()
    if not isinstance(manifest, pl.DataFrame):
        manifest = read_manifest(manifest)
    if str(model) == FBANK_ID:
        raise FinetuneError(
            "the fbank baseline has no weights to fine-tune; pass a speech encoder id or path"
        )
    if task not in VERIFICATION_TASKS and label_column(task) not in manifest.columns:
        raise FinetuneError(f"task {task!r}: the manifest has no {task!r} column")
    conditions = parse_conditions(conditions)
    if predictions and task in VERIFICATION_TASKS:
        raise FinetuneError("--predictions: per-utterance predictions are for classification tasks")
    loaded = load_model(model)
    base_encoder = loaded.model.cpu()
    settings = TrainSettings(**{**settings.as_dict(), "normalize_audio": bool(loaded.do_normalize)})
    if hasattr(base_encoder.config, "layerdrop"):
        base_encoder.config.layerdrop = 0.0  # every block sees every step, as in extraction
    if settings.layer is not None:
        if settings.layer > loaded.n_layers - 1:
            raise FinetuneError(
                f"--layer {settings.layer}: {model} has hidden states 0..{loaded.n_layers - 1} "
                "(0 = transformer input, k = output of block k)"
            )
        if settings.layer == 0 and settings.peft != "none":
            raise FinetuneError(f"--layer 0 keeps no transformer block for --peft {settings.peft} to adapt")
        truncate_encoder(base_encoder, settings.layer)  # once: every run deep-copies the cut encoder
    model_name = model_name or str(model)
    probe = "finetune" if settings.peft == "none" else f"finetune-{settings.peft}"
    layer = int(base_encoder.config.num_hidden_layers)
    config = {
        "model": model_name,
        "model_config": loaded.config_hash,
        "task": task,
        "n": int(n),
        "test_fraction": test_fraction,
        "manifest": manifest_hash(manifest),
        **settings.config_dict(),
    }
    hash_ = config_hash(config)
    out = Path(out_dir)

    state = _process_state(device)
    rank, world = state.process_index, state.num_processes
    # every rank checks and plans before the first barrier: a refusal then stops all ranks alike
    check_same_config(
        read_finetune_runs(out),
        task=task,
        model=model_name,
        probe=probe,
        hash_=hash_,
        out_dir=out,
        layer=layer,
    )
    if plans is None:
        plans = plan_finetune_runs(
            manifest, task, cells, n=n, seeds=seeds, test_fraction=test_fraction, conditions=conditions
        )
    state.wait_for_everyone()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if (out / PARTS_DIR).is_dir():  # part files of an interrupted multi-process run
            consolidate(out)
        (out / "finetune_config.json").write_text(json.dumps({**config, "config_hash": hash_}, indent=2))
    state.wait_for_everyone()
    existing = read_finetune_runs(out)
    existing_predictions = read_finetune_predictions(out) if predictions else None

    def row_base(plan) -> dict:
        return {
            "task": task,
            "model": model_name,
            "layer": layer,
            "probe": probe,
            "condition": plan.condition,
            "target": plan.target,
            "donor": plan.target if plan.condition in ("single", "self") else plan.donor,
            "seed": int(plan.seed),
            "n_train": int(len(plan.train_rows)),
            "source": "finetune",
            "config_hash": hash_,
            "train_languages": train_languages(plan),
        }

    done = finished_keys(existing)
    with_predictions = predicted_keys(existing_predictions) if predictions else set()

    def is_done(plan) -> bool:
        base = row_base(plan)
        if run_key(base) not in done:
            return False
        return not predictions or tuple(base[c] for c in RUN_KEY) in with_predictions

    pending = [p for p in plans if not is_done(p)]
    mine = pending[rank::world]
    new_rows: list[dict] = []
    new_predictions: list[pl.DataFrame] = []
    # zero-shot and sequential runs start by training on N of the donor (the donor's single model): once
    reuses = any(p.condition in ("zero_shot", "sequential") for p in mine)
    stage_cache = StageCache() if reuses else None
    run_device = state.device
    unit = "runs" if world == 1 else f"runs on rank 0 (of {world} processes)"
    bar = counting_progress(unit, enabled=progress and state.is_main_process)
    with bar:
        task_id = bar.add_task("fine-tuning", total=len(mine))
        for plan in mine:
            base = row_base(plan)
            bar.update(
                task_id,
                description=f"{base['condition']} {base['target']}:{base['donor']} seed {base['seed']}",
            )
            started = time.perf_counter()
            output = run_one(
                plan,
                manifest=manifest,
                task=task,
                base_encoder=base_encoder,
                sampling_rate=loaded.sampling_rate,
                min_samples=loaded.min_samples,
                pass_attention_mask=loaded.return_attention_mask,
                settings=settings,
                device=run_device,
                num_workers=num_workers,
                stage_cache=stage_cache,
            )
            new_rows.append({**base, **output.metrics, "seconds": time.perf_counter() - started})
            if predictions and output.predictions is not None:
                keys = {c: base[c] for c in (*RUN_KEY, "train_languages", "source")}
                new_predictions.append(
                    output.predictions.with_columns(pl.lit(v).alias(k) for k, v in keys.items())
                )
            _save(out, existing, new_rows, rank, world, existing_predictions, new_predictions)
            bar.advance(task_id)
    state.wait_for_everyone()
    if state.is_main_process and world > 1:
        consolidate(out)
    state.wait_for_everyone()
    runs = read_finetune_runs(out)
    return FinetuneResult(
        runs=runs,
        out_dir=out,
        ran=len(new_rows),
        skipped=len(plans) - len(pending),
        is_main_process=state.is_main_process,
        plans=plans,
        predictions=read_finetune_predictions(out) if predictions else None,
        reused_stages=stage_cache.hits if stage_cache is not None else 0,
    )


def _save(
    out: Path,
    existing: pl.DataFrame,
    new_rows: list[dict],
    rank: int,
    world: int,
    existing_predictions: pl.DataFrame | None = None,
    new_predictions: Sequence[pl.DataFrame] = (),
) -> None:
    """Persist after every run: the whole table when alone, this rank's part file when distributed.

    Predictions are written before the runs table: a run whose row exists always has its predictions.
    """
    # A fine-tune directory grows one run at a time (resumable, several ranks), so it is a runs-only results
    # directory (MatrixResult.read accepts it): each file is replaced atomically, no set manifest is written.
    new = merge_runs([pl.DataFrame(new_rows, infer_schema_length=None)])
    if existing_predictions is not None and new_predictions:
        fresh = merge_predictions(new_predictions)
        if world == 1:
            write_parquet_atomic(merge_predictions([existing_predictions, fresh]), out / PREDICTIONS_FILE)
        else:
            write_parquet_atomic(fresh, part_path(out, rank, PREDICTIONS_PARTS_DIR))
    if world == 1:
        write_parquet_atomic(merge_runs([existing, new]), out / RUNS_FILE)
    else:
        write_parquet_atomic(new, part_path(out, rank))
