"""THE task registry: every fact about a task lives here, and every command and the report import it.

A task says what is predicted and how it is scored:

* ``name``; ``kind`` (``classification`` or ``verification``);
* ``label``: the manifest column holding the labels (``speaker`` for verification);
* ``normalise``: how raw label values become classes. Every task strips surrounding white space; ``gender``
  also maps the vocabularies of old (``male``/``female``) and new (``male_masculine``/``female_feminine``)
  Common Voice releases onto ``female``/``male``. Empty strings and nulls are *missing labels*, never a
  class;
* ``classes``: fixed classes when the task has them (``gender``: female, male; rows with other values are
  left out), else the sorted distinct labels of the manifest;
* ``metrics``: what a run reports (macro-F1 ``f1``, ``accuracy``, ``uar`` for classification; ``auc``,
  ``eer``, ``min_dcf_01``, ``min_dcf_05`` for verification) and ``default_metric`` (the matrix metric);
* ``sampling``: ``balanced`` (N per class, ``cltm.corpus.sampling.balanced_subset``) or ``speaker`` (N
  utterances with the minimum-speaker rule of DESIGN §4.1, ``speaker_subset``).

Any label column of a manifest is a classification task (``get_task("emotion", manifest)``), but a column
that identifies rows or holds numbers (``utt_id``, ``path``, ``duration``, a float column) is refused with a
message: it has no classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

__all__ = [
    "CLASSIFICATION",
    "CLASSIFICATION_METRICS",
    "GENDER_ALIASES",
    "GENDER_CLASSES",
    "NOT_LABEL_COLUMNS",
    "TASKS",
    "VERIFICATION",
    "VERIFICATION_METRICS",
    "VERIFICATION_TASKS",
    "Task",
    "TaskError",
    "get_task",
    "is_verification",
    "normalize_gender",
    "normalize_genders",
    "restrict_classes",
]

CLASSIFICATION = "classification"
VERIFICATION = "verification"
CLASSIFICATION_METRICS: tuple[str, ...] = ("f1", "accuracy", "uar")
VERIFICATION_METRICS: tuple[str, ...] = ("auc", "eer", "min_dcf_01", "min_dcf_05")
GENDER_CLASSES: tuple[str, ...] = ("female", "male")

#: Values mapped to the two gender classes. Common Voice used ``male``/``female``/``other`` until v16 and
#: ``male_masculine``/``female_feminine``/``intersex``/``transgender``/``non-binary``/``do_not_wish_to_say``
#: since; values not listed here are kept (lower-cased) and left out of the binary task.
GENDER_ALIASES: dict[str, str] = {
    "male": "male",
    "male_masculine": "male",
    "m": "male",
    "man": "male",
    "female": "female",
    "female_feminine": "female",
    "f": "female",
    "woman": "female",
}

#: Manifest columns that are never labels: they identify rows, locate audio or structure the plan.
NOT_LABEL_COLUMNS: dict[str, str] = {
    "utt_id": "it identifies utterances",
    "path": "it locates the audio",
    "start": "it is a time stamp",
    "end": "it is a time stamp",
    "duration": "it is a duration",
    "language": "the matrix is built per language (every test set would hold one class)",
    "split": "it is the train/dev/test split",
}

# One explicit set for both versions: Python's str.strip and polars' strip_chars differ on control chars.
_SPACES = " \t\n\r\x0b\x0c"


class TaskError(ValueError):
    """A task that cannot be run on this manifest (unknown column, id or numeric column, no classes)."""


def normalize_gender(value: Any) -> str | None:
    """Map one gender value to ``"female"``/``"male"``; other values lower-cased; empty/None/NaN -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip(_SPACES).lower()
    if not text:
        return None
    return GENDER_ALIASES.get(text, text)


def normalize_genders(values: pl.Series) -> pl.Series:
    """Vectorised :func:`normalize_gender` over a polars Series (same rules), named ``gender``."""
    return strip_labels(values).str.to_lowercase().replace(GENDER_ALIASES).alias("gender")


def strip_labels(values: pl.Series) -> pl.Series:
    """Labels as text: white space stripped; empty strings (and nulls) are missing labels (null). Every
    task's labels start here (and the listener comparisons', ``cltm.human.labels``)."""
    text = values.cast(pl.String).str.strip_chars(_SPACES)
    return (
        pl.select(pl.when(text.str.len_chars() == 0).then(None).otherwise(text))
        .to_series()
        .alias(values.name)
    )


