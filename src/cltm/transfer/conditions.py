"""The single source of CLTM training subsets and test sets (used by the probe sweep and the fine-tune path).

For every language i the plan fixes, once:

* the **test set** of i: the manifest's ``split`` column when present (train pool = ``train``, test =
  ``test``), otherwise (or for rows with no split) the sampler's seeded speaker-disjoint split
  (``split_seed``, not the run seed, so the test set is the same for every seed and condition). Classification
  tests on every test row of i with a label in the task's classes; speaker verification on a trial list from
  i's test rows (``make_trials`` with the published rules, seeded by ``trial_seed``) or on a user trial list;
* per seed s, the **nested training subsets** of i: ``rows_2n`` (2N of i) and ``rows_n`` (its first N), from
  the shared sampler (``balanced_subset`` with N per class for classification, ``speaker_subset`` with the
  minimum-speaker rule for speaker verification), which returns a prefix of one seeded order.

Conditions for target i, donor j and seed s are then built from these and nothing else: ``single`` =
rows_n(i), ``self`` = rows_2n(i) (which contains rows_n(i)), ``pair`` = rows_n(i) + rows_n(j) (the same N of i
as in ``single``, and the same N of j as j's own ``single``), ``zero_shot`` = rows_n(j); all tested on i. For
``single`` and ``self`` the donor is the target itself.

A language that cannot give 2N training rows (or has no usable test set) is reported in ``skipped`` (language,
reason with the numbers it has and needs) and left out as target and donor: never a crash. A layer study that
needs no 2N (``double=False``: ``single`` / ``zero_shot`` only) draws just N, or every training row
(``n=None``).

Small corpora: rows of a ``dev`` split are never trained or tested on; they are each language's early-stopping
set (``dev_rows``: the MLP probe stops on the dev rows of its training languages, never on test rows).
``folds=K`` replaces the train/test split by speaker-independent K-fold: per language, speakers are dealt into
K folds (seeded by ``split_seed``, stratified by each speaker's majority class), fold k's speakers are the
test set of plan k and the other folds' speakers its training pool, so every speaker is tested exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from cltm.corpus.sampling import (
    SamplingError,
    balanced_subset,
    make_trials,
    seeded_rank,
    speaker_disjoint_split,
    speaker_subset,
)
from cltm.tasks import Task, check_task_column, get_task
from cltm.transfer.tables import SKIPPED_COLUMNS

ROW = "_cltm_row"


def seed_list(seeds: int | Iterable[int]) -> list[int]:
    """``seeds`` as a list: an int S means 0..S-1."""
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds is an empty list")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds has duplicates: {out}")
    return out


def task_label(task: str, label: str | None = None) -> str | None:
    """The manifest column a task classifies (None for speaker verification); facts from ``cltm.tasks``."""
    spec = get_task(task, label=label)
    return None if spec.is_verification else spec.label


@dataclass(eq=False)
class ConditionPlan:
    """One training/test configuration: a (condition, target, donor, seed) with manifest row indices.

    ``train_rows`` / ``test_rows`` index the manifest's rows (0-based; cache order for a Cache's manifest).
    ``trials`` (speaker verification) holds manifest row indices in ``enroll_row`` / ``test_row`` plus
    ``label`` and the utt_ids ``enroll`` / ``test``; ``test_rows`` are then the rows the trials use.
    """

    task: str
    condition: str
    target: str
    donor: str
    seed: int
    train_rows: np.ndarray
    test_rows: np.ndarray
    trials: pl.DataFrame | None
    n_train: int


@dataclass(eq=False)
class LanguagePlan:
    """What one language contributes: its fixed test set and, per seed, its nested N / 2N training rows."""

    language: str
    test_rows: np.ndarray
    trials: pl.DataFrame | None
    rows_n: dict[int, np.ndarray] = field(default_factory=dict)
    rows_2n: dict[int, np.ndarray] = field(default_factory=dict)
    dev_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fold: int | None = None


class ConditionPlans(list):
    """A list of ``ConditionPlan`` that also carries ``skipped`` (language, reason) and the per-language
    plans."""

    def __init__(
        self, plans: Iterable[ConditionPlan], skipped: pl.DataFrame, languages: dict[str, LanguagePlan]
    ):
        super().__init__(plans)
        self.skipped = skipped
        self.languages = languages


def _with_split(manifest: pl.DataFrame, test_fraction: float, split_seed: int) -> pl.DataFrame:
    has_split = "split" in manifest.columns and manifest["split"].null_count() < manifest.height
    if has_split and manifest["split"].null_count() == 0:
        return manifest
    if "speaker" not in manifest.columns:
        raise ValueError(
            "the manifest has no `split` column (or rows without one) and no `speaker` column: add a "
            "speaker-disjoint train/test split or speaker ids so cltm can make one"
        )
    return speaker_disjoint_split(manifest, test_fraction=test_fraction, seed=split_seed)


def _trial_rows(trials: pl.DataFrame, row_of: dict[str, int]) -> pl.DataFrame:
    missing = [u for u in set(trials["enroll"].to_list()) | set(trials["test"].to_list()) if u not in row_of]
    if missing:
        raise ValueError(
            f"trial list names {len(missing)} utt_id(s) not in the manifest (e.g. {sorted(missing)[:3]}); "
            "trials must use the manifest's utt_id values"
        )
    return trials.with_columns(
        pl.col("enroll").replace_strict(row_of, return_dtype=pl.Int64).alias("enroll_row"),
        pl.col("test").replace_strict(row_of, return_dtype=pl.Int64).alias("test_row"),
        pl.col("label").cast(pl.Int8),
    )


def _speaker_folds(frame: pl.DataFrame, label_col: str | None, k: int, seed: int) -> pl.DataFrame:
    """A ``_fold`` column 0..k-1 per speaker, per language: speakers in a seeded order, dealt round-robin
    (within each speaker's majority class for classification, so every fold sees every class it can)."""
    by = frame.group_by("language", "speaker").agg(
        (pl.col(label_col).drop_nulls().mode().sort().first() if label_col else pl.lit("")).alias("_major")
    )
    by = by.with_columns(pl.Series("_srank", seeded_rank(by["speaker"].cast(pl.String).to_list(), seed)))
    by = by.sort("language", "_major", "_srank", "speaker", nulls_last=True)
    by = by.with_columns((pl.int_range(pl.len()).over("language") % k).cast(pl.Int64).alias("_fold"))
    return frame.join(by.select("language", "speaker", "_fold"), on=["language", "speaker"], how="left")


def plan_languages(
    manifest: pl.DataFrame,
    task: str | Task,
    *,
    n: int | None,
    seeds: int | Iterable[int],
    languages: Sequence[str] | None = None,
    label: str | None = None,
    test_fraction: float = 0.25,
    trials: pl.DataFrame | None = None,
    split_seed: int = 0,
    trial_seed: int = 0,
    max_targets_per_speaker: int = 20,
    usable_column: str | None = None,
    double: bool = True,
    folds: int | None = None,
    fold: int | None = None,
) -> tuple[dict[str, LanguagePlan], pl.DataFrame]:
    """Per-language test sets and nested training subsets; returns ``(plans by language, skipped)``.

    ``n``: N per class for classification tasks, N utterances for ``speaker``; ``None`` trains on every
    training row (only without ``double``). ``double``: the plan needs 2N (the ``self`` and ``pair``
    conditions); without it only N is drawn (``single`` / ``zero_shot`` layer studies). ``trials``: an
    optional user trial list (``enroll``, ``test``, ``label`` utt_ids), split per language by the enrolment
    utterance's language. ``usable_column``: a boolean column; rows where it is false (e.g. never extracted)
    are left out everywhere, while row indices still count every manifest row. Rows of the ``dev`` split are
    never trained or tested on: they are the early-stopping set (``LanguagePlan.dev_rows``). ``folds`` /
    ``fold``: speaker-independent K-fold; the test set of ``fold`` is that fold's speakers (every speaker is
    tested in exactly one fold), the training pool the other folds' speakers (the manifest's train/test split
    is not used then).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n is None and double:
        raise ValueError("the matrix conditions (self, pair) need N: give n, or plan only single / zero_shot")
    if folds is not None:
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        if fold is None or not 0 <= fold < folds:
            raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    seeds_ = seed_list(seeds)
    if "language" not in manifest.columns:
        raise ValueError("the manifest has no `language` column")
    spec = get_task(task, label=label)
    label_col = None if spec.is_verification else spec.label
    need = ["utt_id", "language"] + (["speaker"] if label_col is None else [label_col])
    missing = [c for c in need if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"task {spec.name!r} needs manifest column(s) {missing}; the manifest has {manifest.columns}"
            + ("" if label_col is None else " (any label column can be a task: --task COLUMN)")
        )
    check_task_column(spec, manifest)
    frame = manifest.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    if usable_column is not None:
        frame = frame.filter(pl.col(usable_column)).drop(usable_column)
    if label_col is not None:
        # one normalisation for every command (tasks.py): '' and nulls are missing labels, not classes
        frame = frame.with_columns(spec.normalise(frame[label_col]).alias(label_col))
    if folds is not None:
        if "speaker" not in frame.columns:
            raise ValueError("--folds needs a `speaker` column: the folds are speaker-independent")
        dev = frame["split"] == "dev" if "split" in frame.columns else pl.Series([False] * frame.height)
        body = _speaker_folds(frame.filter(~dev.fill_null(False)), label_col, folds, split_seed)
        body = body.with_columns(
            pl.when(pl.col("_fold") == fold).then(pl.lit("test")).otherwise(pl.lit("train")).alias("split")
        ).drop("_fold")
        devs = frame.filter(dev.fill_null(False))
        frame = pl.concat([body, devs.with_columns(pl.lit("dev").alias("split"))], how="diagonal_relaxed")
    else:
        frame = _with_split(frame, test_fraction, split_seed)
    present = frame["language"].unique(maintain_order=True).to_list()
    wanted = list(dict.fromkeys(languages)) if languages is not None else sorted(present, key=str)
    skipped: list[tuple[str, str]] = [(lang, "not in the manifest") for lang in wanted if lang not in present]
    classes = spec.class_list(frame) if label_col is not None else None
    row_of = dict(zip(frame["utt_id"].to_list(), frame[ROW].to_list(), strict=True))
    lang_of = dict(zip(frame["utt_id"].to_list(), frame["language"].to_list(), strict=True))

    plans: dict[str, LanguagePlan] = {}
    for lang in wanted:
        if lang not in present:
            continue
        rows = frame.filter(pl.col("language") == lang)
        train_pool = rows.filter(pl.col("split") == "train")
        test_pool = rows.filter(pl.col("split") == "test")
        dev_pool = rows.filter(pl.col("split") == "dev")
        stage = "no usable test set"
        try:
            if label_col is not None:
                train_pool = train_pool.filter(pl.col(label_col).is_in(classes))
                test_pool = test_pool.filter(pl.col(label_col).is_in(classes))
                dev_pool = dev_pool.filter(pl.col(label_col).is_in(classes))
                have = set(test_pool[label_col].unique().to_list())
                if have != set(classes):
                    lacking = sorted(set(classes) - have)
                    if folds is not None:
                        speakers = {
                            c: rows.filter(pl.col(label_col) == c)["speaker"].n_unique() for c in lacking
                        }
                        raise SamplingError(
                            f"fold {fold} has no test speaker of {lacking}: --folds {folds} needs at least "
                            f"{folds} speakers per class (speakers are dealt to folds by their majority "
                            f"class; speakers with the class: {speakers}); use fewer folds or --classes"
                        )
                    raise SamplingError(
                        f"the test split has classes {sorted(map(str, have))}, needs all of {classes} "
                        f"(no test utterance of {lacking}: it needs at least 1 of each; --classes keeps only "
                        "the classes every language has)"
                    )
                test_rows = test_pool[ROW].to_numpy()
                lang_trials = None
            else:
                if trials is not None:
                    lang_trials = trials.filter(
                        pl.col("enroll").map_elements(lambda u: lang_of.get(u), return_dtype=pl.String)
                        == lang
                    )
                    if lang_trials.height == 0:
                        raise SamplingError("the trial list has no trial enrolled on this language")
                else:
                    # same-gender non-targets (the published rule) need a gender column; else any speaker
                    lang_trials = make_trials(
                        test_pool,
                        seed=trial_seed,
                        max_targets_per_speaker=max_targets_per_speaker,
                        same_gender="gender" in test_pool.columns,
                    )
                    row_of_lang = dict(
                        zip(test_pool["utt_id"].to_list(), test_pool[ROW].to_list(), strict=True)
                    )
                    lang_trials = _trial_rows(lang_trials, row_of_lang)
                if trials is not None:
                    lang_trials = _trial_rows(lang_trials, row_of)
                if lang_trials["label"].n_unique() < 2:
                    raise SamplingError("the trial list needs target and non-target trials")
                test_rows = np.unique(
                    np.concatenate([lang_trials["enroll_row"].to_numpy(), lang_trials["test_row"].to_numpy()])
                )
            plan = LanguagePlan(
                language=lang,
                test_rows=test_rows,
                trials=lang_trials,
                dev_rows=dev_pool[ROW].to_numpy(),
                fold=fold,
            )
            if n is None:
                stage = "no training data"
                if label_col is not None:
                    counts = dict(train_pool.group_by(label_col).len().iter_rows())
                    short = [c for c in classes if counts.get(c, 0) < 1]
                    if short:
                        raise SamplingError(f"no training utterance of {short} (it needs at least 1 of each)")
                elif train_pool["speaker"].n_unique() < 2:
                    raise SamplingError(
                        f"{train_pool['speaker'].n_unique()} training speaker(s); a back-end needs at least 2"
                    )
                every = train_pool.sort(ROW)[ROW].to_numpy()
                for s in seeds_:
                    plan.rows_n[s] = every
                plans[lang] = plan
                continue
            stage = f"too little training data for {'2N=' + str(2 * n) if double else 'N=' + str(n)}"
            for s in seeds_:
                # both samplers return a prefix of one seeded order, so the N subset is the head of the 2N
                # one (balanced_subset interleaves classes: its first N * classes rows are N per class)
                size = 2 * n if double else n
                if label_col is not None:
                    big = balanced_subset(train_pool, label_col, size, seed=s, classes=classes)
                    small = big.head(n * big[label_col].n_unique())
                else:
                    big = speaker_subset(train_pool, size, seed=s)
                    small = big.head(n)
                if double:
                    plan.rows_2n[s] = big[ROW].to_numpy()
                plan.rows_n[s] = small[ROW].to_numpy()
            plans[lang] = plan
        except SamplingError as err:
            where = f" (fold {fold})" if fold is not None else ""
            skipped.append((lang, f"{stage}{where}: {err}"))
    skipped_df = pl.DataFrame(skipped, schema=SKIPPED_COLUMNS, orient="row")
    return plans, skipped_df


def expand_conditions(
    plans: dict[str, LanguagePlan],
    task: str,
    seeds: Iterable[int],
    *,
    cells: Iterable[tuple[str, str]] | None = None,
    donors: Sequence[str] | None = None,
    zero_shot: bool = True,
) -> list[ConditionPlan]:
    """All ConditionPlans from per-language plans, in a fixed order (seed, target, condition, donor)."""
    langs = list(plans)
    cell_set = {(t, d) for t, d in cells} if cells is not None else None
    donor_set = set(donors) if donors is not None else None
    out: list[ConditionPlan] = []
    for s in seed_list(list(seeds)):
        for t in langs:
            tp = plans[t]
            pair_donors = [
                d
                for d in langs
                if d != t
                and (donor_set is None or d in donor_set)
                and (cell_set is None or (t, d) in cell_set)
            ]
            if cell_set is not None and not pair_donors and (t, t) not in cell_set:
                continue

            def make(
                condition: str, donor: str, train: np.ndarray, target: str = t, seed: int = s
            ) -> ConditionPlan:
                return ConditionPlan(
                    task=task,
                    condition=condition,
                    target=target,
                    donor=donor,
                    seed=seed,
                    train_rows=train,
                    test_rows=plans[target].test_rows,
                    trials=plans[target].trials,
                    n_train=len(train),
                )

            out.append(make("single", t, tp.rows_n[s]))
            out.append(make("self", t, tp.rows_2n[s]))
            for d in pair_donors:
                out.append(make("pair", d, np.concatenate([tp.rows_n[s], plans[d].rows_n[s]])))
            if zero_shot:
                for d in pair_donors:
                    out.append(make("zero_shot", d, plans[d].rows_n[s]))
    return out


def plan_conditions(
    manifest: pl.DataFrame,
    task: str,
    *,
    n: int,
    seeds: int | Iterable[int],
    languages: Sequence[str] | None = None,
    cells: Iterable[tuple[str, str]] | None = None,
    label: str | None = None,
    test_fraction: float = 0.25,
    trials: pl.DataFrame | None = None,
    donors: Sequence[str] | None = None,
    zero_shot: bool = True,
    split_seed: int = 0,
    trial_seed: int = 0,
) -> ConditionPlans:
    """Every (condition, target, donor, seed) to train and test, as manifest row indices.

    Returns a ``ConditionPlans`` list (``.skipped``: language, reason; ``.languages``: the per-language
    plans). ``cells`` restricts the plan to these (target, donor) pairs (plus each target's ``single`` and
    ``self``), e.g. the top cells the fine-tune path re-runs; ``donors`` restricts the donor languages. See
    the module docstring for the rules (fixed test sets, nested subsets, skipped languages).
    """
    seeds_ = seed_list(seeds)
    plans, skipped = plan_languages(
        manifest,
        task,
        n=n,
        seeds=seeds_,
        languages=languages,
        label=label,
        test_fraction=test_fraction,
        trials=trials,
        split_seed=split_seed,
        trial_seed=trial_seed,
    )
    conditions = expand_conditions(plans, task, seeds_, cells=cells, donors=donors, zero_shot=zero_shot)
    return ConditionPlans(conditions, skipped, plans)
