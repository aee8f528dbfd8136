"""Fine-tune chosen CLTM cells the published way, on exactly the probe sweep's subsets and test sets.

For every cell ``target:donor`` and seed, three runs: ``single`` (N of the target), ``self`` (2N of the
target) and ``pair`` (N of the target + N of the donor). Subsets, test sets and trial lists come from
:func:`cltm.transfer.plan_conditions`, the single source both the probe sweep and this path use, so a
fine-tuned cell and a probed cell are measured on the same rows. ``single``/``self`` of a target run once per
seed however many cells share the target. Each run starts from a fresh copy of the pre-trained encoder.

Processes: under ``torchrun``/``accelerate launch`` with W processes, rank r takes pending runs r, r+W, ...
(each run is independent, so there is no gradient synchronisation); every rank writes its own part file and
rank 0 merges them.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from transformers import set_seed

from cltm.finetune.model import PooledEncoderClassifier
from cltm.finetune.peft_modes import apply_peft
from cltm.finetune.runs import (
    PARTS_DIR,
    RUNS_FILE,
    FinetuneError,
    check_same_config,
    config_hash,
    consolidate,
    finished_keys,
    merge_runs,
    part_path,
    read_finetune_runs,
    run_key,
    write_parquet_atomic,
)
from cltm.finetune.train import TrainSettings, embed_utterances, predict_logits, train_classifier
from cltm.progress import counting_progress
from cltm.tasks import VERIFICATION_TASKS  # task facts live in cltm.tasks

FINETUNE_CONDITIONS: tuple[str, ...] = ("single", "self", "pair")


# --- choosing cells
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
    from cltm.transfer.tables import read_results

    if by not in ("abs", "unstable"):
        raise FinetuneError(f"--by must be 'abs' or 'unstable', got {by!r}")
    matrices = read_results(matrix_dir).matrices.filter(pl.col("task") == task)
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
) -> list:
    """The ConditionPlans of every cell's single/self/pair for every seed, deduplicated, in a stable order.

    Delegates the subsets, test sets and trials to :func:`cltm.transfer.plan_conditions`.
    """
    from cltm.transfer.conditions import plan_conditions

    languages = sorted({lang for cell in cells for lang in cell})
    planned = plan_conditions(
        manifest,
        task,
        n=n,
        seeds=list(seeds),
        languages=languages,
        cells=list(cells),
        test_fraction=test_fraction,
        zero_shot=False,
    )
    wanted = {(c, t, t) for t, _ in cells for c in ("single", "self")} | {("pair", t, d) for t, d in cells}
    chosen: dict[tuple, object] = {}
    for plan in planned:
        key = (plan.condition, plan.target, plan.donor)
        if key in wanted and (*key, int(plan.seed)) not in chosen:
            chosen[(*key, int(plan.seed))] = plan
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
            + ", ".join(f"{c} {t}:{d}" if c == "pair" else f"{c} {t}" for c, t, d in missing)
            + f" with n={n} ({reasons}); see `cltm corpus info`, or lower --n"
        )
    order = {c: i for i, c in enumerate(FINETUNE_CONDITIONS)}
    return sorted(chosen.values(), key=lambda p: (int(p.seed), p.target, order[p.condition], str(p.donor)))


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
) -> dict:
    """Train one condition from a fresh copy of ``base_encoder`` and score it on the plan's test set / trials.

    Returns the metric columns plus ``train_steps`` and ``train_loss`` (mean over the last epoch's steps).
    """
    column = label_column(task)
    if column not in manifest.columns:
        raise FinetuneError(f"the manifest has no {column!r} column for task {task!r}")
    from cltm.tasks import get_task

    # the planner classifies normalised labels (tasks.py); train on the same values
    labels = get_task(task, label=column).normalise(manifest[column]).cast(pl.String)
    train_rows = np.asarray(plan.train_rows, dtype=np.int64)
    train_values = labels.gather(train_rows).to_list()
    verification = task in VERIFICATION_TASKS
    if verification:
        classes = sorted(set(train_values))
        test_rows = None
    else:
        test_rows = np.asarray(plan.test_rows, dtype=np.int64)
        classes = sorted(set(train_values) | set(labels.gather(test_rows).to_list()))
    # the head, PEFT parameters, dropout and SpecAugment masks (numpy): seeded alike in every condition
    set_seed(int(plan.seed))
    model = PooledEncoderClassifier(
        copy.deepcopy(base_encoder),
        max(2, len(classes)),
        embed_last_k=settings.embed_last_k,
        pass_attention_mask=pass_attention_mask,
    )
    apply_peft(model, settings.peft)

    def waves(rows):
        return ManifestWaves(manifest, rows, sampling_rate=sampling_rate, min_samples=min_samples)

    log = train_classifier(
        model,
        waves(train_rows),
        _class_index(train_values, classes),
        settings,
        seed=int(plan.seed),
        device=device,
        num_workers=num_workers,
    )
    if verification:
        metrics = _score_trials(model, plan.trials, manifest, waves, settings, device, num_workers)
    else:
        from cltm.probes.metrics import classification_metrics

        logits = predict_logits(model, waves(test_rows), settings, device=device, num_workers=num_workers)
        truth = _class_index(labels.gather(test_rows).to_list(), classes)
        metrics = classification_metrics(truth, logits.argmax(axis=1))
        if len(classes) == 2:  # binary tasks also get the threshold-free AUC of the positive-class margin
            from cltm.probes.metrics import roc_auc

            if 0 < truth.sum() < len(truth):
                metrics["auc"] = roc_auc(truth, logits[:, 1] - logits[:, 0])
    steps_per_epoch = max(1, log.steps // settings.epochs)
    metrics["train_steps"] = log.steps
    metrics["train_loss"] = float(np.mean(log.losses[-steps_per_epoch:]))
    del model
    return metrics


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
) -> FinetuneResult:
    """Fine-tune every chosen cell's single/self/pair for every seed; write ``out_dir/runs.parquet``; resume.

    ``manifest``: a DataFrame or a manifest file (read with :func:`cltm.corpus.read_manifest`). ``model``: a
    hub id or a local directory (loaded with :func:`cltm.extract.load_model`); ``model_name`` is what the
    ``model`` column says (default: ``model`` as given; use the probe sweep's model id to compare the two
    CLTMs cell by cell). ``plans`` overrides the planner (for callers that already hold ConditionPlans). Runs
    already in ``out_dir`` with the same configuration are skipped.
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
    loaded = load_model(model)
    base_encoder = loaded.model.cpu()
    settings = TrainSettings(**{**settings.as_dict(), "normalize_audio": bool(loaded.do_normalize)})
    if hasattr(base_encoder.config, "layerdrop"):
        base_encoder.config.layerdrop = 0.0  # every block sees every step, as in extraction
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
        **settings.as_dict(),
    }
    hash_ = config_hash(config)
    out = Path(out_dir)

    state = _process_state(device)
    rank, world = state.process_index, state.num_processes
    # every rank checks and plans before the first barrier: a refusal then stops all ranks alike
    check_same_config(
        read_finetune_runs(out), task=task, model=model_name, probe=probe, hash_=hash_, out_dir=out
    )
    if plans is None:
        plans = plan_finetune_runs(manifest, task, cells, n=n, seeds=seeds, test_fraction=test_fraction)
    state.wait_for_everyone()
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if (out / PARTS_DIR).is_dir():  # part files of an interrupted multi-process run
            consolidate(out)
        (out / "finetune_config.json").write_text(json.dumps({**config, "config_hash": hash_}, indent=2))
    state.wait_for_everyone()
    existing = read_finetune_runs(out)

    def row_base(plan) -> dict:
        return {
            "task": task,
            "model": model_name,
            "layer": layer,
            "probe": probe,
            "condition": plan.condition,
            "target": plan.target,
            "donor": plan.donor if plan.condition == "pair" else plan.target,
            "seed": int(plan.seed),
            "n_train": int(len(plan.train_rows)),
            "source": "finetune",
            "config_hash": hash_,
        }

    done = finished_keys(existing)
    pending = [p for p in plans if run_key(row_base(p)) not in done]
    mine = pending[rank::world]
    new_rows: list[dict] = []
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
            metrics = run_one(
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
            )
            new_rows.append({**base, **metrics, "seconds": time.perf_counter() - started})
            _save(out, existing, new_rows, rank, world)
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
    )


def _save(out: Path, existing: pl.DataFrame, new_rows: list[dict], rank: int, world: int) -> None:
    """Persist after every run: the whole table when alone, this rank's part file when distributed."""
    new = merge_runs([pl.DataFrame(new_rows, infer_schema_length=None)])
    if world == 1:
        write_parquet_atomic(merge_runs([existing, new]), out / RUNS_FILE)
    else:
        write_parquet_atomic(new, part_path(out, rank))