@dataclass(frozen=True)
class Task:
    """What a task predicts and how it is scored (see the module docstring)."""

    name: str
    kind: str
    label: str
    classes: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = CLASSIFICATION_METRICS
    default_metric: str = "f1"
    sampling: str = "balanced"
    gender_vocabulary: bool = False

    @property
    def is_verification(self) -> bool:
        return self.kind == VERIFICATION

    def normalise(self, values: pl.Series) -> pl.Series:
        """Raw label values -> class names (text); missing labels (null, '', white space) -> null."""
        if self.gender_vocabulary:
            return normalize_genders(values).alias(values.name)
        return strip_labels(values)

    def labels(self, manifest: pl.DataFrame) -> pl.Series:
        """The normalised labels of every manifest row (null = missing label)."""
        if self.label not in manifest.columns:
            raise TaskError(self._missing_column_message(manifest))
        return self.normalise(manifest[self.label])

    def class_list(self, manifest: pl.DataFrame) -> list[str]:
        """The task's classes on this manifest: the fixed ones, else the sorted distinct labels."""
        if self.classes is not None:
            return list(self.classes)
        return sorted(self.labels(manifest).drop_nulls().unique().to_list())

    def _missing_column_message(self, manifest: pl.DataFrame) -> str:
        usable = [c for c in manifest.columns if c not in NOT_LABEL_COLUMNS and not c.startswith("_")]
        return (
            f"task {self.name!r} needs the manifest column {self.label!r}, which it does not have; label "
            f"columns are {usable} (any of them can be a task: --task COLUMN)"
        )


_GENDER = Task("gender", CLASSIFICATION, "gender", classes=GENDER_CLASSES, gender_vocabulary=True)
_SPEAKER = Task(
    "speaker",
    VERIFICATION,
    "speaker",
    metrics=VERIFICATION_METRICS,
    default_metric="auc",
    sampling="speaker",
)

#: The built-in tasks; any other name is a classification task on the manifest column of that name.
TASKS: dict[str, Task] = {t.name: t for t in (_GENDER, _SPEAKER)}
VERIFICATION_TASKS: frozenset[str] = frozenset(name for name, t in TASKS.items() if t.is_verification)


def is_verification(task: str | Task) -> bool:
    """True for a verification task (``speaker``)."""
    return (task if isinstance(task, Task) else get_task(task)).is_verification


def get_task(name: str | Task, manifest: pl.DataFrame | None = None, *, label: str | None = None) -> Task:
    """The task called ``name``: a built-in one, else classification on the manifest column ``name``.

    ``label`` classifies another column under this task name. With a ``manifest`` the column is checked: it
    must exist and hold labels (not ids, paths, times or floats) and at least one non-missing value.
    """
    if isinstance(name, Task):
        return name
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"a task name is needed (gender, speaker or a label column), got {name!r}")
    name = name.strip()
    if name in TASKS and label is None:
        task = TASKS[name]
    else:
        column = label or name
        if column in NOT_LABEL_COLUMNS:
            raise TaskError(
                f"{column!r} cannot be a task: {NOT_LABEL_COLUMNS[column]}, so it has no classes; use a "
                "label column such as gender, emotion or speaker"
            )
        task = Task(name, CLASSIFICATION, column, gender_vocabulary=column == "gender")
    if manifest is not None:
        check_task_column(task, manifest)
    return task


def check_task_column(task: Task, manifest: pl.DataFrame) -> None:
    """Refuse a label column that is missing, numeric with fractions or NaN, or has no labels at all."""
    if task.label not in manifest.columns:
        raise TaskError(task._missing_column_message(manifest))
    if task.is_verification:
        return
    dtype = manifest.schema[task.label]
    if dtype.is_float():
        raise TaskError(
            f"the column {task.label!r} holds floating-point numbers (e.g. a duration or a score), not class "
            "labels; a classification task needs a column of class names (text or whole numbers)"
        )
    labels = task.labels(manifest)
    if labels.drop_nulls().len() == 0:
        raise TaskError(f"the column {task.label!r} has no labels: every value is empty or missing")


def restrict_classes(task: Task, classes: tuple[str, ...] | list[str], manifest: pl.DataFrame) -> Task:
    """The task with only these classes (rows with other labels are left out): e.g. the emotions every
    language of a multilingual corpus has. Refuses a class the manifest never uses."""
    if task.is_verification:
        raise TaskError(f"task {task.name!r} is verification: it has no classes to choose")
    wanted = tuple(dict.fromkeys(str(c).strip() for c in classes if str(c).strip()))
    if len(wanted) < 2:
        raise TaskError(f"a classification task needs at least 2 classes, got {list(wanted)}")
    have = set(task.labels(manifest).drop_nulls().unique().to_list())
    unknown = [c for c in wanted if c not in have]
    if unknown:
        raise TaskError(
            f"class(es) {unknown} never occur in the column {task.label!r}; it has {sorted(have)}"
        )
    return replace(task, classes=wanted)
